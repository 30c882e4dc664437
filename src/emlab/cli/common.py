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


def user_errors(fn):
    """Turn expected user errors into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))

    return wrapper


JUDGE_HELP = "mini | local | logprob (paper's judge over an OpenAI-compatible API) | sampled (API without logprobs)"


def judge_spec(name: str, model: Optional[str], base_url: Optional[str], api_key_env: str):
    """A JudgeSpec from flags (the same type an experiment's `judges:` entries are)."""
    from pydantic import ValidationError

    from emlab.specs import JudgeSpec

    try:
        return JudgeSpec(name=name, model=model, base_url=base_url, api_key_env=api_key_env)
    except ValidationError:
        fail(f"unknown judge '{name}' ({JUDGE_HELP})")


def make_judge(name: str, model: Optional[str], base_url: Optional[str], api_key_env: str):
    from emlab.judge.base import build_judge

    return build_judge(judge_spec(name, model, base_url, api_key_env))


def spec_or_fail(cls, **values):
    """Build a typed spec from flags; a bad value becomes one line naming the flag."""
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        fail(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}")
