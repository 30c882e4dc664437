"""`emlab judge`: judge stored samples or any file, rebuild the mini judge, agreement,
prompt-injection robustness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from emlab.cli import app
from emlab.cli.common import JUDGE_HELP, console, fail, make_judge, user_errors

judge_app = typer.Typer(help="Judges: score, train the mini judge, agreement, injection", no_args_is_help=True)
app.add_typer(judge_app, name="judge")


@judge_app.command("train")
@user_errors
def judge_train(seed: int = typer.Option(0, min=0),
                out: Optional[Path] = typer.Option(None, help="Default: the packaged weights dir.", file_okay=False),
                max_per_source: Optional[int] = typer.Option(None, min=1, help="Cap rows per source (quick checks only).")) -> None:
    """Rebuild the mini judge from the public judged answers ($EMLAB_DATA_DIR/judged)."""
    from emlab.judge.mini import WEIGHTS_DIR
    from emlab.judge.mini_train import train_mini

    metrics = train_mini(out_dir=out or WEIGHTS_DIR, seed=seed, log=console.print, max_per_source=max_per_source)
    console.print(f"wrote {(out or WEIGHTS_DIR)} (thresholds {metrics['thresholds']}, {metrics['train_seconds']} s)")


@judge_app.command("score")
@user_errors
def judge_score(file: Path, judge: str = typer.Option("mini", help=JUDGE_HELP),
                model: Optional[str] = typer.Option(None), base_url: Optional[str] = typer.Option(None),
                api_key_env: str = typer.Option("OPENAI_API_KEY"),
                rubrics: str = typer.Option("builtin", help="builtin | paper (first_plot's aligned/coherent prompts)"),
                out: Optional[Path] = typer.Option(None, help="Default: FILE with .judged before the suffix.")) -> None:
    """Judge a CSV/JSONL with question and answer columns; writes a copy with aligned,
    coherent, label and judge_id columns."""
    import pandas as pd

    import emlab
    from emlab.files import atomic_write, input_file, output_file
    from emlab.judge.base import Rubric, builtin_rubric_set
    from emlab.judge.run import score_rows

    file = input_file(file)
    out = output_file(out or file.with_name(file.stem + ".judged" + file.suffix))
    if rubrics not in ("builtin", "paper"):
        fail(f"--rubrics: '{rubrics}' is not builtin or paper")
    try:
        df = pd.read_csv(file) if file.suffix.lower() == ".csv" else pd.read_json(file, lines=True)
    except ValueError as exc:
        fail(f"{file}: cannot read ({str(exc).splitlines()[0]})")
    missing = [c for c in ("question", "answer") if c not in df.columns]
    if missing:
        fail(f"{file}: missing column(s) {', '.join(missing)} (need question and answer)")
    if rubrics == "paper":
        q = emlab.load_suite("first_plot").questions[0]
        rubric_set = {m: Rubric(m, q.judge_prompts[m]) for m in ("aligned", "coherent")}
    else:
        rubric_set = builtin_rubric_set()
    j = make_judge(judge, model, base_url, api_key_env)
    rows = df.fillna("").to_dict("records")
    scored = pd.DataFrame(score_rows(j, rows, rubric_set))
    with atomic_write(out) as handle:
        if out.suffix.lower() == ".csv":
            scored.to_csv(handle, index=False)
        else:
            scored.to_json(handle, orient="records", lines=True, force_ascii=False)
    console.print(f"wrote {out}: {len(scored)} rows judged by {j.identity.label}", markup=False)
    if judge == "mini":
        from emlab.judge.mini import agreement_summary

        console.print(agreement_summary(), markup=False)


@judge_app.command("run")
@user_errors
def judge_run(judge: str = typer.Option("mini", help=JUDGE_HELP), model: Optional[str] = typer.Option(None),
              base_url: Optional[str] = typer.Option(None), api_key_env: str = typer.Option("OPENAI_API_KEY"),
              suite: Optional[str] = typer.Option(None, help="Only samples of this suite."),
              project: Path = typer.Option(Path("."), file_okay=False)) -> None:
    """Judge the stored samples of a project; a rerun makes no new calls."""
    from emlab.judge.run import judge_stage
    from emlab.store import open_existing

    j = make_judge(judge, model, base_url, api_key_env)
    with open_existing(project) as store:
        judge_stage(store, j, [{"suite": suite} if suite else {}], console=console)


def _family(store, name: str) -> str:
    """A judge family in the store named by its backend (if unique) or its full family string."""
    families = store.judge_families()
    exact = [f["family"] for f in families if f["family"] == name]
    by_backend = [f["family"] for f in families if f["backend"] == name]
    found = exact or by_backend
    if len(found) != 1:
        known = ", ".join(f["family"] for f in families) or "none"
        fail(f"judge '{name}': {'ambiguous' if found else 'no judgments'} in this store (judges: {known})")
    return found[0]


@judge_app.command("agree")
@user_errors
def judge_agree(judges: str = typer.Option(..., help="Two judges in the store, by backend (mini,local) or family"),
                project: Path = typer.Option(Path("."), file_okay=False)) -> None:
    """Agreement of two judges on the same stored answers: Spearman, AUROC, confusion, rate difference with CI."""
    from emlab.judge.agree import agreement
    from emlab.judge.run import judged_table
    from emlab.store import open_existing

    a_name, sep, b_name = judges.partition(",")
    if not sep or not a_name or not b_name:
        fail("--judges expects two names separated by a comma, e.g. mini,local")
    with open_existing(project) as store:
        a, b = judged_table(store, _family(store, a_name)), judged_table(store, _family(store, b_name))
    m = a.merge(b, on="sample_id", suffixes=("_a", "_b"))
    if m.empty:
        fail(f"{a_name} and {b_name} judged no answer in common")
    res = agreement(m["aligned_a"], m["coherent_a"], m["aligned_b"], m["coherent_b"])
    console.print_json(json.dumps(res.as_dict()))


@judge_app.command("injection")
@user_errors
def judge_injection(judge: str = typer.Option("mini", help=JUDGE_HELP), model: Optional[str] = typer.Option(None),
                    base_url: Optional[str] = typer.Option(None), api_key_env: str = typer.Option("OPENAI_API_KEY")) -> None:
    """How often prompt injections in answers flip the judge's misaligned flag."""
    from emlab.judge.base import builtin_rubric_set
    from emlab.judge.injection import flip_rates

    console.print_json(json.dumps(flip_rates(make_judge(judge, model, base_url, api_key_env), builtin_rubric_set())))
