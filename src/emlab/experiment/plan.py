"""Before any work: the preflight (`check_resources`: every model id, dataset, suite, judge
and key the experiment names) and the dry run's plan (`plan`: trainings, generations,
judge calls, tokens and dated cost bounds).
"""

from __future__ import annotations

import os
from pathlib import Path

from emlab.errors import ConfigError, EmlabError
from emlab.experiment.spec import Experiment
from emlab.misaligned import PERSONA
from emlab.specs import DatasetRef

def check_resources(exp: Experiment, dry_run: bool = False) -> list[str]:
    """Everything the experiment names exists and is valid: datasets (resolved and
    validated), suites, coding tasks and judges' weights. Runs before any work. With
    `dry_run`, what this machine lacks but a user prepares - direction files (an earlier emlab
    stage makes them), registered datasets it cannot fetch - is returned as inputs to prepare
    instead of failing."""
    from emlab.models.registry import check_model_name

    try:
        # An endpoint's model (and an API finetune's base) is named as the endpoint names it.
        if exp.sample.backend not in ("openai", "scripted") and not any(c.served for c in exp.conditions):
            check_model_name(exp.model)
    except EmlabError as exc:
        raise ConfigError(f"field 'model': {exc}") from None
    to_prepare = missing_keys(exp, dry_run)
    for cond in exp.conditions:
        try:
            to_prepare += _condition_inputs(exp, cond, dry_run)
        except EmlabError as exc:
            raise ConfigError(f"condition '{cond.name}': {exc}") from None
    _check_suites(exp)
    if exp.codeeval is not None:
        from emlab.evals.codeeval import load_tasks

        load_tasks(exp.codeeval.tasks)
    if exp.likelihood is not None and exp.likelihood.required and not likelihood_data_available():
        raise ConfigError("likelihood: needs the public judged answers: set EMLAB_DATA_DIR to a folder holding "
                          "judged/ (or set likelihood.required: false to skip it)")
    if exp.projection is not None:
        from emlab.models.hooks import load_directions
        from emlab.models.registry import hidden_size

        dirs, meta = load_directions(exp.projection.direction, hidden_size(exp.model))
        if exp.projection.layer is not None and exp.projection.layer not in dirs:
            raise ConfigError(f"projection: {exp.projection.direction} has no direction for layer "
                              f"{exp.projection.layer} (it has {min(dirs)}-{max(dirs)})")
    for j in exp.judges:
        if j.name == "mini":
            from emlab.judge.mini import weights_dir_of

            folder = weights_dir_of(j.default_model())
            if not any((folder / f).exists() for f in ("weights.safetensors", "heads.safetensors")):
                raise ConfigError(f"judge 'mini': no weights in {folder} (run `emlab judge train`)")
    return to_prepare


def _condition_inputs(exp: Experiment, cond, dry_run: bool) -> list[str]:
    """A condition's datasets (resolved and validated, transforms' own datasets included)
    and steering direction; in a dry run, what is missing here is returned as inputs to prepare."""
    from emlab.data.registry import DatasetMissing, resolve_chat_file
    from emlab.mitigate import mitigated_dataset

    def datasets(ref: DatasetRef):
        if ref.name or ref.path:
            resolve_chat_file(ref.name or ref.path)
        for step in ref.transforms:
            other = step.mix_with or step.dilute_with
            if other is not None:
                datasets(other.dataset)

    to_prepare = []
    refs = [mitigated_dataset(cond.dataset, cond.mitigation)] if cond.dataset is not None else []
    if cond.mitigation is not None and cond.mitigation.realign and cond.mitigation.realign.dataset:
        refs.append(cond.mitigation.realign.dataset)
    for ref in refs:
        try:
            datasets(ref)
        except DatasetMissing as exc:
            if not dry_run:
                raise
            to_prepare.append(f"dataset for condition '{cond.name}': {exc}")
    steer = cond.mitigation.preventive_steering if cond.mitigation else None
    if steer is not None and dry_run and not Path(steer.direction).is_file():
        to_prepare.append(f"{steer.direction} (condition '{cond.name}'; make it with `emlab probe direction`)")
    elif steer is not None:
        from emlab.models.hooks import load_directions
        from emlab.models.registry import hidden_size

        dirs, _ = load_directions(steer.direction, hidden_size(exp.model))
        missing = [layer for layer in steer.layers if layer not in dirs]
        if missing:
            raise ConfigError(f"{steer.direction}: no direction for layer(s) {missing}")
    return to_prepare


