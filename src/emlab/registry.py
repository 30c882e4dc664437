"""Backends by name: a registry maps a name to a `module:attribute` reference, imported only
when that backend is built, so naming one backend never imports another's libraries."""

from __future__ import annotations

from importlib import import_module

from emlab.errors import ConfigError


def resolve(registry: dict[str, str], name: str, kind: str):
    """The attribute `registry[name]` refers to; a one-line error for a name it does not hold."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} '{name}' ({', '.join(registry)})")
    module, _, attribute = registry[name].partition(":")
    return getattr(import_module(module), attribute)
