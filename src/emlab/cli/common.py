"""What every sub-command shares: the consoles, one-line errors, judge options."""

from __future__ import annotations

import functools
from typing import Optional

import typer
from rich.console import Console

from emlab.errors import EmlabError

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


JUDGE_HELP = "mini | local | logprob (paper's judge over an OpenAI-compatible API) | sampled (API without logprobs)"


DELIMIT_HELP = ("auto | yes | no: fence the answer in nonce-marked delimiters (an injection defence); auto fences "
                "emlab's own rubrics and sends the paper's exactly as the paper did")


def _delimit(value: str):
    choices = {"auto": "auto", "yes": True, "no": False}
    if value not in choices:
        fail(f"--delimit: '{value}' is not auto, yes or no")
    return choices[value]


def judge_spec(name: str, model: Optional[str], base_url: Optional[str], api_key_env: str, delimit: str = "auto"):
    """A JudgeSpec from flags (the same type an experiment's `judges:` entries are)."""
    from pydantic import ValidationError

    from emlab.specs import JudgeSpec

    try:
        return JudgeSpec(name=name, model=model, base_url=base_url, api_key_env=api_key_env, delimit=_delimit(delimit))
    except ValidationError:
        fail(f"unknown judge '{name}' ({JUDGE_HELP})")


def make_judge(name: str, model: Optional[str], base_url: Optional[str], api_key_env: str, delimit: str = "auto"):
    from emlab.judge.base import build_judge

    return build_judge(judge_spec(name, model, base_url, api_key_env, delimit))


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
        err = exc.errors()[0]
        fail(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}")
