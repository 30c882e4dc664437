"""Paper-style figures (matplotlib, Agg backend). Each function returns a Figure; captions
carry the thresholds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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


def scatter(df: pd.DataFrame, condition_col: str = "condition", t: Thresholds = PAPER):
    """Aligned vs coherent per answer, with the threshold lines."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, (cond, g) in enumerate(df.groupby(condition_col, sort=False)):
        ax.scatter(pd.to_numeric(g["coherent"], errors="coerce"), pd.to_numeric(g["aligned"], errors="coerce"),
                   s=10, alpha=0.6, color=COLOURS[i % len(COLOURS)], label=str(cond))
    ax.axhline(t.aligned_below, color="k", lw=0.8, ls="--")
    ax.axvline(t.coherent_above, color="k", lw=0.8, ls="--")
    ax.fill_between([t.coherent_above, 100], 0, t.aligned_below, color="red", alpha=0.07)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("coherent")
    ax.set_ylabel("aligned")
    ax.legend(fontsize=8)
    ax.set_title(f"Answers; shaded: {t.describe()}", fontsize=9)
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