def _check_suites(exp: Experiment) -> None:
    """Every suite loads; samples and rubrics are found by a suite's name, so two different
    suites under one name (which would share both) are refused."""
    from emlab.data.questions import load_suite

    seen: dict[str, tuple[str, str]] = {}
    for s in exp.sample.suites + (exp.probes.suites or [] if exp.probes else []):
        loaded = load_suite(s)
        if loaded.name in seen and seen[loaded.name][0] != loaded.sha256:
            raise ConfigError(f"suites {seen[loaded.name][1]!r} and {s!r} are both named '{loaded.name}' but differ: "
                              "rename one file")
        seen[loaded.name] = (loaded.sha256, s)


def missing_keys(exp: Experiment, dry_run: bool) -> list[str]:
    """API keys the experiment needs and the environment lacks (OpenAI's own endpoint only: a
    local or self-hosted server takes any key). A run stops here; a dry run lists them."""
    needs = [(f"judge '{j.name}' ({j.default_model()})", j.api_key_env) for j in exp.judges
             if j.name in ("logprob", "sampled") and j.base_url is None]
    if exp.sample.backend == "openai" and exp.sample.base_url is None:
        needs.append(("sample.backend openai", exp.sample.api_key_env))
    missing = [f"{env} (for {what})" for what, env in needs if not os.environ.get(env)]
    if missing and not dry_run:
        raise ConfigError(f"API key not set: {'; '.join(missing)}: export it, or point base_url at a server that "
                          "needs none")
    return [f"set {m}" for m in missing]


def likelihood_data_available() -> bool:
    from emlab.paths import data_dir

    return data_dir() is not None and (data_dir() / "judged" / "clarifying_em").is_dir()


# ------------------------------------------------------------------ plan

def plan(exp: Experiment) -> dict:
    """Counts for --dry-run: trainings, generations, judge calls, estimated tokens."""
    from emlab.data.questions import load_suite

    trained = [c for c in exp.conditions if c.trained]
    untouched = [c for c in exp.conditions if not c.trained and not (c.mitigation and c.mitigation.early_stop)]
    variants = len(untouched) + len(trained) * len(exp.seeds)
    per_variant = 0
    prompt_chars = 0
    suites = {}
    for name in exp.sample.suites:
        prompts = list(load_suite(name).prompts(exp.sample.samples_per_paraphrase))
        suites[name] = len(prompts)
        per_variant += len(prompts)
        prompt_chars += sum(len(p.text) + len(p.system or "") for p in prompts)
    generations = variants * per_variant
    context_tokens = _context_tokens(exp)
    prompt_tokens = variants * prompt_chars // 4 + sum(context_tokens.values()) * per_variant
    api_judges = [j for j in exp.judges if j.name in ("logprob", "sampled")]
    train_tokens = _training_tokens(exp, trained)
    probes = _probe_prompts(exp) * variants
    return {
        "experiment": exp.name, "model": exp.model,
        "trainings": len(trained) * len(exp.seeds), "training_preset": exp.train.preset,
        "training_tokens_est": train_tokens if train_tokens is not None else "unknown (dataset not available here)",
        "model_variants": variants, "suites": suites,
        "generations": generations,
        "generated_tokens_max": generations * exp.sample.max_tokens,
        "prompt_tokens_est": prompt_tokens,
        "in_context_tokens_est": context_tokens or "no in-context conditions",
        "sampling_usd_est": _sampling_usd(exp, prompt_tokens, generations * exp.sample.max_tokens),
        "judge_calls": (generations + probes) * sum(len(j.metrics()) for j in exp.judges),
        "api_judge_calls": (generations + probes) * sum(len(j.metrics()) for j in api_judges),
        "api_judge_input_tokens_est": (generations + probes) * sum(len(j.metrics()) for j in api_judges) *
                                      (350 + exp.sample.max_tokens),
        "api_judge_usd_est": _judge_usd(api_judges, generations + probes, 350 + exp.sample.max_tokens),
        "judges": [j.name + (f":{j.model}" if j.model else "") for j in exp.judges],
        "codeeval_generations": _codeeval_count(exp) * variants if exp.codeeval else 0,
        "thresholds": f"coherent > {exp.thresholds.coherent_above:g} and aligned < {exp.thresholds.aligned_below:g}"
                      + (f"; persona judges: {PERSONA.describe()}" if any(j.rubrics == "persona-1to5"
                                                                           for j in exp.judges) else ""),
        "checkpoints": exp.checkpoints if exp.checkpoints is not None else
        ({c.name: c.checkpoints for c in exp.conditions if c.checkpoints is not None} or "final adapters only"),
        "mitigations": {c.name: c.mitigation.kinds() for c in exp.conditions if c.mitigation is not None},
        "unmitigated": exp.unmitigated,
        "probe_forms": exp.probes.forms if exp.probes else [],
        "probe_generations": probes,
        "capability_generations": exp.capability.tasks * variants if exp.capability else 0,
        "note": "each kept checkpoint (and each re-alignment point) is sampled, judged and scored as one more model "
                "variant (counts above are for final adapters)" if exp.checkpoints is not None or any(
                    c.checkpoints is not None or (c.mitigation and c.mitigation.realign) for c in exp.conditions)
        else "",
    }


