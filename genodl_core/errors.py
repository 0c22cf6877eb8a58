"""Exception hierarchy of genodl.

Every error a user can cause names the offending value and what would have been accepted, so
that a failed trial record or a failed ``genodl plan`` tells the scientist how to fix the spec
without reading the source.
"""

from __future__ import annotations

from typing import Any


class GenodlError(Exception):
    """Base class of every error raised on purpose by genodl."""

    #: Deterministic errors fail the same way on every attempt; the workflow never retries them.
    deterministic: bool = True


class SpecError(GenodlError, ValueError):
    """A trial or sweep specification is invalid.

    Parameters
    ----------
    field
        Dotted path of the offending field, e.g. ``noise[0].fraction``.
    value
        The value that was given.
    allowed
        What would have been accepted (a list of names, a range, a type).
    reason
        Optional short explanation placed before the allowed values.
    """

    def __init__(self, field: str, value: Any, allowed: Any, reason: str = "invalid value"):
        self.field = field
        self.value = value
        self.allowed = allowed
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}; allowed: {_fmt_allowed(allowed)}")


class DataError(GenodlError):
    """Input data is missing, malformed or inconsistent (names the file and the position)."""


class TrialTimeout(GenodlError):
    """A trial ran past its ``train.timeout_s`` budget (recorded as failed)."""


class TrialInterrupted(GenodlError):
    """Training stopped at an epoch end because the run was asked to stop (SIGINT, SIGTERM).

    Not a failure of the trial: its record says interrupted, and a later run continues it from
    the checkpoint written at that epoch.
    """

    deterministic = False


class InfrastructureError(GenodlError):
    """A failure of the machinery around a trial (lost worker, node, walltime); retried."""

    deterministic = False


def _fmt_allowed(allowed: Any) -> str:
    if isinstance(allowed, (list, tuple, set, frozenset)):
        return "one of " + repr(sorted(allowed, key=str))
    return str(allowed)
