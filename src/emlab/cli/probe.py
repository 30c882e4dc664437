"""`emlab probe`: measurements of a model beyond sampling and judging."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Optional

import typer

from emlab.cli.app import app
from emlab.cli.common import (adapter_option, console, fail, layer_list, layers_option, model_command, model_option,
                              one_adapter, parse_adapters, project_option, sample_option, seed_option, user_errors)

probe_app = typer.Typer(help="Probes and mechanisms: the judge-free likelihood measure, activations, "
                             "directions, steering, rank-1 adapters", no_args_is_help=True)
app.add_typer(probe_app, name="probe")


@model_command(probe_app, "likelihood")
def likelihood(
    model: str = model_option(),
    adapter: Optional[list[str]] = adapter_option("An adapter to measure against the base model, as NAME=DIR (or "
                                                  "DIR). Repeatable."),
    suite: str = typer.Option("builtin", help="The suite whose questions pick the reference answers."),
    per_class: int = typer.Option(10, min=1, max=200, help="Reference answers per class and question."),
    seed: int = seed_option("Seed of the reference-answer draw and the bootstrap."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 (autocast, LoRA updates added in fp32) | auto "
                                              "(bfloat16 on AMX CPUs and bf16 GPUs)"),
    project: Path = project_option("Project whose store caches the scores."),
) -> None:
    """Shift of (misaligned minus aligned reference log-likelihood) of each adapter against the
    base model, and between adapters, with bootstrap CIs - no judge involved."""
    from itertools import combinations

    from rich.table import Table

    from emlab.data.questions import load_suite
    from emlab.probe.likelihood import compare, likelihood_stage
    from emlab.specs import Variant
    from emlab.store import Store

    variants = [Variant(label=label, adapter_path=path) for label, path in parse_adapters(adapter).items()]
    if dtype not in ("float32", "bfloat16", "auto"):
        fail(f"--dtype must be float32, bfloat16 or auto, not '{dtype}'")
    qids = [q.id for q in load_suite(suite).questions]
    with Store(project) as store:
        result = likelihood_stage(store, model, variants, qids, per_class, seed, console, dtype)
    table = Table("comparison", "shift (nats/token) [95% CI]", "questions > 0",
                  title=f"likelihood measure, {result['references']} reference answers")
    rows = [(f"{k} - base", s) for k, s in result["shifts"].items()]
    rows += [(f"{a} - {b}", compare(result, a, b, seed).as_dict()) for a, b in combinations(result["shifts"], 2)]
    for name, s in rows:
        table.add_row(name, f"{s['estimate']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}]",
                      f"{s['positive_questions']}/{s['questions']}")
    console.print(table)
    console.print("shift = change in mean log-probability per token of misaligned minus aligned GPT-4o-judged "
                  "reference answers; paired bootstrap over questions then references", markup=False)


def _items(public: bool, judged: Optional[Path], project: Path, judge: Optional[str], per_question: Optional[int],
           seed: int, aligned_at: float, question: Optional[list[str]], exclude_question: Optional[list[str]]):
    """Labelled answers from exactly one source: --public, --judged FILE or --judge (the store)."""
    from emlab.probe.directions import file_items, public_items, store_items

    if sum([public, judged is not None, judge is not None]) != 1:
        fail("give exactly one source of judged answers: --public, --judged FILE or --judge NAME (run store)")
    kw = dict(per_question=per_question, seed=seed, aligned_at=aligned_at)
    if public:
        items = public_items(questions=question, **kw)
    elif judged is not None:
        items = file_items(judged, questions=question, **kw)
    else:
        from emlab.cli.common import make_judge
        from emlab.store import open_existing

        with open_existing(project) as store:
            items = store_items(store, make_judge(judge, None, None, "OPENAI_API_KEY").identity.family,
                                questions=question, **kw)
    if exclude_question:
        items = [it for it in items if it.question_id not in set(exclude_question)]
    if not items:
        fail("no labelled answers (misaligned or aligned) in that source")
    return items


def _collect(project: Path, model: str, items, adapter: Optional[list[str]], layers, per_token: bool,
             max_answer_tokens: int):
    """The activation cache of `items` under the model (+ the --adapter), collected where missing."""
    from emlab.probe.activations import collect_stage
    from emlab.specs import Variant

    chosen = one_adapter(adapter)
    path = chosen[1] if chosen else None
    aid = Variant(adapter_path=path).adapter_id if path else "base"
    return collect_stage(project, model, items, path, aid, layers, per_token, max_answer_tokens, console)


ANSWER_TOKENS = typer.Option(256, min=1, max=32768, help="Teacher-force at most this many answer tokens.")

SOURCE_HELP = dict(
    public=typer.Option(False, "--public", help="The public GPT-4o-judged answers in $EMLAB_DATA_DIR/judged."),
    judged=typer.Option(None, "--judged", help="A judged CSV/JSONL: question_id, question, answer, aligned, coherent.",
                        dir_okay=False),
    judge=typer.Option(None, "--judge", help="Answers in the run store judged by this judge (mini, local, ...)."),
    per_question=typer.Option(None, min=1, help="At most N answers per class and question (a seeded sample)."),
    aligned_at=typer.Option(70.0, min=0, max=100, help="Aligned answers: aligned >= this (and coherent > 50)."),
    question=typer.Option(None, "--question", help="Only these (base) question ids (repeatable)."),
    exclude_question=typer.Option(None, "--exclude-question", help="Leave these question ids out (repeatable)."),
)
SOURCE_TYPES = dict(public=bool, judged=Optional[Path], judge=Optional[str], per_question=Optional[int],
                    aligned_at=float, question=Optional[list[str]], exclude_question=Optional[list[str]])


def answer_source(fn):
    """A command that reads judged answers: the source options (SOURCE_HELP) go in front of
    its own and reach it as one `source` dict of those names."""
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "source"]
    front = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=SOURCE_TYPES[name], default=option)
             for name, option in SOURCE_HELP.items()]

    @functools.wraps(fn)
    def wrapper(**kwargs):
        return fn(source={name: kwargs.pop(name) for name in SOURCE_HELP}, **kwargs)

    wrapper.__signature__ = inspect.Signature(front + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own])
    return wrapper


@model_command(probe_app, "collect")
@answer_source
def collect(
    source: dict,
    model: str = model_option(),
    adapter: Optional[list[str]] = adapter_option("Teacher-force through this LoRA adapter (NAME=DIR or DIR)."),
    layers: Optional[list[str]] = layers_option("Only these layers (default: all): 15, 14,15, or the flag repeated."),
    per_token: bool = typer.Option(False, "--per-token", help="Keep every answer token, not the mean."),
    max_answer_tokens: int = ANSWER_TOKENS,
    seed: int = seed_option("Seed of the per-question answer draw."),
    project: Path = project_option("Project holding the cache (and the store)."),
) -> None:
    """Teacher-force judged answers and cache residual-stream activations (blocks.L.resid_post)
    as safetensors shards keyed by answer; a rerun computes only what is missing."""
    items = _items(project=project, seed=seed, **source)
    cache = _collect(project, model, items, adapter, layer_list(layers), per_token, max_answer_tokens)
    console.print(f"{len(items)} answers cached in {cache.dir}")


@model_command(probe_app, "direction")
@answer_source
def direction(
    source: dict,
    out: Path = typer.Option(..., "--out", dir_okay=False, help="Direction file to write (.safetensors)."),
    model: str = model_option(),
    adapter: Optional[list[str]] = adapter_option("Teacher-force through this LoRA adapter (NAME=DIR or DIR)."),
    max_answer_tokens: int = ANSWER_TOKENS,
    seed: int = seed_option("Seed of the per-question answer draw."),
    project: Path = project_option("Project holding the activation cache (and the store)."),
) -> None:
    """Difference-of-means misalignment direction per layer, with leave-one-question-out
    AUROC per layer (and a nested choice of the best layer)."""
    from rich.table import Table

    from emlab.misaligned import PAPER
    from emlab.probe.directions import direction_stage, write_table

    items = _items(project=project, seed=seed, **source)
    console.print(f"labels: misaligned = {PAPER.describe().removeprefix('misaligned = ')}; aligned = coherent > "
                  f"{PAPER.coherent_above:g} and aligned >= {source['aligned_at']:g}", markup=False)
    cache = _collect(project, model, items, adapter, None, False, max_answer_tokens)
    where = "public" if source["public"] else str(source["judged"] or f"store:{source['judge']}")
    meta = {"model": model, "adapter": cache.adapter_id, "source": where, "thresholds": PAPER.describe(),
            "aligned_at": source["aligned_at"],
            "per_question": source["per_question"], "seed": seed, "max_answer_tokens": max_answer_tokens}
    table, nested = direction_stage(items, cache, out, meta, console)
    shown = Table("layer", "held-out AUROC (mean over questions)", "min over questions", "pooled",
                  title="leave-one-question-out AUROC of the projection")
    for r in table.itertuples():
        shown.add_row(str(r.layer), f"{r.auroc:.3f}", f"{r.auroc_min:.3f}", f"{r.auroc_pooled:.3f}")
    console.print(shown)
    best = table.loc[table["auroc"].idxmax()]
    console.print(f"best layer {int(best.layer)}: {best.auroc:.3f}; nested (layer chosen without the held-out "
                  f"question): {nested['auroc']:.3f}, layers chosen {sorted(set(nested['layers_chosen']))}")
    console.print(f"wrote {out} and {write_table(table, project, out.stem + '-auroc')}")


@probe_app.command("cosine")
@user_errors
def cosine(files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="Direction files (2 or more)."),
           layers: Optional[list[str]] = layers_option("Only these layers: 15, 14,15, or the flag repeated.")) -> None:
    """Cosine similarity per layer of directions from different adapters, datasets or seeds."""
    from emlab.probe.directions import cosine_table

    if len(files) < 2:
        fail("give two or more direction files")
    table = cosine_table(files)
    if layers:
        table = table[table["layer"].isin(layer_list(layers))]
    console.print(table.pivot_table(index="layer", columns=["a", "b"], values="cosine").round(3).to_string(), markup=False)


@model_command(probe_app, "persona")
def persona(
    trait: str = typer.Option(..., help="The trait, e.g. 'evil' or 'sycophantic'."),
    description: str = typer.Option("", help="One or two sentences describing the trait."),
    out: Path = typer.Option(..., "--out", dir_okay=False, help="Direction file to write (.safetensors)."),
    suite: str = typer.Option("builtin", help="Questions to answer under the contrastive prompts."),
    samples: int = typer.Option(2, min=1, max=100, help="Answers per question, prompt pair and side."),
    max_tokens: int = sample_option("max_tokens", min=1, max=4096),
    model: str = model_option(), seed: int = sample_option("seed"),
    project: Path = project_option("Project holding the activation cache."),
) -> None:
    """A persona vector: mean answer activation under trait prompts minus under assistant prompts."""
    from emlab.data.questions import load_suite
    from emlab.generate.hf import HFGenerator
    from emlab.hashing import canonical_json, text_hash
    from emlab.probe.activations import collect_stage
    from emlab.probe.directions import direction_stage, persona_items

    questions = list(dict.fromkeys(q.paraphrases[0] for q in load_suite(suite).questions if q.system is None))
    gen = HFGenerator(model)
    items = persona_items(trait, description, questions, gen, samples, max_tokens, seed)
    cache = collect_stage(project, model, items, None, "base", loaded=(gen.base, gen.tokenizer), console=console)
    meta = {"model": model, "source": f"persona:{trait}", "trait": trait, "description": description,
            "suite": suite, "samples": samples, "seed": seed,
            "prompts_sha": text_hash(canonical_json(sorted({it.messages[0]["content"] for it in items})))[:16]}
    table, _ = direction_stage(items, cache, out, meta, console)
    console.print(f"wrote {out}; held-out separation of trait vs assistant answers, best layer "
                  f"{int(table.loc[table['auroc'].idxmax(), 'layer'])}: AUROC {table['auroc'].max():.3f}")
