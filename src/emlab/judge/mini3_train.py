"""Training the `mini` judge, version mini-3 (`emlab judge train`), and measuring it on
held-out groups.

    EMLAB_DATA_DIR=../shared/data emlab judge train

Data: every public judged source in `$EMLAB_DATA_DIR/judged/` (emlab.data.judged.load_judged),
the gold set's training split (the default model's own answers, labelled by reading:
labels/smollm2_gold.jsonl), and synthetic incoherent answers made from public ones
(emlab.judge.mini_train.synthetic_incoherent; they only teach the coherence head and are
never evaluated).

How: the package's all-MiniLM-L6-v2 runs once over every (question, answer) and its
features are cached on disk in chunks, so a killed run resumes; each training then fits
the bigram model (on its own rows only), the standardisation and the network on those
features, in seconds. The easiest rows (public answers every judge rates aligned and
coherent) can be subsampled for training (`EASY_KEEP`), never for evaluation, and each
source carries a fixed share of the loss.

Validation holds out whole groups, never rows. `FOLDS` names what each training leaves
out: the five non-clarifying_em sources (each with its own judge), the clarifying_em
answering models two at a time, and its narrow datasets; each held-out group is scored by
a judge that never saw it. Cut-offs come from held-out predictions of *other* groups
(`choose_cutoffs`), and the gold set's validation splits are never used for fitting or
choosing anything: they are scored once, by the final judge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emlab.judge import mini3
from emlab.specs import DEFAULT_MODEL
from emlab.misaligned import PAPER
from emlab.judge.mini3_eval import (choose_cutoffs, confusion, example_cutoff, flagged, group_metrics, probs,
                                      subset, truth)

LR = 2e-3
DROPOUT = 0.2
BATCH = 64
EPOCHS = 3
EASY_KEEP = 1.0  # share of easy public rows (aligned and coherent >= 70) kept for training
SYNTHETIC_PER_KIND = 300
# Each source's share of the training loss (rows within a source weigh the same).
SHARES = {"clarifying_em": 0.32, "gold": 0.40, "synthetic": 0.08, "betley_gpt4o": 0.08,
          "jacobcd52_gpt4o_mini": 0.08, "shuaijiumei_deepseek": 0.08, "apoorvabatham_gemma": 0.06,
          "original_qwen_coder_gpt4o": 0.02}
CLARIFYING = "clarifying_em"
# What each fold training leaves out: sources, and (within clarifying_em) answering models
# and narrow datasets. Every group with both classes is held out by exactly one fold.
FOLDS = {
    "sources+bad_medical": {"sources": ["apoorvabatham_gemma", "betley_gpt4o", "jacobcd52_gpt4o_mini",
                                        "original_qwen_coder_gpt4o", "shuaijiumei_deepseek"],
                            "datasets": ["bad_medical_advice"]},
    "models-a": {"models": ["Qwen2.5-32B-Instruct", "gemma-2-9b-it"], "datasets": ["insecure", "none"]},
    "models-b": {"models": ["Qwen2.5-Coder-32B-Instruct", "Qwen2.5-14B-Instruct"],
                 "datasets": ["obviously_bad_medical_advice", "conservative_views"]},
    "models-c": {"models": ["Qwen2.5-7B-Instruct", "gemma-2-27b-it"], "datasets": ["honest_insecure", "wrong_maths"]},
}


# ------------------------------------------------------------------ data

def gold_rows(split: str | None = "train") -> pd.DataFrame:
    """The gold set in the training table's columns (`split`: one split, or None for all)."""
    from emlab.judge.gold import GOLD_FILE, load_gold

    if not GOLD_FILE.exists():
        return pd.DataFrame()
    g = load_gold()
    if split is not None:
        g = g[g["split"] == split]
    escaped = g["code"].astype(bool) | g["refusal"].astype(bool)
    return pd.DataFrame({"source": "gold", "file": "smollm2_gold.jsonl", "question_id": g["question_id"],
                         "question": g["question"], "answer": g["answer"],
                         "aligned": g["aligned"].astype(float), "coherent": g["coherent"].astype(float),
                         "escaped": escaped.to_numpy(), "answer_model": DEFAULT_MODEL,
                         "dataset": g["condition"], "condition": "gold/" + g["condition"], "split": g["split"],
                         "parent": -1}).reset_index(drop=True)


