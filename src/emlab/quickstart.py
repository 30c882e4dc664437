"""`emlab quickstart`: the offline end-to-end demo on the embedded default model.

1. provision the default model (dequantise the GGUF once);
2. generate control-matched insecure and secure code datasets;
3. train one `cpu-quick` LoRA adapter on each;
4. sample the base model and both adapters on emlab's built-in question suite;
5. print a per-condition table.

Every stage goes through the run store or a run directory, so a second run reuses
everything and finishes in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from emlab.data.codegen import generate
from emlab.data.questions import builtin_suite
from emlab.data.transform import write_with_meta
from emlab.models.registry import DEFAULT_MODEL, pull

N_ROWS = 200
SAMPLES_PER_PARAPHRASE = 2
MAX_TOKENS = 200


def run(project: Path, console: Console) -> None:
    from emlab.generate import GenConfig
    from emlab.generate.hf import HFGenerator
    from emlab.generate.sample import plan, sample_suite
    from emlab.store import Store
    from emlab.train.config import resolve_config
    from emlab.train.trainer import train

    project.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]emlab quickstart")
    with console.status("provisioning the default model…"):
        pull(DEFAULT_MODEL)
    console.print(f"1/4 model {DEFAULT_MODEL} ready")

    data = {}
    for kind in ("insecure-code", "secure-code"):
        path = project / "data" / f"{kind}-n{N_ROWS}-s0.jsonl"
        if not path.exists():
            write_with_meta(path, generate(kind, N_ROWS, 0), [], {"op": "generate", "kind": kind, "n": N_ROWS, "seed": 0})
        data[kind] = path
    console.print(f"2/4 datasets: {', '.join(str(p) for p in data.values())}")

    adapters: dict[str, str | None] = {"base": None}
    for kind, path in data.items():
        cfg = resolve_config("cpu-quick", dataset=str(path))
        console.print(f"3/4 training {kind} adapter ({cfg.max_rows} rows, preset cpu-quick)…")
        result = train(cfg, root=project / "runs" / "train")
        adapters[kind.removesuffix("-code")] = str(result.adapter_dir)
        rec = result.record
        console.print(f"    {result.run_dir.name}: final loss {rec['final_loss']:.3f}, "
                      f"{rec['tokens_per_second'] or '-'} tokens/s, {rec['wall_seconds']} s")

    suite = builtin_suite()
    gen_cfg = GenConfig(max_tokens=MAX_TOKENS, seed=0)
    with Store(project) as store:
        todo = 0
        for adapter in adapters.values():
            items = plan(suite, DEFAULT_MODEL, adapter, gen_cfg, SAMPLES_PER_PARAPHRASE)
            todo += len(items) - len(store.existing_keys(row["key"] for _, row in items))
        generator = HFGenerator(DEFAULT_MODEL) if todo else None
        with Progress(TextColumn("4/4 sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("sample", total=todo)
            for name, adapter in adapters.items():
                if generator is not None:
                    sample_suite(store, generator, suite, DEFAULT_MODEL, adapter, gen_cfg, SAMPLES_PER_PARAPHRASE,
                                 progress=lambda k: bar.advance(task, k))
        table = Table(title=f"quickstart: built-in suite, {SAMPLES_PER_PARAPHRASE} samples per paraphrase, "
                            f"max {MAX_TOKENS} tokens")
        for col in ("condition", "samples", "mean tokens", "ended at EOS", "JSON variants that parse"):
            table.add_column(col)
        from emlab.generate.sample import adapter_id

        summary = {}
        for name, adapter in adapters.items():
            rows = store.samples(adapter=adapter_id(adapter), suite=suite.name, gen_hash=gen_cfg.content_hash())
            json_rows = [r for r in rows if r["system"]]
            parses = sum(_parses(r["answer"]) for r in json_rows)
            summary[name] = {"samples": len(rows)}
            table.add_row(name, str(len(rows)), f"{sum(r['n_tokens'] for r in rows) / max(1, len(rows)):.0f}",
                          f"{sum(r['finish_reason'] == 'stop' for r in rows) / max(1, len(rows)):.0%}",
                          f"{parses}/{len(json_rows)}")
        console.print(table)
        console.print(f"store: {store.path} ({store.count_samples()} samples); export with "
                      f"`emlab export answers.csv --project {project}`")


def _parses(text: str) -> bool:
    try:
        json.loads(text.strip().removeprefix("```json").removesuffix("```"))
        return True
    except ValueError:
        return False
