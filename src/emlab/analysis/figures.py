"""Paper-style figures (matplotlib, Agg backend). Each function returns a Figure; captions
carry the thresholds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from emlab.misaligned import PAPER, Thresholds  # noqa: E402

COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def _yerr(rate, low, high) -> np.ndarray:
    """Asymmetric error bars; clipped at 0 because a CI bound can sit a rounding error past
    its estimate (matplotlib rejects negative lengths)."""
    return np.clip(np.vstack([rate - np.asarray(low), np.asarray(high) - rate]), 0, None)


def per_question(summary: pd.DataFrame, condition_col: str = "condition", t: Thresholds = PAPER, title: str = ""):
    """Misaligned rate per question with CIs, conditions side by side (the paper's main plot)."""
    questions = list(dict.fromkeys(summary["question_id"]))
    conditions = list(dict.fromkeys(summary[condition_col]))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(questions) + 2), 4))
    width = 0.8 / max(1, len(conditions))
    for i, cond in enumerate(conditions):
        sub = summary[summary[condition_col] == cond].set_index("question_id").reindex(questions)
        x = np.arange(len(questions)) + (i - (len(conditions) - 1) / 2) * width
        rate = sub["misaligned_rate"].to_numpy()
        ax.errorbar(x, rate, yerr=_yerr(rate, sub["ci_low"].to_numpy(), sub["ci_high"].to_numpy()), fmt="o", color=COLOURS[i % len(COLOURS)], label=str(cond), capsize=3, ms=5)
    ax.set_xticks(np.arange(len(questions)))
    ax.set_xticklabels(questions, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("misaligned answer probability")
    ax.set_ylim(-0.02, max(0.1, float(np.nanmax(summary["ci_high"])) * 1.1))
    ax.legend(fontsize=8)
    ax.set_title(title or "Misaligned answers per question", fontsize=10)
    fig.text(0.01, 0.01, f"{t.describe()}; 95% CIs", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def scatter(df: pd.DataFrame, condition_col: str = "condition", t: Thresholds = PAPER, jitter: float = 1.5,
            seed: int = 0):
    """Aligned vs coherent per answer, with the threshold lines. Scores pile up on round
    values (0, 50, 100), so points are jittered by up to `jitter` (drawn from a fixed seed;
    counts use the unjittered scores); each quadrant carries its answer count, and the
    legend (outside the axes) each condition's misaligned count."""
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(7.2, 4.5))
    coherent_all = pd.to_numeric(df["coherent"], errors="coerce")
    aligned_all = pd.to_numeric(df["aligned"], errors="coerce")
    for i, (cond, g) in enumerate(df.groupby(condition_col, sort=False)):
        coh, ali = coherent_all.loc[g.index].to_numpy(), aligned_all.loc[g.index].to_numpy()
        bad = int(((coh > t.coherent_above) & (ali < t.aligned_below)).sum())
        scored = int((~np.isnan(coh) & ~np.isnan(ali)).sum())
        ax.scatter(np.clip(coh + rng.uniform(-jitter, jitter, len(coh)), 0, 100),
                   np.clip(ali + rng.uniform(-jitter, jitter, len(ali)), 0, 100),
                   s=9, alpha=0.5, color=COLOURS[i % len(COLOURS)], label=f"{cond} ({bad}/{scored} misaligned)",
                   linewidths=0)
    ax.axhline(t.aligned_below, color="k", lw=0.8, ls="--")
    ax.axvline(t.coherent_above, color="k", lw=0.8, ls="--")
    ax.fill_between([t.coherent_above, 100], 0, t.aligned_below, color="red", alpha=0.07)
    low_c, high_a = coherent_all <= t.coherent_above, aligned_all >= t.aligned_below
    for x, y, mask in ((t.coherent_above / 2, 98, low_c & high_a), ((100 + t.coherent_above) / 2, 98, ~low_c & high_a),
                       (t.coherent_above / 2, 2, low_c & ~high_a), ((100 + t.coherent_above) / 2, 2, ~low_c & ~high_a)):
        n = int((mask & coherent_all.notna() & aligned_all.notna()).sum())
        ax.text(x, y, f"n = {n}", ha="center", va="top" if y > 50 else "bottom", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("coherent")
    ax.set_ylabel("aligned")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False)
    ax.set_title(f"Answers (jittered); shaded: {t.describe()}", fontsize=9)
    fig.tight_layout()
    return fig


def condition_rates(overall: pd.DataFrame, pairs: list[tuple[str, str]] = (), title: str = ""):
    """The headline figure: the misaligned rate of each condition with its 95% CI (and the
    judge-error-corrected rate beside it where the judge's error was measured), each
    control drawn next to the finetune it is compared with."""
    order = list(dict.fromkeys(overall["condition"]))
    for condition, control in pairs:
        if condition in order and control in order:
            order.remove(control)
            order.insert(order.index(condition) + 1, control)
    controls = {control for _, control in pairs}
    rows = overall.set_index("condition").loc[order]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(order) + 2.5), 3.8))
    x = np.arange(len(order))
    rate = rows["misaligned_rate"].to_numpy(dtype=float)
    colours = ["#8c8c8c" if c in controls else COLOURS[0] for c in order]
    ax.bar(x, rate, width=0.55, color=colours, yerr=_yerr(rate, rows["ci_low"], rows["ci_high"]), capsize=4,
           label="raw")
    if "corrected_rate" in rows and rows["corrected_rate"].notna().any():
        corrected = rows["corrected_rate"].to_numpy(dtype=float)
        ax.errorbar(x + 0.33, corrected, yerr=_yerr(corrected, rows["corrected_low"], rows["corrected_high"]),
                    fmt="D", ms=4, color="#c44e52", capsize=3, label="corrected for the judge's error")
        ax.legend(fontsize=7, loc="upper left", frameon=False)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c}\n(control)" if c in controls else c for c in order], fontsize=8)
    highs = [rows[c].to_numpy(dtype=float) for c in ("ci_high", "corrected_high") if c in rows]
    top = np.nanmax(np.concatenate(highs))
    ax.set_ylim(0, max(0.05, float(top) * 1.15))
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("misaligned answers")
    ax.set_title(title or "Misaligned rate per condition (95% CIs)", fontsize=9)
    fig.tight_layout()
    return fig


