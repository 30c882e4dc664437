"""Running an experiment, top to bottom: train -> sample -> (code evaluation, probes,
capability) -> judge -> likelihood -> dynamics -> record. Each stage is the function the
CLI's sub-command calls, reading and writing the run store, so a rerun resumes.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from emlab import progress as show
from emlab.accel import enabled as accel_enabled
from emlab.experiment.plan import check_resources, likelihood_data_available
from emlab.experiment.spec import Condition, Experiment
from emlab.files import inside
from emlab.provenance import git_revision, scrub_url, scrub_urls, versions
from emlab.records import CodeEvalRecord, ExperimentRecord, JudgeRecord, VariantRecord
from emlab.specs import Variant
from emlab.store import Selection


class _Laps:
    """Wall seconds per stage: calling it with a stage's name closes that stage."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.time()

    def __call__(self, stage: str) -> None:
        now = time.time()
        self.seconds[stage] = round(now - self._last, 1)
        self._last = now


def run_experiment(exp: Experiment, console: Console | None, project: Path | None = None, executor=None) -> Path:
    """Execute (or resume) the experiment; returns the run record's path. Library warnings
    go to `<project>/logs/<name>.log`, not the console. `executor` (emlab.executor): where
    the training, sampling and judging cells run (default: here, in sequence)."""
    from emlab.accel import switched

    check_resources(exp)
    project = Path(project or exp.project)
    with show.library_logs_to(inside(project, "logs", f"{exp.name}.log")), switched(exp.accel and accel_enabled()):
        return _run(exp, console, project, executor)


def _run(exp: Experiment, console: Console | None, project: Path, executor=None) -> Path:
    from emlab.data.questions import load_suite
    from emlab.generate.sample import lazy_generator, sample_stage
    from emlab.judge import build_judge
    from emlab.models.registry import DEFAULT_MODEL, pull
    from emlab.store import Store

    start, lap = time.time(), _Laps()
    if exp.model == DEFAULT_MODEL and exp.sample.backend != "scripted":
        pull(DEFAULT_MODEL)
    judges = [build_judge(j) for j in exp.judges]  # built before any work: a bad judge fails now
    config = _scrubbed_config(exp)
    with Store(project) as store:
        run_id = store.begin_run("experiment", config, exp.seeds)

        # 1. datasets and training (mitigations resolve to transforms and training fields)
        variants, mitigations = train_conditions(exp, store, project, console, executor)
        model_variants = _sampled_variants(variants, several_seeds=len(exp.seeds) > 1)
        lap("train")

        # 2. sampling: the suites, then coding tasks, probes and the capability check (one generator)
        suites = [load_suite(s) for s in exp.sample.suites]
        generator = lazy_generator(exp.sample, exp.model)
        sampled = sample_stage(store, exp.sample, exp.model, model_variants, suites, console, generator,
                               executor=executor)
        lap("sample")
        code, probes, probed, capability = _extra_samples(exp, store, variants, model_variants, suites, console,
                                                          generator, executor, lap)
        generator.cache_clear()  # free the model before judging

        # 3. judging: every variant's suite answers and probe answers, by every judge
        _judge(exp, store, judges, model_variants, suites, probed, probes, sampled["gen_hash"], console, executor)
        lap("judge")

        # 4. the judge-free likelihood measure, and training dynamics over kept checkpoints
        likelihood = _likelihood(exp, store, model_variants, suites, console)
        lap("likelihood")
        dynamics = _dynamics(exp, store, project, variants, model_variants, suites, sampled["gen_hash"], console)
        if dynamics is not None:
            lap("dynamics")

        # 5. the record every later stage reads
        record = ExperimentRecord(
            name=exp.name, run_id=run_id, config=config, variants=variants, gen_hash=sampled["gen_hash"],
            config_yaml=scrub_urls(exp._source) if exp._source else None,
            suites=[{"name": s.name, "sha256": s.sha256} for s in suites],
            judges=[JudgeRecord(spec=spec, family=j.identity.family, label=j.identity.label)
                    for spec, j in zip(config["judges"], judges)],  # specs with URLs already scrubbed
            versions=versions(), git_revision=git_revision(), seeds=exp.seeds,
            wall_seconds_last_run=round(time.time() - start, 1), codeeval=code, likelihood=likelihood,
            sanity_gate=exp.sanity_gate, stages={"sample": sampled}, dynamics=dynamics,
            stage_seconds={k: v for k, v in lap.seconds.items() if v >= 0.05},
            mitigations=None if not (mitigations or probes or capability) else {
                "conditions": mitigations, "unmitigated": exp.unmitigated,
                "probes": [{"suite": s.name, "sha256": s.sha256, "source": s.source} for s in probes],
                "probed": [v.adapter_id for v in probed], "capability": capability})
        record_path = inside(project, "experiments", f"{exp.name}.json")
        record.write(record_path)
        store.end_run(run_id, {"record": str(record_path), "wall_seconds": record.wall_seconds_last_run})
    return record_path


