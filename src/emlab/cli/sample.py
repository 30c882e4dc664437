"""`emlab sample`, `emlab serve`, `emlab export`: generation into the store, serving, export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emlab.cli import app
from emlab.cli.common import console, fail, spec_or_fail, user_errors


@app.command()
@user_errors
def sample(
    suite: str = typer.Option("builtin", help="builtin, a registered suite name, or a YAML path"),
    model: str = typer.Option("smollm2-135m-instruct"),
    adapter: Optional[Path] = typer.Option(None, help="Local LoRA adapter directory (hf, vllm backends).",
                                           file_okay=False),
    served_model: Optional[str] = typer.Option(None, help="A model name served by the endpoint (openai backend): "
                                                          "an adapter behind `emlab serve`, an API finetune."),
    backend: str = typer.Option("hf", help="hf | vllm | openai | scripted (a fake for dry runs)"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (openai backend)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key."),
    n: Optional[int] = typer.Option(None, "--n", help="Samples per paraphrase (default: each question's own)."),
    temperature: float = typer.Option(1.0), top_p: float = typer.Option(1.0),
    max_tokens: int = typer.Option(600), seed: int = typer.Option(0),
    batch_size: int = typer.Option(192, help="Samples generated and committed per batch; on the hf backend also "
                                             "the most sequences decoded at once."),
    dtype: str = typer.Option("float32", help="hf backend weights: float32 | bfloat16 | auto (bfloat16 on AMX "
                                              "CPUs and bf16 GPUs)"),
    project: Path = typer.Option(Path("."), help="Project directory holding emlab.db.", file_okay=False),
) -> None:
    """Sample a question suite into the run store; a rerun generates only what is missing."""
    from emlab.data.questions import load_suite
    from emlab.generate.sample import sample_stage
    from emlab.specs import SampleSpec, Variant
    from emlab.store import Store

    if adapter is not None and backend == "openai":
        fail("the openai backend addresses models by name: use --served-model NAME (e.g. an adapter served by "
             "`emlab serve --adapter NAME=DIR`), not --adapter DIR")
    if served_model is not None and backend != "openai":
        fail("--served-model names a model on an OpenAI-compatible server: use it with --backend openai")
    spec = spec_or_fail(SampleSpec, suites=[suite], samples_per_paraphrase=n, max_tokens=max_tokens,
                        temperature=temperature, top_p=top_p, seed=seed, backend=backend, base_url=base_url,
                        api_key_env=api_key_env, batch_size=batch_size, dtype=dtype)
    if model.startswith("zoo:"):  # a public model organism: its base model and downloaded adapter
        from emlab.models.zoo import resolve

        if adapter is not None:
            fail("--model zoo:NAME brings its own adapter: drop --adapter")
        model, adapter = resolve(model)
    try:
        variant = Variant(label="base", adapter_path=str(adapter) if adapter else None, served_model=served_model)
    except ValueError as exc:
        fail(str(exc).splitlines()[-1].removeprefix("  Value error, "))
    loaded = load_suite(suite)
    with Store(project) as store:
        summary = sample_stage(store, spec, model, [variant], [loaded], console)
    if summary["missing"] == 0:
        console.print(f"{summary['planned']} samples already in {project}; nothing to generate")


@app.command()
@user_errors
def serve(
    model: str = typer.Option("smollm2-135m-instruct"),
    adapter: Optional[list[str]] = typer.Option(None, help="NAME=PATH of a LoRA adapter to serve (repeatable)."),
    host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8008, min=1, max=65535),
    api_key: Optional[str] = typer.Option(None, envvar="EMLAB_SERVE_API_KEY",
                                          help="Require this bearer token (set it when binding beyond 127.0.0.1)."),
) -> None:
    """Serve the model (and adapters) through an OpenAI-compatible API."""
    from emlab.serve import serve as run_server
    from emlab.specs import Variant

    adapters = {}
    for spec in adapter or []:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            fail(f"--adapter expects NAME=PATH, got '{spec}'")
        try:
            Variant(adapter_path=path)
        except ValueError:
            fail(f"--adapter {name}: {path} holds no adapter weights (*.safetensors)")
        adapters[name] = path
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print("[yellow]warning:[/] serving beyond 127.0.0.1 without --api-key: anyone who can reach "
                      f"{host}:{port} can use the model")
    console.print(f"serving {model} {list(adapters)} on http://{host}:{port}/v1")
    run_server(model, adapters, host, port, api_key=api_key)


@app.command()
@user_errors
def export(out: Path, table: str = typer.Option("samples", help="samples | judgments | judges | runs | artefacts"),
           fmt: Optional[str] = typer.Option(None, "--format", help="parquet | csv | jsonl (default: from suffix)"),
           force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
           project: Path = typer.Option(Path("."), file_okay=False)) -> None:
    """Export a table of the run store to Parquet, CSV or JSONL."""
    from emlab.store import open_existing

    fmt = fmt or out.suffix.lstrip(".")
    with open_existing(project) as store:
        path = store.export(out, fmt, table, force=force)
    console.print(f"wrote {path}")
