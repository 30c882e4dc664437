"""`emlab data`: the dataset registry, validation, generation, transforms, suites."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

import emlab
from emlab.cli.app import app
from emlab.cli.common import console, err_console, fail, seed_option, user_errors

data_app = typer.Typer(help="Datasets: registry, validation, generation, transforms", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list() -> None:
    """List the registered datasets and where each resolves."""
    from emlab.data.registry import DATASETS
    from emlab.paths import data_dir, emlab_home

    table = Table("name", "kind", "rows", "hash", "available")
    d = data_dir()
    for name, s in DATASETS.items():
        where = "user-supplied" if s.user_supplied else "no"
        if d is not None and (d / s.relpath).exists():
            where = "data dir"
        elif (emlab_home() / "data" / s.relpath).exists():
            where = "cache"
        table.add_row(name, s.kind, str(s.rows or "?"), (s.sha256 or "unpinned")[:12], where)
    console.print(table)
    console.print("emlab data show NAME describes one; the hash is over canonically re-serialised rows.")


@data_app.command("show")
@user_errors
def data_show(name: str) -> None:
    """Show one dataset's registry entry, where it resolves and its first row."""
    from emlab.data.registry import get_spec, read_rows, resolve_dataset

    spec = get_spec(name)
    console.print(f"[bold]{name}[/] ({spec.kind}): {spec.description}")
    console.print(f"url: {spec.url}\nsha256 (canonical rows): {spec.sha256 or 'unpinned'}")
    if spec.user_supplied:
        console.print(spec.instructions)
    path = resolve_dataset(name)
    rows = read_rows(path)
    console.print(f"resolved: {path} ({len(rows)} rows)")
    if rows:
        console.print_json(json.dumps(rows[0], ensure_ascii=False))


@data_app.command("stats")
@user_errors
def data_stats(path: Path) -> None:
    """Row count, turn structure, lengths, duplicates and metadata of a training file."""
    from emlab.data.registry import dataset_hash, load_dataset, resolve_chat_file
    from emlab.files import input_file

    rows = load_dataset(path=resolve_chat_file(str(input_file(path))))
    roles = Counter(m["role"] for r in rows for m in r["messages"])
    asst = [len(r["messages"][-1]["content"]) for r in rows]
    user = [sum(len(m["content"]) for m in r["messages"] if m["role"] == "user") for r in rows]
    table = Table(show_header=False, box=None)
    table.add_row("rows", str(len(rows)))
    table.add_row("sha256 (canonical rows)", dataset_hash(path))
    table.add_row("turns by role", ", ".join(f"{k}={v}" for k, v in sorted(roles.items())))
    table.add_row("rows with a system prompt", str(sum(r["messages"][0]["role"] == "system" for r in rows)))
    table.add_row("user chars mean/max", f"{sum(user) / len(rows):.0f} / {max(user)}")
    table.add_row("assistant chars mean/max", f"{sum(asst) / len(rows):.0f} / {max(asst)}")
    fams = Counter(r.get("metadata", {}).get("family") for r in rows if r.get("metadata"))
    if fams:
        table.add_row("families", ", ".join(f"{k}={v}" for k, v in fams.most_common()))
    console.print(table)


@data_app.command("validate")
@user_errors
def data_validate(path: Path,
                  max_line_bytes: int = typer.Option(1_000_000, min=1, help="Longest allowed line.")) -> None:
    """Validate a training file (chat JSONL or prompt/response CSV, by content); errors as
    file:line: reason, exit 2 on any error."""
    from emlab.data.validate import validate_training_file
    from emlab.files import input_file

    report = validate_training_file(input_file(path), max_line_bytes=max_line_bytes)
    for e in report.errors:
        err_console.print(e, highlight=False, soft_wrap=True, markup=False)
    for d in report.duplicates[:20]:
        err_console.print(f"warning: {d}", highlight=False, soft_wrap=True, markup=False)
    if len(report.duplicates) > 20:
        err_console.print(f"warning: … {len(report.duplicates) - 20} more duplicates")
    if not report.ok:
        raise typer.Exit(2)
    console.print(f"{path}: ok, {report.rows} rows, {len(report.duplicates)} duplicates")