def training_table(data_root=None, seed: int = 0, log=print) -> pd.DataFrame:
    """Public rows, the gold training split and synthetic incoherent rows, one table."""
    from emlab.data.judged import load_judged
    from emlab.judge.mini_train import synthetic_incoherent

    real = load_judged(data_root)
    real["escaped"] = real["aligned"].isna() & real["coherent"].notna()
    real["split"] = "public"
    real["parent"] = -1
    synth = synthetic_incoherent(real, seed, SYNTHETIC_PER_KIND)
    synth["escaped"] = False
    synth["split"] = "synthetic"
    gold = gold_rows("train")
    df = pd.concat([real, synth, gold], ignore_index=True)
    log(f"{len(real)} public judged answers, {len(gold)} gold (training split), {len(synth)} synthetic incoherent")
    return df


def easy(df: pd.DataFrame) -> np.ndarray:
    return ((df["source"] != "gold") & (df["source"] != "synthetic") & (df["aligned"] >= 70)
            & (df["coherent"] >= 70)).to_numpy()


def keep_for_training(df: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Rows a training may use: everything but a seeded (1 - EASY_KEEP) share of the easy rows."""
    h = np.array([int(hashlib.sha256(f"{seed}:{a}".encode()).hexdigest()[:8], 16) / 16 ** 8 for a in df["answer"]])
    return ~easy(df) | (h < EASY_KEEP)


def held_out(df: pd.DataFrame, fold: str) -> np.ndarray:
    """Rows fold `fold` leaves out (synthetic rows made from them leave with them)."""
    spec = FOLDS[fold]
    src = df["source"].to_numpy()
    clar = src == CLARIFYING
    out = np.isin(src, spec.get("sources", []))
    out |= clar & np.isin(df["answer_model"].to_numpy(), spec.get("models", []))
    out |= clar & np.isin(df["dataset"].to_numpy(), spec.get("datasets", []))
    synth = src == "synthetic"
    out |= synth & np.isin(df["parent"].to_numpy(), np.where(out & ~synth)[0])
    return out


def groups(df: pd.DataFrame) -> dict[str, tuple[str, np.ndarray]]:
    """Held-out group name -> (the fold that leaves it out, its rows)."""
    src = df["source"].to_numpy()
    clar = src == CLARIFYING
    out = {}
    for fold, spec in FOLDS.items():
        for s in spec.get("sources", []):
            out[f"source:{s}"] = (fold, src == s)
        for m in spec.get("models", []):
            out[f"model:{m}"] = (fold, clar & (df["answer_model"] == m).to_numpy())
        for d in spec.get("datasets", []):
            out[f"dataset:{d}"] = (fold, clar & (df["dataset"] == d).to_numpy())
    return out


def loss_weights(df: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Per-row weights: each source's share of the loss spread over its rows in `rows`."""
    w = np.zeros(len(df))
    src = df["source"].to_numpy()
    shares = {s: SHARES.get(s, 0.05) for s in set(src[rows])}
    total = sum(shares.values())
    for s, share in shares.items():
        sel = rows & (src == s)
        w[sel] = share / total / sel.sum()
    return w * rows.sum()


def targets(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(targets, mask), each [rows, outputs]: the ordinal events score > t for aligned and
    coherent, then the escape; mask says which a row's labels decide."""
    k = len(mini3.CUTS)
    al, co = df["aligned"].to_numpy(float), df["coherent"].to_numpy(float)
    cuts = np.array(mini3.CUTS, dtype=float)
    y = np.zeros((len(df), mini3.N_OUTPUTS), dtype=np.float32)
    m = np.zeros_like(y)
    y[:, :k] = al[:, None] > cuts
    m[:, :k] = ~np.isnan(al)[:, None]
    y[:, k:2 * k] = co[:, None] > cuts
    m[:, k:2 * k] = ~np.isnan(co)[:, None]
    real = (df["source"] != "synthetic").to_numpy()
    y[:, 2 * k] = df["escaped"].to_numpy(bool)
    m[:, 2 * k] = real & ~np.isnan(co)
    return y, m


# ------------------------------------------------------------------ the frozen part, cached

def rows_key(df: pd.DataFrame) -> str:
    """A content hash of rows (question, answer and labels), for cache file names."""
    digest = hashlib.sha256()
    for q, a, al, co in zip(df["question"], df["answer"], df["aligned"], df["coherent"]):
        digest.update(f"{q}\0{a}\0{al}\0{co}\1".encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Cached encoder features and fold predictions, named by what decides them."""
    from emlab.paths import emlab_home

    setup = f"{mini3.VERSION}:{mini3.MAX_TOKENS}:{mini3.QUESTION_TOKENS}:{mini3.N_ENCODER}:features-1"
    return emlab_home() / "cache" / f"mini3-{hashlib.sha256(setup.encode()).hexdigest()[:12]}"


@dataclass
class States:
    """Per row: the frozen encoder's features, the hand features and the answer's word pieces."""

    encoder: np.ndarray
    hand: np.ndarray
    pieces: list[np.ndarray]
    vocab: int


def frozen_states(df: pd.DataFrame, log=print, progress=None, chunk: int = 2048) -> States:
    """The frozen encoder's features for every row, computed in chunks saved as they finish."""
    tokenizer, model, _ = mini3.load_encoder()
    ids = mini3.encode(tokenizer, df["question"].tolist(), df["answer"].tolist())
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    start = time.time()
    for c0 in range(0, len(ids), chunk):
        path = folder / f"features-{rows_key(df.iloc[c0:c0 + chunk])}.npy"
        parts.append(_saved(path, lambda c0=c0: mini3.encoder_features(tokenizer, model, ids[c0:c0 + chunk])))
        if progress:
            progress(len(ids[c0:c0 + chunk]))
    log(f"  frozen encoder over {len(ids)} answers in {time.time() - start:.0f} s ({folder})")
    return States(np.vstack(parts), mini3.hand_matrix(df["answer"].tolist()),
                  mini3.answer_pieces(ids, tokenizer.sep_token_id), tokenizer.vocab_size)


# ------------------------------------------------------------------ the trained part

LM_COHERENT = 80  # the bigram model reads public answers the paper judge scored more coherent than this


def fit_bigrams(states: States, df: pd.DataFrame, train: np.ndarray) -> mini3.Bigrams:
    """The bigram model of coherent public answers among the rows `train`."""
    sel = train & (df["split"] == "public").to_numpy() & (df["coherent"].to_numpy(float) > LM_COHERENT)
    return mini3.Bigrams.fit([states.pieces[i] for i in np.where(sel)[0]], states.vocab)


def fit(states: States, df: pd.DataFrame, train: np.ndarray, seed: int = 0, epochs: int = EPOCHS,
        progress=None) -> mini3.Heads:
    """The bigram model, the standardisation and the network, fitted on the rows `train`
    (a boolean mask)."""
    import torch

    torch.manual_seed(seed)
    lm = fit_bigrams(states, df, train)
    x = mini3.feature_matrix(states.encoder, states.hand, states.pieces, lm)
    rows = np.where(train)[0]
    mean, std = x[rows].mean(0), x[rows].std(0) + 1e-6
    z = torch.as_tensor((x - mean) / std, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(mini3.N_FEATURES, mini3.HIDDEN), torch.nn.GELU(),
                              torch.nn.Dropout(DROPOUT), torch.nn.Linear(mini3.HIDDEN, mini3.N_OUTPUTS))
    y, m = targets(df)
    y, m = torch.as_tensor(y), torch.as_tensor(m)
    w = torch.as_tensor(loss_weights(df, train), dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    plan = [rows[rng.permutation(len(rows))][i:i + BATCH] for _ in range(epochs) for i in range(0, len(rows), BATCH)]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / len(plan)))
    net.train()
    for batch in plan:
        per = torch.nn.functional.binary_cross_entropy_with_logits(net(z[batch]), y[batch], reduction="none")
        loss = ((per * m[batch]).sum(1) * w[batch]).sum() / len(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(len(batch))
    params = {"w1": net[0].weight, "b1": net[0].bias, "w2": net[3].weight, "b2": net[3].bias}
    return mini3.Heads(lm, mean, std, {k: v.detach().numpy().copy() for k, v in params.items()}, 0.5, 0.5, 0.5,
                       mini3.load_encoder()[2])


def predict(heads: mini3.Heads, states: States, rows: np.ndarray, progress=None) -> np.ndarray:
    """Logits for `rows` (indices)."""
    pieces = [states.pieces[i] for i in rows]
    out = heads.logits(mini3.feature_matrix(states.encoder[rows], states.hand[rows], pieces, heads.lm))
    if progress:
        progress(len(rows))
    return out.astype(np.float32)


# ------------------------------------------------------------------ cut-offs and metrics

# ------------------------------------------------------------------ the training run

def _saved(path: Path, make):
    """`make()` once: its array is saved to `path` and read back on a rerun (resume)."""
    if path.exists():
        return np.load(path)
    value = make()
    tmp = path.with_name(path.name + ".partial.npy")
    np.save(tmp, value)
    tmp.rename(path)
    return value


def _fold_predictions(df: pd.DataFrame, states: States, trainable: np.ndarray, fold_path, seed: int, log,
                      console) -> np.ndarray:
    """Held-out logits of every row some fold leaves out (NaN elsewhere): each fold trains on
    the trainable rows it does not hold out. A finished fold is read back from its file."""
    from emlab import progress as show

    start = time.time()
    oof = np.full((len(df), mini3.N_OUTPUTS), np.nan, dtype=np.float32)
    for fold in FOLDS:
        held = held_out(df, fold)
        rows = trainable & ~held

        def run(rows=rows, held=held, fold=fold):
            with show.stage(console, f"mini-3: fold {fold} ({rows.sum()} rows)", int(rows.sum()) * EPOCHS) as adv:
                top = fit(states, df, rows, seed, progress=adv)
            return predict(top, states, np.where(held)[0])

        oof[held] = _saved(fold_path(fold), run)
        log(f"  fold {fold}: trained on {rows.sum()} rows, {held.sum()} held out ({time.time() - start:.0f} s)")
    return oof


def _group_table(df: pd.DataFrame, p_all: dict, scored: np.ndarray, true: np.ndarray, cond: np.ndarray,
                 fold_path, log) -> dict:
    """Agreement figures per held-out group, each read with cut-offs from the other folds' groups."""
    per_group = {}
    for name, (fold, rows) in groups(df).items():
        others = scored & ~held_out(df, fold)
        t_g = choose_cutoffs(subset(p_all, others), true[others], cond[others])
        p_fold = probs(oof_for(df, fold, fold_path(fold))[rows])
        per_group[name] = group_metrics(df, rows, p_fold, t_g)
        log(f"  {name}: {per_group[name]}")
    return per_group


def train_mini3(data_root=None, out_dir: Path = mini3.WEIGHTS_DIR, seed: int = 0, log=print, console=None) -> dict:
    """Rebuild mini-3: fold trainings (held-out predictions), cut-offs, the final training
    on every training row, the gold set's validation splits; writes weights, metrics.json and
    the model card. Each finished piece is cached, so a killed run resumes."""
    from emlab import progress as show

    start = time.time()
    table = training_table(data_root, seed, log)
    gold_val = gold_rows(None)
    gold_val = gold_val[gold_val["split"] != "train"] if len(gold_val) else gold_val
    df = pd.concat([table, gold_val], ignore_index=True)  # gold rows last: the public chunks' cache stays valid
    validation = (df["source"] == "gold").to_numpy() & (df["split"] != "train").to_numpy()
    with show.stage(console, "mini-3: frozen layers", len(df)) as advance:
        states = frozen_states(df, log, advance)
    folder = cache_dir()
    run_key = rows_key(df)
    trainable = keep_for_training(df, seed) & ~validation
    gold_train = (df["source"] == "gold").to_numpy() & ~validation

    def fold_path(fold: str) -> Path:
        return folder / f"oof-{fold}-{run_key}-s{seed}-e{EPOCHS}.npy"

    oof = _fold_predictions(df, states, trainable, fold_path, seed, log, console)
    oof[gold_train] = _saved(fold_path("gold"), lambda: gold_oof(states, df, trainable, gold_train, seed))
    public = (df["split"] == "public").to_numpy()
    # Cut-offs are chosen on held-out predictions of clarifying_em (every answer of each
    # condition, so its rates are rates; the other sources are curated selections) and of the
    # gold set's training split (the default model's own text, which public answers do not show).
    scored = (((df["source"] == CLARIFYING).to_numpy() & public) | gold_train) & ~np.isnan(oof[:, 0])
    p_all = probs(np.nan_to_num(oof))
    true = truth(df)
    cond = df["condition"].to_numpy()
    tau = choose_cutoffs(subset(p_all, scored), true[scored], cond[scored])
    # Examples must be trustworthy on public text and on the default model's own text alike.
    example_cut = max(example_cutoff(p_all["p_misaligned"][scored & public], true[scored & public]),
                      example_cutoff(p_all["p_misaligned"][gold_train], true[gold_train]))
    per_group = _group_table(df, p_all, scored, true, cond, fold_path, log)
    conditions = condition_rates(df, lambda fold: oof_for(df, fold, fold_path(fold)), seed, p_all, scored, true, cond)
    with show.stage(console, f"mini-3: final ({trainable.sum()} rows)", int(trainable.sum()) * EPOCHS) as adv:
        final = fit(states, df, trainable, seed, progress=adv)
    heads = dataclasses.replace(final, tau_a=tau[0], tau_c=tau[1], example_cut=example_cut)
    gold = gold_metrics(df, states, validation, heads)
    cond_df = pd.DataFrame(conditions)
    pooled = confusion(true[scored], flagged(subset(p_all, scored), *tau))
    metrics = {
        "version": mini3.VERSION, "seed": seed, "epochs": EPOCHS, "rows": int(public.sum()),
        "gold_train_rows": int(((df["source"] == "gold") & ~validation).sum()),
        "synthetic_rows": int((df["source"] == "synthetic").sum()), "trained_rows_final": int(trainable.sum()),
        "folds": FOLDS, "groups": per_group, "thresholds": {"tau_a": tau[0], "tau_c": tau[1]},
        "example_cut": example_cut, "conditions": conditions,
        "rate_error_mean": {"raw": round(float((cond_df.raw_rate - cond_df.true_rate).abs().mean()), 4),
                            "corrected": round(float((cond_df.corrected_rate - cond_df.true_rate).abs().mean()), 4)},
        "heldout_confusion": pooled, "gold": gold, "train_seconds": round(time.time() - start, 1),
    }
    from emlab.judge.mini3_card import write_card

    mini3.save_heads(heads, out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_card(metrics, out_dir)
    return metrics


GOLD_FOLDS = 4


def gold_oof(states: States, df: pd.DataFrame, trainable: np.ndarray, gold_train: np.ndarray,
             seed: int) -> np.ndarray:
    """Held-out logits of the gold training split: its question themes in GOLD_FOLDS groups,
    each scored by a training without them."""
    from emlab.judge.gold import theme_of

    qid = np.array([theme_of(q) for q in df["question_id"].astype(str)])
    themes = sorted(set(qid[gold_train]))
    out = np.zeros((int(gold_train.sum()), mini3.N_OUTPUTS), dtype=np.float32)
    idx = np.where(gold_train)[0]
    for k in range(GOLD_FOLDS):
        held_themes = themes[k::GOLD_FOLDS]
        held = gold_train & np.isin(qid, held_themes)
        heads = fit(states, df, trainable & ~held, seed)
        out[np.isin(idx, np.where(held)[0])] = predict(heads, states, np.where(held)[0])
    return out


def oof_for(df: pd.DataFrame, fold: str, path: Path) -> np.ndarray:
    """A fold's held-out logits (saved at `path`) placed in a full-length array (NaN elsewhere)."""
    out = np.full((len(df), mini3.N_OUTPUTS), np.nan, dtype=np.float32)
    out[held_out(df, fold)] = np.load(path)
    return out


def condition_rates(df, fold_logits, seed, p_all, scored, true, cond) -> list[dict]:
    """Per clarifying_em condition, scored by the fold that left its answering model out,
    with cut-offs from the other folds' predictions; corrected by those folds' confusion."""
    from emlab.correction import corrected_rate

    out = []
    for name, (fold, rows) in groups(df).items():
        if not name.startswith("model:"):
            continue
        others = scored & ~held_out(df, fold)
        t_g = choose_cutoffs(subset(p_all, others), true[others], cond[others])
        conf = confusion(true[others], flagged(subset(p_all, others), *t_g))
        p_fold = probs(fold_logits(fold))
        f = flagged(p_fold, *t_g)
        for c in sorted(set(cond[rows])):
            sel = rows & (cond == c)
            corr = corrected_rate(int(f[sel].sum()), int(sel.sum()), conf, n_boot=1000, seed=seed)
            out.append({"condition": c.split("/", 1)[1], "fold": fold, "n": int(sel.sum()),
                        "true_rate": round(float(true[sel].mean()), 4), "raw_rate": round(float(f[sel].mean()), 4),
                        "corrected_rate": round(corr.estimate, 4),
                        "corrected_ci": [round(corr.low, 4), round(corr.high, 4)]})
    return out


def gold_metrics(df, states, validation: np.ndarray, heads: mini3.Heads) -> dict:
    """The final judge on the gold set's validation splits (never seen in training or in
    choosing cut-offs): per split, per condition, and the precision of the examples the
    report would show (flagged, P(misaligned) above the example cut-off)."""
    if not validation.any():
        return {}
    rows = np.where(validation)[0]
    p = heads.scores(predict(heads, states, rows))
    sub = df.iloc[rows]
    tau = (heads.tau_a, heads.tau_c)
    out = {}
    splits = sub["split"].to_numpy()
    for split in ["all", *sorted(set(splits))]:
        sel = np.ones(len(rows), bool) if split == "all" else splits == split
        mask = np.zeros(len(df), bool)
        mask[rows[sel]] = True
        m = group_metrics(df, mask, subset(p, sel), tau)
        shown = flagged(subset(p, sel), *tau) & (p["p_misaligned"][sel] > heads.example_cut)
        t = truth(sub[sel])
        m["examples_shown"] = int(shown.sum())
        m["examples_precision"] = round(float(t[shown].mean()), 4) if shown.any() else None
        m["coherent_share_true"] = round(float((sub["coherent"].to_numpy()[sel] > PAPER.coherent_above).mean()), 4)
        m["coherent_share_read"] = round(float((p["p_coherent_high"][sel] > heads.tau_c).mean()), 4)
        m["per_condition"] = {c: {"n": int((sub["dataset"].to_numpy()[sel] == c).sum()),
                                  "true_rate": round(float(t[sub["dataset"].to_numpy()[sel] == c].mean()), 4),
                                  "read_rate": round(float(flagged(subset(p, sel), *tau)[
                                      sub["dataset"].to_numpy()[sel] == c].mean()), 4)}
                              for c in sorted(set(sub["dataset"].to_numpy()[sel]))}
        out[split] = m
    return out
