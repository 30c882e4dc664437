"""The one exception type users see as a one-line message.

Every error that a user can cause and fix (a bad file, an unknown name, an unreachable
server) derives from `EmlabError`; the command line prints its message on one line and
exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EmlabError(Exception):
    """A problem with the user's input or environment; the message is one line for the user."""


class ConfigError(EmlabError):
    """An invalid option, config file or experiment."""


def first_error(exc) -> tuple[str, str]:
    """(dotted field location, message) of a pydantic ValidationError's first error, worded
    for one line: "unknown field" for a field the schema lacks, validators' own messages
    without pydantic's "Value error, " prefix."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
    return loc, msg