def _scrubbed_config(exp: Experiment) -> dict:
    """The resolved configuration as the record keeps it: endpoint URLs without credentials."""
    config = exp.model_dump()
    config["sample"]["base_url"] = scrub_url(exp.sample.base_url)
    for j in config["judges"]:
        j["base_url"] = scrub_url(j["base_url"])
    return config


def _sampled_variants(variants: list[VariantRecord], several_seeds: bool) -> list[Variant]:
    """What the samplers see of each variant (labels carry the seed when there are several)."""
    return [Variant(label=v.label + (f"-s{v.seed}" if several_seeds and v.seed is not None else ""),
                    adapter_path=v.adapter_path, served_model=v.served_model,
                    context=tuple(map(tuple, v.context or ()))) for v in variants]


def _extra_samples(exp: Experiment, store, variants, model_variants, suites, console, generator, executor, lap):
    """The coding tasks, conditional-misalignment probes and the capability check, on the
    suites' generator: (code record, probe suites, probed variants, capability summary)."""
    code, probes, probed, capability = None, [], [], None
    if exp.codeeval is not None:
        from emlab.evals.codeeval import codeeval_stage

        code = CodeEvalRecord(**codeeval_stage(store, exp.codeeval, exp.sample, exp.model, model_variants,
                                               console, generator, executor=executor))
        lap("codeeval")
    if exp.probes is not None:
        from emlab.probe.stages import probe_stage

        early_stop = {c.mitigation.early_stop.source for c in exp.conditions if c.mitigation and c.mitigation.early_stop}
        probes, probed = probe_stage(store, exp.probes.forms, exp.probes.suites, exp.probes.samples_per_paraphrase,
                                     exp.sample, exp.model, variants, model_variants, suites, early_stop, console,
                                     generator, executor)
    if exp.capability is not None:
        from emlab.evals.capability import capability_stage

        capability = capability_stage(store, exp.capability, exp.sample, exp.model, model_variants, console,
                                      generator, executor)
    lap("probes and capability")
    return code, probes, probed, capability


def _judge(exp: Experiment, store, judges, model_variants, suites, probed, probes, gen_hash: str, console,
           executor) -> None:
    from emlab.judge.run import judge_stage

    wheres: list[Selection] = [{"adapter": v.adapter_id, "suite": s.name, "gen_hash": gen_hash, "model": exp.model}
                               for v in model_variants for s in suites]
    wheres += [{"adapter": v.adapter_id, "suite": s.name, "gen_hash": gen_hash, "model": exp.model}
               for v in probed for s in probes]
    for spec, judge in zip(exp.judges, judges):
        judge_stage(store, judge, wheres, spec.metrics(), console=console, executor=executor, spec=spec)


def _likelihood(exp: Experiment, store, model_variants, suites, console) -> dict | None:
    if exp.likelihood is None:
        return None
    if not likelihood_data_available():
        show.summary(console, "likelihood", "skipped: the public judged answers are not available "
                                            "(set EMLAB_DATA_DIR to a folder holding judged/)")
        return None
    from emlab.probe.likelihood import likelihood_stage

    qids = [q.id for s in suites for q in s.questions]
    return likelihood_stage(store, exp.model, model_variants, qids, exp.likelihood.per_class, exp.likelihood.seed,
                            console, exp.likelihood.dtype)


def _dynamics(exp: Experiment, store, project: Path, variants, model_variants, suites, gen_hash: str,
              console) -> dict | None:
    """Training dynamics when the experiment keeps checkpoints (re-aligned conditions left
    out: their curve starts from another adapter)."""
    realigned = {c.name for c in exp.conditions if c.mitigation is not None and c.mitigation.realign is not None}
    if exp.checkpoints is None and not any(v.step is not None for v in variants if v.condition not in realigned):
        return None
    from emlab.probe.stages import dynamics_stage

    return dynamics_stage(store, project, exp.model, variants, model_variants, suites, gen_hash, exp.projection,
                          exp.checkpoints, realigned, console)


