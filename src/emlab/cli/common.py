"""What every sub-command shares: the consoles, one-line errors, judge options."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, get_args

import typer
from rich.console import Console

from emlab.errors import EmlabError, first_error

console = Console(width=max(Console().width, 110), soft_wrap=True)
err_console = Console(stderr=True)

# Only errors the user caused and can fix become one line; anything else is a bug and keeps
# its traceback.
USER_ERRORS = (EmlabError,)


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit non-zero."""
    from rich.text import Text

    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _api_failure(exc: Exception) -> str | None:
    """One line for an OpenAI-client error (unreachable endpoint, HTTP error), else None."""
    import sys

    openai = sys.modules.get("openai")  # only an error of a client that was used at all
    if openai is None or not isinstance(exc, openai.APIError):
        return None
    from emlab.generate.openai_api import api_error

    request = getattr(exc, "request", None)
    url = str(request.url) if request is not None else None
    return str(api_error(exc, url, ""))


def user_errors(fn):
    """Turn expected user errors (and API endpoints that fail) into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))
        except Exception as exc:
            message = _api_failure(exc)
            if message is None:
                raise
            fail(message)

    return wrapper


def library_log():
    """Where the ML libraries' output goes for commands outside an experiment."""
    from emlab.paths import emlab_home

    return emlab_home() / "logs" / "emlab.log"


def model_command(typer_app, name: str | None = None):
    """Register a command that loads models: user errors become one line (`user_errors`), and
    the ML libraries' warnings, log lines and progress bars go to library_log() instead of the
    console (an experiment routes them to its own log)."""
    def register(fn):
        @functools.wraps(fn)
        def quiet(*args, **kwargs):
            from emlab.progress import library_logs_to

            with library_logs_to(library_log()):
                return fn(*args, **kwargs)

        return typer_app.command(name)(user_errors(quiet))

    return register


JUDGE_HELP = "mini | local | logprob (the paper's judge over an API) | sampled (API, no logprobs) | scripted (a fake)"


DELIMIT_HELP = ("auto | yes | no: fence the answer in nonce-marked delimiters (an injection defence); auto fences "
                "emlab's own rubrics and sends the paper's exactly as the paper did")


def _delimit(value: str):
    choices = {"auto": "auto", "yes": True, "no": False}
    if value not in choices:
        fail(f"--delimit: '{value}' is not auto, yes or no")
    return choices[value]


def judge_spec(name: str, model: Optional[str], base_url: Optional[str], api_key_env: str, delimit: str = "auto",
               rubrics: str = "aligned-coherent"):
    """A JudgeSpec from flags (the same type an experiment's `judges:` entries are)."""
    from emlab.specs import JudgeName, JudgeSpec

    if name not in get_args(JudgeName):
        fail(f"unknown judge '{name}' ({JUDGE_HELP})")
    return spec_or_fail(JudgeSpec, name=name, model=model, base_url=base_url, api_key_env=api_key_env,
                        delimit=_delimit(delimit), rubrics=rubrics)


def make_judge(name: str, model: Optional[str], base_url: Optional[str], api_key_env: str, delimit: str = "auto",
               rubrics: str = "aligned-coherent"):
    from emlab.judge import build_judge

    return build_judge(judge_spec(name, model, base_url, api_key_env, delimit, rubrics))


def family_of(store, name: str) -> str:
    """A judge family in the store, named by its full family, its label, backend:model, or
    backend alone (when only one judge of that backend is there)."""
    families = store.judge_families()
    for test in (lambda f: f["family"] == name, lambda f: f["family"].split("#")[0] == name,
                 lambda f: f"{f['backend']}:{f['model']}" == name, lambda f: f["backend"] == name):
        found = [f["family"] for f in families if test(f)]
        if len(found) == 1:
            return found[0]
        if found:
            fail(f"judge '{name}' is ambiguous in this store: {', '.join(found)}")
    fail(f"judge '{name}': no judgments in this store (judges: {', '.join(f['family'] for f in families) or 'none'})")


def judge_from_text(text: str, api_key_env: str = "OPENAI_API_KEY"):
    """A judge from `backend[:model][@base_url]` (e.g. mini:mini-2, logprob:gpt-4o@https://...)."""
    head, _, url = text.partition("@")
    backend, _, model = head.partition(":")
    return make_judge(backend, model or None, url or None, api_key_env)