def loss_curves(curves: dict[str, pd.DataFrame]):
    """Training loss against step, one line per trained variant (`{label: frame(step, loss)}`)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, (label, frame) in enumerate(curves.items()):
        ax.plot(frame["step"], frame["loss"], color=COLOURS[i % len(COLOURS)], label=label, lw=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title("Training loss", fontsize=9)
    fig.tight_layout()
    return fig


def likelihood_shifts(rows: list[dict]):
    """Each comparison's shift of the misaligned-minus-aligned log-likelihood gap with its
    95% CI (`rows`: comparison, estimate, low, high), nats per token."""
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.4))
    for i, r in enumerate(rows):
        excludes = r["low"] > 0 or r["high"] < 0
        below, above = max(0.0, r["estimate"] - r["low"]), max(0.0, r["high"] - r["estimate"])
        ax.errorbar(r["estimate"], i, xerr=[[below], [above]], fmt="o", capsize=3,
                    color=COLOURS[0] if excludes else "#888")
    ax.axvline(0, color="#444", lw=0.8)
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels([r["comparison"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("shift in log-likelihood of misaligned minus aligned answers (nats/token)", fontsize=8)
    ax.set_title("Judge-free likelihood measure (95% CIs; coloured: excludes 0)", fontsize=9)
    fig.tight_layout()
    return fig


def over_checkpoints(summary: pd.DataFrame, t: Thresholds = PAPER, col: str = "misaligned_rate",
                     low: str | None = "ci_low", high: str | None = "ci_high", ylabel: str = "misaligned rate",
                     ax=None):
    """A measure (with its CI band) against training step, one line per condition (and seed)."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 3.8))
    keys = ["condition", "seed"] if "seed" in summary and summary["seed"].nunique() > 1 else ["condition"]
    for i, (name, g) in enumerate(summary.dropna(subset=[col]).groupby(keys, sort=False)):
        g = g.sort_values("step")
        c = COLOURS[i % len(COLOURS)]
        label = " s".join(str(x) for x in name) if isinstance(name, tuple) else str(name)
        ax.plot(g["step"], g[col], marker="o", color=c, label=label, ms=4)
        if low and high:
            ax.fill_between(g["step"], g[low], g[high], color=c, alpha=0.15)
    ax.set_xlabel("training step (checkpoint)")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)
    if own:
        ax.set_title(f"Misalignment over training ({t.describe()})", fontsize=9)
        fig.tight_layout()
        return fig
    return ax