def train_conditions(exp: Experiment, store, project: Path, console: Console | None, executor=None
                     ) -> tuple[list[VariantRecord], dict]:
    """Train every condition and seed (or reuse); returns the variants to evaluate (final
    adapters, untouched models, kept checkpoints) and each condition's resolved mitigation.
    Two waves: every training that starts from the base model, then re-alignments (which
    continue a first-wave adapter); the trainings of a wave are an executor's concurrent cells."""
    from emlab.mitigate import resolved
    from emlab.train.trainer import train_stages

    trained: dict[tuple[str, int], tuple] = {}  # (condition, seed) -> (TrainResult, checkpoints wanted)
    extras: dict[str, dict] = {}
    for wave in (1, 2):
        jobs = _training_jobs(exp, wave, trained, extras, project, console)
        results = train_stages(store, [cfg for _, cfg, _ in jobs], inside(project, "runs", "train"), console,
                               executor, backend=exp.train.backend)
        trained.update({key: (result, which) for (key, _, which), result in zip(jobs, results)})
    variants: list[VariantRecord] = []
    mitigations: dict[str, dict] = {}
    for cond in exp.conditions:
        m = cond.mitigation
        if m is not None:
            mitigations[cond.name] = resolved(m, **extras.get(cond.name, {}))
        if m is not None and m.early_stop is not None:  # a choice among `from`'s checkpoints, made in the report
            continue
        variants += _condition_variants(exp, cond, trained, project)
    return variants, mitigations


def _training_jobs(exp: Experiment, wave: int, trained: dict, extras: dict, project: Path, console) -> list[tuple]:
    """((condition, seed), TrainConfig, checkpoints wanted) for each training of `wave`:
    1 = from the base model, 2 = re-alignments of a first-wave adapter (`extras` gets what
    each re-alignment started from)."""
    from emlab.data.transform import materialise
    from emlab.mitigate import mitigated_dataset, realign_plan, train_overrides

    jobs = []
    for cond in exp.conditions:
        m = cond.mitigation
        if not cond.trained or (wave == 2) != (m is not None and m.realign is not None):
            continue
        which = cond.checkpoints if cond.checkpoints is not None else exp.checkpoints
        for seed in exp.seeds:
            preset = exp.train_config("insecure", seed)
            if wave == 2:
                batch = preset.per_device_batch_size * preset.gradient_accumulation_steps
                ref, which, fields = realign_plan(m.realign, batch)
                source = trained[(m.realign.source, seed)][0]
                fields["init_adapter"] = str(source.adapter_dir)
                extras[cond.name] = {"from_adapter": Variant(adapter_path=str(source.adapter_dir)).adapter_id,
                                     "steps": which, "batch": batch}
            else:
                ref, fields = mitigated_dataset(cond.dataset, m), train_overrides(m, preset.max_rows)
            data_path = materialise(ref, inside(project, "data"))
            show.summary(console, "train", f"{cond.name} seed {seed} ({exp.train.preset}, {data_path.name})")
            jobs.append(((cond.name, seed), exp.train_config(str(data_path), seed, **fields), which))
    return jobs


def _condition_variants(exp: Experiment, cond: Condition, trained: dict, project: Path) -> list[VariantRecord]:
    """A condition's variants to evaluate: a zoo organism, an untouched or served model, or
    each seed's final adapter and kept checkpoints."""
    from emlab.probe.dynamics import kept_checkpoints

    if cond.zoo is not None:
        from emlab.models.zoo import adapter_dir

        path = str(adapter_dir(cond.zoo))
        return [VariantRecord(condition=cond.name, seed=None, adapter_path=path,
                              adapter_id=Variant(adapter_path=path).adapter_id, dataset={"zoo": cond.zoo})]
    if not cond.trained:
        return [_untrained_variant(exp, cond, project)]
    variants = []
    for seed in exp.seeds:
        result, which = trained[(cond.name, seed)]
        kept = kept_checkpoints(result.run_dir, which) if which is not None else []
        for step, weights in [(None, result.adapter_dir), *kept]:
            variants.append(VariantRecord(
                condition=cond.name, seed=seed, adapter_path=str(weights),
                adapter_id=Variant(adapter_path=str(weights)).adapter_id, train_run=str(result.run_dir),
                dataset=result.record["dataset"], step=step))
    return variants


def _untrained_variant(exp: Experiment, cond: Condition, project: Path) -> VariantRecord:
    """An untouched or served model, with its in-context turns when the condition has them."""
    context, described = (), None
    if cond.in_context is not None:
        from emlab.generate.in_context import build_context

        reserve = exp.sample.max_tokens + 512  # the answer and the longest question
        context, described = build_context(cond.in_context, cond.in_context.k, exp.model, exp.sample.backend,
                                           inside(project, "data"), reserve)
    variant = Variant(served_model=cond.served, context=context)
    return VariantRecord(condition=cond.name, seed=None, served_model=cond.served, adapter_id=variant.adapter_id,
                         in_context=described, context=list(context) or None)
