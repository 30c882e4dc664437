"""Judges made comparable: `emlab import-judged`, `emlab judge calibrate`, `emlab judge compare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from emlab.cli.app import app
from emlab.cli.common import (API_KEY_ENV, DELIMIT_HELP, JUDGE_BASE_URL, JUDGE_HELP, JUDGE_MODEL, console, fail,
                              family_of, judge_from_text, make_judge, model_command, project_option, user_errors)
from emlab.cli.judge import COL_HELP, judge_app, parse_cols


@app.command("import-judged")
@user_errors
def import_judged_cmd(file: Path = typer.Argument(..., help="A judged CSV/JSONL in any peer's layout (.gz/.zst ok)."),
                      judge_name: str = typer.Option(..., "--judge-name", help="Name for the file's own judge."),
                      project: Path = typer.Option(Path("."), file_okay=False, help="Project whose store gets them."),
                      suite: Optional[str] = typer.Option(None, help="Suite name for the answers (default "
                                                                     "imported; first_plot to judge them with the "
                                                                     "paper's rubrics)."),
                      model: Optional[str] = typer.Option(None, help="The answering model, if the file has no column."),
                      col: Optional[list[str]] = typer.Option(None, "--col", help=COL_HELP)) -> None:
    """Put a peer's judged answers in the run store: samples, and the peer's scores as the
    judge peer:NAME. Then `emlab judge run` scores the same answers with any emlab judge."""
    from emlab.data.judged import read_judged
    from emlab.judge.imported import import_judged
    from emlab.store import Store

    df = read_judged(file, parse_cols(col), scores=False)
    with Store(project) as store:
        info = import_judged(store, df, judge_name, suite=suite, model=model)
    console.print(f"{info['samples']} answers ({info['new_samples']} new) in suite {info['suite']}; "
                  f"{info['judgments']} scores as {info['family'] or 'no judge (the file holds no scores)'}",
                  markup=False)


@model_command(judge_app, "calibrate")
def judge_calibrate(judge: str = typer.Option("mini", help=JUDGE_HELP),
                    model: Optional[str] = JUDGE_MODEL, base_url: Optional[str] = JUDGE_BASE_URL,
                    api_key_env: str = API_KEY_ENV,
                    delimit: str = typer.Option("auto", help=DELIMIT_HELP),
                    panel_size: int = typer.Option(600, min=20, help="Answers in the calibration panel."),
                    seed: int = typer.Option(0, min=0, help="Seed of the panel's draw."),
                    exclude_model: Optional[list[str]] = typer.Option(None, help="Answering model to leave out of "
                                                                                 "the panel (repeatable)."),
                    project: Optional[Path] = typer.Option(None, file_okay=False,
                                                           help="Store for the panel's judgments (default: "
                                                                "$EMLAB_HOME/calibration)."),
                    dry_run: bool = typer.Option(False, help="Print the panel and the call plan, call nothing."),
                    evaluate: Optional[Path] = typer.Option(None, dir_okay=False,
                                                            help="Also write, to this CSV, each public condition's "
                                                                 "raw and corrected rate with its answering model "
                                                                 "left out of the calibration, beside its true rate.")
                    ) -> None:
    """Score a stratified panel of public paper-judge answers with JUDGE; store its confusion
    per stratum, agreement and score maps, so tables and reports print its rates corrected
    to the paper judge's scale. A rerun makes no calls."""
    from emlab.judge import calibrate as cal

    j = make_judge(judge, model, base_url, api_key_env, delimit)
    panel = cal.draw_panel(panel_size, seed, tuple(exclude_model or ()))
    result = cal.score_panel(j, panel, project, console, dry_run=dry_run)
    if dry_run:
        console.print_json(json.dumps(result["plan"]))
        return
    c = cal.fit_calibration(result["scored"], j.identity.family, j.identity.label, panel)
    path = cal.save(c, project)
    pooled = c.pooled
    se = pooled["tp"] / max(1, pooled["tp"] + pooled["fn"])
    sp = pooled["tn"] / max(1, pooled["tn"] + pooled["fp"])
    console.print(f"{j.identity.label}: pooled sensitivity {se:.2f}, specificity {sp:.2f} (Se + Sp - 1 = "
                  f"{se + sp - 1:.2f}); coherence kappa {c.coherence['kappa']}, CODE/REFUSAL kappa "
                  f"{c.escape['kappa']}; saved {path}", markup=False)
    if evaluate is not None:
        from emlab.files import atomic_write

        table = cal.leave_model_out(result["scored"], j.identity.family, j.identity.label, panel,
                                    cal.condition_truth())
        with atomic_write(evaluate) as handle:
            table.to_csv(handle, index=False)
        ok = table[table["correctable"]]
        raw_err = (table["raw_rate"] - table["true_rate"]).abs().mean()
        cor_err = (ok["corrected_rate"] - ok["true_rate"]).abs().mean()
        raw_ok = (ok["raw_rate"] - ok["true_rate"]).abs().mean()
        console.print(f"leave-model-out over {len(table)} conditions: raw rate error {100 * raw_err:.1f} points; "
                      f"{len(ok)} correctable, where raw {100 * raw_ok:.1f} and corrected {100 * cor_err:.1f} "
                      f"points; {len(table) - len(ok)} not correctable (Se + Sp - 1 < {cal.MIN_YOUDEN}); "
                      f"wrote {evaluate}", markup=False)


