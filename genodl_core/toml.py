"""TOML parsing on every supported Python: the standard library's ``tomllib`` (3.11 and later),
else ``tomli``, the package it came from (same API). Every TOML file genodl reads is parsed
through this module."""

from __future__ import annotations

try:
    import tomllib as _toml
except ImportError:  # Python 3.10
    import tomli as _toml

#: ``loads(text) -> dict``: parse a TOML document.
loads = _toml.loads
#: Raised by :func:`loads` for text that is not valid TOML (a ``ValueError``).
TOMLDecodeError = _toml.TOMLDecodeError

__all__ = ["loads", "TOMLDecodeError"]