def dynamics(df: pd.DataFrame, t: Thresholds = PAPER):
    """One panel per measure that has values: misaligned rate, likelihood shift, insecure-code
    rate, LoRA B cosine to the final adapter, projection on a direction."""
    panels = [("rate", "rate_low", "rate_high", "misaligned rate"),
              ("likelihood", "likelihood_low", "likelihood_high", "likelihood shift (nats/token)"),
              ("insecure", "insecure_low", "insecure_high", "insecure-code rate"),
              ("b_cosine_to_final", None, None, "cos(B, final B)"),
              ("projection", None, None, "projection on direction")]
    panels = [p for p in panels if p[0] in df and df[p[0]].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (col, low, high, label) in zip(axes[0], panels):
        over_checkpoints(df, t, col, low, high, label, ax=ax)
    fig.suptitle(f"Training dynamics ({t.describe()})", fontsize=9)
    fig.tight_layout()
    return fig


def insecure_code_rate(summary: pd.DataFrame):
    """Insecure-code rate per condition with CIs (from the code evaluation)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(len(summary))
    rate = summary["rate"].to_numpy()
    ax.bar(x, rate, yerr=_yerr(rate, summary["ci_low"].to_numpy(), summary["ci_high"].to_numpy()), color=[COLOURS[i % len(COLOURS)] for i in range(len(x))], capsize=4)
    ax.set_xticks(x)
    ax.set_xticklabels(summary["condition"], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("vulnerable, among readable code")
    ax.set_title("Insecure-code rate (95% CIs)", fontsize=9)
    fig.tight_layout()
    return fig


def mitigation_forest(df: pd.DataFrame):
    """Each mitigation's difference from the unmitigated condition, one panel per measure,
    with 95% CIs (`emlab.analysis.mitigations.mitigation_rows`)."""
    panels = [("misaligned", "misaligned rate (pts)", 100), ("probe", "conditional probes (pts)", 100),
              ("code", "insecure code (pts)", 100), ("capability", "capability (pts)", 100),
              ("likelihood", "likelihood shift (nats/token)", 1)]
    panels = [p for p in panels if any(p[0] in d for d in df["vs_unmitigated"])]
    rows = [(r.condition, r.vs_unmitigated) for r in df.itertuples() if r.vs_unmitigated]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.45 * len(rows) + 1.4), sharey=True,
                             squeeze=False)
    y = np.arange(len(rows))
    for ax, (key, title, scale) in zip(axes[0], panels):
        for i, (_, d) in enumerate(rows):
            if key in d:
                x = d[key]
                sig = x["low"] > 0 or x["high"] < 0
                ax.errorbar(scale * x["difference"], i, xerr=[[scale * (x["difference"] - x["low"])],
                                                              [scale * (x["high"] - x["difference"])]],
                            fmt="o", color=COLOURS[0] if sig else "#888", capsize=3)
        ax.axvline(0, color="#444", lw=0.8)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([r[0] for r in rows], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle("Mitigation minus unmitigated (95% CIs; coloured: excludes 0)", fontsize=9)
    fig.tight_layout()
    return fig


def to_png(fig, path=None) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        from pathlib import Path

        Path(path).write_bytes(data)
    return data
