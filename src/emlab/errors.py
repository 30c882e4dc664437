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