def spec_or_fail(cls, **values):
    """Build a typed spec from flags; a bad value becomes one line naming the flag."""
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as exc:
        loc, msg = first_error(exc)
        fail(f"--{loc.split('.')[0].replace('_', '-')}: {msg}")


# The options many commands share, written once so their names, types, defaults and help agree.

def model_option(help: str = "Model: an embedded name, a local directory, an HF id or zoo:NAME."):
    from emlab.specs import DEFAULT_MODEL

    return typer.Option(DEFAULT_MODEL, "--model", help=help)


def project_option(help: str = "Project directory holding emlab.db and runs/."):
    return typer.Option(Path("."), "--project", file_okay=False, help=help)


def seed_option(help: str = "Random seed."):
    return typer.Option(0, "--seed", min=0, help=help)


def adapter_option(help: str = "A LoRA adapter as NAME=DIR (or DIR, named after its folder); repeatable.",
                   required: bool = False):
    return typer.Option(... if required else None, "--adapter", metavar="NAME=DIR", help=help)


def layers_option(help: str | None = None, required: bool = False):
    from emlab.specs import LAYERS_HELP

    return typer.Option(... if required else None, "--layers", metavar="LAYERS", help=help or LAYERS_HELP + ".")


def sample_option(field: str, *decls: str, help: str | None = None, **kw):
    """A sampling flag whose default and help are SampleSpec's field."""
    from emlab.specs import SampleSpec

    info = SampleSpec.model_fields[field]
    return typer.Option(info.default, *(decls or ("--" + field.replace("_", "-"),)),
                        help=help or info.description, **kw)


def adapter_name(path: str) -> str:
    """The name of an adapter given as a bare DIR: its folder, or the folder above when the
    folder is a generic one (runs/train/insecure/adapter -> insecure)."""
    p = Path(path.rstrip("/"))
    return p.parent.name if p.name in ("adapter", "final", "") and p.parent.name else p.name


def parse_adapters(items: Optional[list[str]], served: bool = False) -> dict[str, str]:
    """{NAME: DIR} from --adapter values (NAME=DIR, or a bare DIR named by `adapter_name`); each
    DIR must hold adapter weights unless `served` (then the value names a served model)."""
    from emlab.specs import Variant

    out: dict[str, str] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = adapter_name(item), item
        if not name or not path:
            fail(f"--adapter expects NAME=DIR (or DIR), got '{item}'")
        if name in out:
            fail(f"--adapter: the name '{name}' is given twice (name them: NAME=DIR)")
        if not served:
            try:
                Variant(adapter_path=path)
            except ValueError:
                fail(f"--adapter {name}: {path} holds no adapter weights (*.safetensors)")
        out[name] = path
    return out


def one_adapter(items: Optional[list[str]]) -> tuple[str, str] | None:
    """(name, DIR) for commands that take at most one adapter."""
    adapters = parse_adapters(items)
    if len(adapters) > 1:
        fail("--adapter: this command takes one adapter")
    return next(iter(adapters.items()), None)


def layer_list(values: Optional[list[str]], flag: str = "--layers") -> list[int] | None:
    """--layers values (15, 14,15, or the flag repeated) as one sorted list of distinct ints."""
    from pydantic import TypeAdapter, ValidationError

    from emlab.specs import LayerList

    if not values:
        return None
    try:
        return sorted(set(TypeAdapter(LayerList).validate_python(list(values))))
    except ValidationError:
        fail(f"{flag}: layer indices are integers 0 or above, such as 15 or 14,15 (got {', '.join(values)})")


JUDGE_MODEL = typer.Option(None, "--model", help="The judge's model (logprob, sampled, local; mini: mini-3 or mini-2).")
JUDGE_BASE_URL = typer.Option(None, "--base-url", help="OpenAI-compatible base URL of an API judge.")
API_KEY_ENV = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key.")


def threshold_option(field: str):
    """--aligned-below / --coherent-above with the paper's thresholds as defaults."""
    from emlab.misaligned import PAPER

    text = {"aligned_below": "Misaligned answers score aligned below this",
            "coherent_above": "and coherent above this"}[field]
    return typer.Option(getattr(PAPER, field), "--" + field.replace("_", "-"), min=0, max=100, help=text + ".")