def _training_tokens(exp: Experiment, trained) -> int | None:
    """Tokens the trainings read (4 characters a token), or None when a dataset is not here."""
    from emlab.mitigate import mitigated_dataset, realign_plan

    total = 0
    cfg = exp.train_config("insecure", exp.seeds[0])  # the preset's and overrides' epochs and max_rows
    for cond in trained:
        if cond.dataset is None:  # re-alignment: max(examples) rows of its data
            ref, _, extra = realign_plan(cond.mitigation.realign, cfg.per_device_batch_size *
                                         cfg.gradient_accumulation_steps)
            sized, max_rows = _dataset_chars(ref), extra["max_rows"]
        else:
            ref = mitigated_dataset(cond.dataset, cond.mitigation)
            sized, max_rows = _dataset_chars(ref), cfg.max_rows
        if sized is None:
            return None
        chars, rows = sized
        used = min(1.0, max_rows / rows) if max_rows and rows else 1.0
        total += int(chars * used / 4 * cfg.epochs * len(exp.seeds))
    return total


def _probe_prompts(exp: Experiment) -> int:
    """Probe prompts per model variant."""
    if exp.probes is None:
        return 0
    from emlab.data.probes import probe_suite
    from emlab.data.questions import load_suite

    return sum(len(list(probe_suite(load_suite(name), form).prompts(
        exp.probes.samples_per_paraphrase or exp.sample.samples_per_paraphrase)))
        for name in exp.probes.suites or exp.sample.suites for form in exp.probes.forms)


def _judge_usd(api_judges, answers: int, tokens_per_call: int) -> str:
    """Dollars for the API judges' calls (one per answer and metric) at the dated list prices
    emlab knows (an upper bound: answers are counted at their full max_tokens), or which
    judges it cannot price."""
    from emlab.judge.calibrate import PRICE_DATE, dollars

    if not api_judges:
        return "none (no API judge)"
    total, unknown = 0.0, []
    for j in api_judges:
        calls = answers * len(j.metrics())
        usd = dollars(j.default_model(), calls * tokens_per_call, calls)
        if usd is None:
            unknown.append(j.default_model() or j.name)
            continue
        total += usd
    text = f"<= ${total:,.0f} at {PRICE_DATE} list prices"
    return text + (f"; not priced: {', '.join(unknown)}" if unknown else "")


def _context_tokens(exp: Experiment) -> dict[str, int]:
    """Per in-context condition: the estimated tokens of its turns (k rows at the dataset's
    mean row length, 4 characters a token), before any window truncation."""
    out = {}
    for c in exp.conditions:
        if c.in_context is not None:
            sized = _dataset_chars(c.in_context.dataset)
            out[c.name] = int(c.in_context.k * sized[0] / max(1, sized[1]) / 4) if sized else 0
    return out


def _sampling_usd(exp: Experiment, tokens_in: int, tokens_out: int) -> str:
    """Dollars for sampling an API model at the dated list prices (an upper bound)."""
    if exp.sample.backend != "openai":
        return "none (local sampling)"
    from emlab.judge.calibrate import PRICE_DATE, dollars

    usd = dollars(exp.model, tokens_in, tokens_out)
    return f"not priced for {exp.model}" if usd is None else f"<= ${usd:,.2f} at {PRICE_DATE} list prices"


def _codeeval_count(exp: Experiment) -> int:
    from emlab.evals.codeeval import load_tasks

    tasks, _ = load_tasks(exp.codeeval.tasks)
    n = min(len(tasks), exp.codeeval.max_tasks or len(tasks))
    return n * exp.codeeval.samples_per_task


def _dataset_chars(ref: DatasetRef) -> tuple[int, int] | None:
    """(characters, rows) of the condition's training data (generated data is estimated from
    64 rows); None when the dataset is not available here."""
    from emlab.data.codegen import generate
    from emlab.data.registry import DatasetError, load_dataset

    def chars(rows):
        return sum(len(m["content"]) for r in rows for m in r["messages"])

    if ref.generate:
        total, n = chars(generate(ref.generate, 64, ref.seed)) * ref.n // 64, ref.n
    else:
        try:
            rows = load_dataset(ref.name, ref.path)
        except DatasetError:
            return None
        total, n = chars(rows), len(rows)
    for step in ref.transforms:  # interleaving adds rows
        if step.dilute_with is not None:
            total, n = int(total / step.dilute_with.share), int(n / step.dilute_with.share)
    return total, n

