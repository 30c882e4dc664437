"""`emlab judge`: judge stored samples or any file, rebuild the mini judge, agreement,
prompt-injection robustness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from emlab.cli.app import app
from emlab.cli.common import (API_KEY_ENV, DELIMIT_HELP, JUDGE_BASE_URL, JUDGE_HELP, JUDGE_MODEL, console, fail,
                              family_of, make_judge, model_command, project_option, user_errors)

judge_app = typer.Typer(help="Judges: score, train the mini judge, agreement, injection", no_args_is_help=True)
app.add_typer(judge_app, name="judge")


@model_command(judge_app, "train")
def judge_train(seed: int = typer.Option(0, min=0, help="Training seed."),
                version: str = typer.Option("mini-3", help="mini-3 (cross-encoder features) | mini-2 (frozen embeddings)"),
                out: Optional[Path] = typer.Option(None, help="Default: the packaged weights dir.", file_okay=False),
                max_per_source: Optional[int] = typer.Option(None, min=1, help="mini-2 only: cap rows per source "
                                                                               "(quick checks only).")) -> None:
    """Rebuild the mini judge from the public judged answers ($EMLAB_DATA_DIR/judged) and the
    gold set; resumable (finished pieces are cached), with the model card regenerated."""
    from emlab.judge.mini import weights_dir_of

    if version == "mini-3":
        from emlab.judge.mini3_train import train_mini3

        metrics = train_mini3(out_dir=out or weights_dir_of("mini-3"), seed=seed, log=console.print, console=console)
    elif version == "mini-2":
        from emlab.judge.mini_train import train_mini

        metrics = train_mini(out_dir=out or weights_dir_of("mini-2"), seed=seed, log=console.print,
                             max_per_source=max_per_source)
    else:
        fail(f"--version: '{version}' is not mini-3 or mini-2")
    console.print(f"wrote {out or weights_dir_of(version)} (thresholds {metrics['thresholds']}, "
                  f"{metrics['train_seconds']} s)")


RUBRICS_HELP = "aligned-coherent (the paper's pair) | persona-1to5 (the persona-features grader: 1-5 with labels)"
COL_HELP = "NAME=COLUMN: read emlab's column NAME (question_id, question, answer, aligned, coherent) from COLUMN"


def parse_cols(cols: Optional[list[str]]) -> dict[str, str]:
    out = {}
    for item in cols or []:
        name, sep, column = item.partition("=")
        if not sep or not name or not column:
            fail(f"--col expects NAME=COLUMN, got '{item}'")
        out[name] = column
    return out


@model_command(judge_app, "score")
def judge_score(file: Path = typer.Argument(..., help="A CSV/JSONL (optionally .gz/.zst) with questions and answers."),
                judge: str = typer.Option("mini", help=JUDGE_HELP),
                model: Optional[str] = JUDGE_MODEL, base_url: Optional[str] = JUDGE_BASE_URL,
                api_key_env: str = API_KEY_ENV,
                rubrics: str = typer.Option("builtin", help="builtin | paper (first_plot's aligned/coherent prompts) | "
                                                            "persona-1to5 (the persona-features grader)"),
                delimit: str = typer.Option("auto", help=DELIMIT_HELP),
                col: Optional[list[str]] = typer.Option(None, "--col", help=COL_HELP),
                out: Optional[Path] = typer.Option(None, help="Default: FILE with .judged before the suffix.")) -> None:
    """Judge a file of answers in any peer's layout (answer|response|completion, ...); writes
    a copy with aligned, coherent, label and judge_id columns (persona-1to5: persona, its
    label, and the paper's columns it maps to). Scores the file already held are kept
    beside, as aligned_source and coherent_source."""
    import pandas as pd

    import emlab
    from emlab.data.judged import read_judged
    from emlab.files import atomic_write, output_file
    from emlab.judge.base import Rubric, builtin_rubric_set, persona_rubric
    from emlab.judge.run import score_rows

    plain = file.suffix.lower() in (".csv", ".jsonl")
    out = output_file(out or file.with_name(file.stem + ".judged" + file.suffix if plain
                                            else file.name.split(".")[0] + ".judged.csv"))
    if rubrics not in ("builtin", "paper", "persona-1to5"):
        fail(f"--rubrics: '{rubrics}' is not builtin, paper or persona-1to5")
    df = read_judged(file, parse_cols(col), scores=False)
    missing = [c for c in ("question", "answer") if c not in df.columns]
    if missing:
        fail(f"{file}: missing column(s) {', '.join(missing)} (need a question and an answer column: answer, "
             "response or completion; or name them with --col)")
    df = df.rename(columns={c: f"{c}_source" for c in ("aligned", "coherent", "label", "judge_id") if c in df.columns})
    family = "persona-1to5" if rubrics == "persona-1to5" else "aligned-coherent"
    if rubrics == "paper":
        q = emlab.load_suite("first_plot").questions[0]
        rubric_set = {m: Rubric(m, q.judge_prompts[m]) for m in ("aligned", "coherent")}
    elif rubrics == "persona-1to5":
        rubric_set = {"persona": persona_rubric()}
    else:
        rubric_set = builtin_rubric_set()
    j = make_judge(judge, model, base_url, api_key_env, delimit, family)
    rows = df.astype(object).where(df.notna(), None).to_dict("records")
    scored = pd.DataFrame(score_rows(j, rows, rubric_set))
    with atomic_write(out) as handle:
        if out.suffix.lower() == ".csv":
            scored.to_csv(handle, index=False)
        else:
            scored.to_json(handle, orient="records", lines=True, force_ascii=False)
    console.print(f"wrote {out}: {len(scored)} rows judged by {j.identity.label}", markup=False)
    if judge == "mini":
        from emlab.judge.mini import agreement_summary

        console.print(agreement_summary(model), markup=False)


@model_command(judge_app, "run")
def judge_run(judge: str = typer.Option("mini", help=JUDGE_HELP), model: Optional[str] = JUDGE_MODEL,
              base_url: Optional[str] = JUDGE_BASE_URL, api_key_env: str = API_KEY_ENV,
              suite: Optional[str] = typer.Option(None, help="Only samples of this suite."),
              delimit: str = typer.Option("auto", help=DELIMIT_HELP),
              rubrics: str = typer.Option("aligned-coherent", help=RUBRICS_HELP),
              project: Path = project_option()) -> None:
    """Judge the stored samples of a project; a rerun makes no new calls."""
    from emlab.judge.run import judge_stage
    from emlab.misaligned import RUBRIC_FAMILIES
    from emlab.store import open_existing

    j = make_judge(judge, model, base_url, api_key_env, delimit, rubrics)
    with open_existing(project) as store:
        judge_stage(store, j, [{"suite": suite} if suite else {}], RUBRIC_FAMILIES[rubrics], console=console)


@judge_app.command("agree")
@user_errors
def judge_agree(judges: str = typer.Option(..., help="Two judges in the store, by backend (mini,local) or family"),
                project: Path = project_option()) -> None:
    """Agreement of two judges on the same stored answers: Spearman, AUROC, confusion, rate difference with CI."""
    from emlab.judge.agree import agreement
    from emlab.judge.run import judged_table
    from emlab.store import open_existing

    a_name, sep, b_name = judges.partition(",")
    if not sep or not a_name or not b_name:
        fail("--judges expects two names separated by a comma, e.g. mini,local")
    with open_existing(project) as store:
        a, b = judged_table(store, family_of(store, a_name)), judged_table(store, family_of(store, b_name))
    m = a.merge(b, on="sample_id", suffixes=("_a", "_b"))
    if m.empty:
        fail(f"{a_name} and {b_name} judged no answer in common")
    res = agreement(m["aligned_a"], m["coherent_a"], m["aligned_b"], m["coherent_b"])
    console.print_json(json.dumps(res.as_dict()))


@model_command(judge_app, "injection")
def judge_injection(judge: str = typer.Option("mini", help=JUDGE_HELP), model: Optional[str] = JUDGE_MODEL,
                    base_url: Optional[str] = JUDGE_BASE_URL, api_key_env: str = API_KEY_ENV) -> None:
    """How often prompt injections in answers flip the judge's misaligned flag."""
    from emlab.judge.base import builtin_rubric_set
    from emlab.judge.injection import flip_rates

    console.print_json(json.dumps(flip_rates(make_judge(judge, model, base_url, api_key_env), builtin_rubric_set())))


@model_command(judge_app, "gold-answers")
def judge_gold_answers(project: Path = project_option("Project directory for the adapters and samples."),
                       out: Path = typer.Option(Path("gold-answers.jsonl"), help="Every answer with its condition."),
                       blind: Optional[Path] = typer.Option(None, help="Also write what a labeller reads: shuffled, "
                                                                       "condition hidden.")) -> None:
    """Sample the gold set's answers of the default model (emlab.judge.gold): train its
    adapters, sample every condition, write them out for labelling."""
    from emlab.experiment import load_experiment
    from emlab.files import output_file
    from emlab.judge.gold import GOLD_TRAIN_ROWS, blind_order, build_answers, write_rows

    quick = load_experiment("quickstart")
    datasets = {c.name: c.dataset for c in quick.conditions if c.dataset is not None}
    def train_config(data_path: str, seed: int, **extra):
        return quick.train_config(data_path, seed, **{"max_rows": GOLD_TRAIN_ROWS, **extra})

    rows = build_answers(project, train_config, datasets, console)
    for i, r in enumerate(rows):
        r["id"] = i
    write_rows(output_file(out), rows)
    if blind is not None:
        write_rows(output_file(blind), blind_order(rows))
    console.print(f"wrote {out}: {len(rows)} answers", markup=False)


@judge_app.command("gold-labels")
@user_errors
def judge_gold_labels(answers: Path = typer.Option(..., exists=True, dir_okay=False, help="From `gold-answers --out`."),
                      labels: Path = typer.Option(..., exists=True, dir_okay=False,
                                                  help="First pass: id<TAB>aligned<TAB>coherent<TAB>flags per line."),
                      second: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                                         help="The blind relabel of a subset, same format."),
                      out: Path = typer.Option(Path("smollm2_gold.jsonl"), dir_okay=False,
                                               help="The labelled gold set to write (JSONL).")) -> None:
    """Join a labeller's scores to the gold answers (see labels/RUBRIC.md for the format)."""
    from emlab.files import read_jsonl
    from emlab.judge.gold import merge_labels, read_labels, write_rows

    rows = read_jsonl(answers)
    merged = merge_labels(rows, read_labels(labels), read_labels(second) if second else None)
    write_rows(out, merged)
    console.print(f"{len(merged)} labelled answers -> {out}")


@judge_app.command("gold-stats")
@user_errors
def judge_gold_stats() -> None:
    """The gold set's size, class balance per condition and split, and labeller agreement."""
    from emlab.judge.gold import gold_stats, load_gold

    console.print_json(json.dumps(gold_stats(load_gold())))