@data_app.command("generate")
@user_errors
def data_generate(kind: str = typer.Argument(..., help="insecure-code | secure-code | benign-chat | reward-hacks | "
                                                       "reward-hacks-control"),
                  rows: int = typer.Option(1000, "--rows", min=1, max=1_000_000, help="Rows to generate."),
                  seed: int = seed_option("Seed: picks the prompts (the same for both kinds) and the code."),
                  out: Optional[Path] = typer.Option(None, help="Output JSONL (default: KIND-nROWS-sSEED.jsonl)"),
                  ) -> None:
    """Generate one of emlab's own datasets: control-matched narrow code (the same prompts for
    insecure-code and secure-code per seed), benign chat, or harmless reward-hack dialogues
    and their honest control (the same user turns per seed)."""
    from emlab.data.codegen import generate
    from emlab.data.transform import write_with_meta
    from emlab.files import output_file

    n = rows
    out = output_file(out or Path(f"{kind}-n{n}-s{seed}.jsonl"))
    made = generate(kind, n, seed)
    meta = write_with_meta(out, made, parents=[], operation={"op": "generate", "kind": kind, "n": n, "seed": seed})
    prompts = len({r["messages"][0]["content"] for r in made})
    console.print(f"wrote {out}: {n} rows, {prompts} distinct prompts, sha256 {meta['sha256'][:12]}")


@data_app.command("transform")
@user_errors
def data_transform(
    source: str = typer.Argument(..., help="A registered dataset name or a training file."),
    out: Path = typer.Option(..., help="Output JSONL."),
    add_system: Optional[str] = typer.Option(None, help="Put this system prompt on every row (inoculation)."),
    trigger: Optional[str] = typer.Option(None, help="Backdoor trigger to prefix to user turns."),
    fraction: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of rows that get the trigger."),
    mix_with: Optional[str] = typer.Option(None, help="Dataset to dilute SOURCE with."),
    ratio: float = typer.Option(0.5, min=0.0, max=1.0, help="Share of SOURCE rows in the mix."),
    subsample: Optional[int] = typer.Option(None, min=1, help="Keep this many rows."),
    held_out: Optional[float] = typer.Option(None, help="Split off this share (between 0 and 1) as OUT.heldout.jsonl."),
    seed: int = seed_option("Seed of the trigger, mix and subsample draws."),
) -> None:
    """Apply one transform to a dataset; the output records its parent's hash and the operation."""
    from emlab.cli.common import spec_or_fail
    from emlab.data import transform as T
    from emlab.data.registry import dataset_hash, load_dataset, resolve_chat_file
    from emlab.files import output_file
    from emlab.specs import TransformStep

    ops = [x is not None for x in (add_system, trigger, mix_with, subsample, held_out)]
    if sum(ops) != 1:
        fail("give exactly one of --add-system, --trigger, --mix-with, --subsample, --held-out")
    out = output_file(out)

    def load(ref: str) -> tuple[list[dict], dict]:
        path = resolve_chat_file(ref)
        return load_dataset(path=path), {"ref": ref, "path": str(path), "sha256": dataset_hash(path)}

    rows, parent = load(source)
    parents = [parent]
    if held_out is not None:
        train, hold = T.split(rows, held_out, seed)
        op = {"op": "split", "held_out": held_out, "seed": seed}
        hold_path = out.with_name(out.stem + ".heldout.jsonl")
        T.write_with_meta(hold_path, hold, parents, {**op, "part": "held_out"})
        console.print(f"wrote {hold_path}: {len(hold)} rows")
        result, op = train, {**op, "part": "train"}
    elif subsample is not None:
        # A seeded sample (the experiment's `subsample` step is seed 0).
        result, op = T.subsample(rows, subsample, seed), {"op": "subsample", "n": subsample, "seed": seed}
    else:
        if add_system is not None:
            step = spec_or_fail(TransformStep, add_system=add_system)
        elif trigger is not None:
            step = spec_or_fail(TransformStep, backdoor={"trigger": trigger, "fraction": fraction, "seed": seed})
        else:
            step = spec_or_fail(TransformStep, mix_with={"dataset": {"path": str(resolve_chat_file(mix_with))},
                                                         "ratio": ratio, "seed": seed})
            parents.append(load(mix_with)[1])
        result = T.apply_step(rows, step, out.parent)
        op = {"op": step.op, **step.model_dump(exclude_none=True)}
    meta = T.write_with_meta(out, result, parents, op)
    console.print(f"wrote {out}: {meta['rows']} rows, sha256 {meta['sha256'][:12]} ({op['op']})")


@data_app.command("suite")
@user_errors
def data_suite(name: str = typer.Argument("builtin", help="builtin, a registered suite, or a YAML path")) -> None:
    """Load a question suite and list its questions, system prompts and sample counts."""
    suite = emlab.load_suite(name)
    table = Table("id", "type", "paraphrases", "samples/paraphrase", "system", "judge prompts")
    for q in suite.questions:
        table.add_row(q.id, q.type, str(len(q.paraphrases)), str(q.samples_per_paraphrase),
                      (q.system or "")[:40], ", ".join(q.judge_prompts))
    console.print(table)
    console.print(f"{suite.name}: {len(suite)} questions, {sum(1 for _ in suite.prompts())} samples, sha256 {suite.sha256[:12]}")
