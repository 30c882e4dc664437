"""`emlab sample`, `emlab serve`, `emlab export`: generation into the store, serving, export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from emlab.cli.app import app
from emlab.cli.common import (adapter_name, adapter_option, console, fail, model_command, model_option, one_adapter,
                              parse_adapters, project_option, sample_option, spec_or_fail, user_errors)


@model_command(app)
def sample(
    suite: str = typer.Option("builtin", help="builtin, a registered suite name, or a YAML path"),
    model: str = model_option(),
    adapter: Optional[list[str]] = adapter_option("A local LoRA adapter (hf, vllm backends) as NAME=DIR or DIR."),
    served_model: Optional[str] = typer.Option(None, help="A model name served by the endpoint (openai backend): "
                                                          "an adapter behind `emlab serve`, an API finetune."),
    backend: str = sample_option("backend"), base_url: Optional[str] = sample_option("base_url"),
    api_key_env: str = sample_option("api_key_env"),
    samples_per_paraphrase: Optional[int] = sample_option("samples_per_paraphrase"),
    temperature: float = sample_option("temperature"), top_p: float = sample_option("top_p"),
    max_tokens: int = sample_option("max_tokens"), seed: int = sample_option("seed"),
    batch_size: int = sample_option("batch_size"), dtype: str = sample_option("dtype"),
    project: Path = project_option(),
) -> None:
    """Sample a question suite into the run store; a rerun generates only what is missing."""
    from emlab.data.questions import load_suite
    from emlab.generate.sample import sample_stage
    from emlab.specs import SampleSpec, Variant
    from emlab.store import Store

    if adapter and backend == "openai":
        fail("the openai backend addresses models by name: use --served-model NAME (e.g. an adapter served by "
             "`emlab serve --adapter NAME=DIR`), not --adapter DIR")
    if served_model is not None and backend != "openai":
        fail("--served-model names a model on an OpenAI-compatible server: use it with --backend openai")
    adapter = one_adapter(adapter)
    spec = spec_or_fail(SampleSpec, suites=[suite], samples_per_paraphrase=samples_per_paraphrase,
                        max_tokens=max_tokens,
                        temperature=temperature, top_p=top_p, seed=seed, backend=backend, base_url=base_url,
                        api_key_env=api_key_env, batch_size=batch_size, dtype=dtype)
    if model.startswith("zoo:"):  # a public model organism: its base model and downloaded adapter
        from emlab.models.zoo import resolve

        if adapter is not None:
            fail("--model zoo:NAME brings its own adapter: drop --adapter")
        model, path = resolve(model)
        adapter = (adapter_name(str(path)), str(path))
    try:
        variant = Variant(label=adapter[0] if adapter else served_model or "base",
                          adapter_path=adapter[1] if adapter else None, served_model=served_model)
    except ValueError as exc:
        fail(str(exc).splitlines()[-1].removeprefix("  Value error, "))
    loaded = load_suite(suite)
    with Store(project) as store:
        summary = sample_stage(store, spec, model, [variant], [loaded], console)
    if summary["missing"] == 0:
        console.print(f"{summary['planned']} samples already in {project}; nothing to generate")


@model_command(app)
def serve(
    model: str = model_option(),
    adapter: Optional[list[str]] = adapter_option("A LoRA adapter to serve as NAME=DIR (or DIR); clients ask for "
                                                  "it by NAME. Repeatable."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only)."),
    port: int = typer.Option(8008, min=1, max=65535, help="Port to listen on."),
    api_key: Optional[str] = typer.Option(None, envvar="EMLAB_SERVE_API_KEY",
                                          help="Require this bearer token (set it when binding beyond 127.0.0.1)."),
) -> None:
    """Serve the model (and adapters) through an OpenAI-compatible API."""
    from emlab.serve import serve as run_server

    adapters = parse_adapters(adapter)
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
           project: Path = project_option()) -> None:
    """Export a table of the run store to Parquet, CSV or JSONL."""
    from emlab.store import open_existing

    fmt = fmt or out.suffix.lstrip(".")
    with open_existing(project) as store:
        path = store.export(out, fmt, table, force=force)
    console.print(f"wrote {path}")