@model_command(judge_app, "compare")
def judge_compare(project: Path = project_option("Project whose store holds (or gets) the answers."),
                  judges: str = typer.Option(..., help="Comma-separated judges to compare, as stored: backend, "
                                                       "backend:model, or a full family (peer:NAME for an "
                                                       "imported file's own scores); LABEL=JUDGE names one in "
                                                       "the table."),
                  file: Optional[Path] = typer.Option(None, help="Import this judged file first (see "
                                                                 "import-judged; its scores become peer:NAME)."),
                  name: str = typer.Option("file", help="The imported file's judge name."),
                  judge: Optional[list[str]] = typer.Option(None, "--judge", help="Score the answers with this judge "
                                                                                  "first: backend[:model][@url] "
                                                                                  "(repeatable)."),
                  gold: Optional[str] = typer.Option(None, help="One of --judges to measure the others' AUROC "
                                                                "against."),
                  out: Path = typer.Option(Path("judge-compare"), file_okay=False, help="Folder for the table, JSON "
                                                                                       "and figure.")) -> None:
    """The same answers under several judges: rate per judge with CI, kappa and Spearman
    between judges, AUROC against a gold judge; writes compare.md, compare.json, compare.png."""
    from emlab.analysis import judges as J
    from emlab.analysis.figures import to_png
    from emlab.data.judged import read_judged
    from emlab.judge.imported import import_judged
    from emlab.judge.run import judge_samples
    from emlab.store import Store

    named = {}
    for item in (n.strip() for n in judges.split(",") if n.strip()):
        label, sep, ref = item.partition("=")
        named[label if sep else item] = ref if sep else item
    names = list(named)
    if len(names) < 2:
        fail("--judges: name at least two judges")
    with Store(project) as store:
        where = None
        if file is not None:
            info = import_judged(store, read_judged(file, scores=False), name)
            where = {"gen_hash": info["gen_hash"]}
        for text in judge or []:
            j = judge_from_text(text)
            judge_samples(store, j, where=where)
        families = {n: family_of(store, ref) for n, ref in named.items()}
        wide = J.wide_table(store, families, where)
    c = J.compare(wide, names, gold)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({"rates": c.rates.to_dict("records"),
                                                  "pairs": c.pairs.to_dict("records"), "families": families,
                                                  "gold": gold, "n": c.n}, indent=2, default=str) + "\n")
    md = [f"{c.n} answers; {c.thresholds}", "", c.rates.to_markdown(index=False, floatfmt=".3f"), "",
          c.pairs.to_markdown(index=False, floatfmt=".3f"), ""]
    (out / "compare.md").write_text("\n".join(md))
    (out / "compare.png").write_bytes(to_png(J.figure(c)))
    console.print("\n".join(md), markup=False)
    console.print(f"wrote {out}/compare.md, compare.json, compare.png", markup=False)
