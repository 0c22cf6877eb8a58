"""Explicit registries of the pluggable parts: data sources, noise steps and models.

Each entry couples a callable with the frozen dataclass of its parameters, so that a spec can be
validated completely (names, types, ranges) before any data is read or any job submitted.
Unknown names list the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from genodl_core.errors import SpecError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, implementation, parameter class and metadata."""

    name: str
    fn: Callable[..., Any]
    params: type
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """A named collection of components filled by the :meth:`register` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, params: type, **meta: Any) -> Callable[[F], F]:
        """Register the decorated callable under ``name`` with its parameter dataclass."""

        def deco(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, fn, params, dict(meta))
            return fn

        return deco

    def get(self, name: str, field: str | None = None) -> Entry:
        """Return the entry called ``name``; a :class:`SpecError` lists the known names."""
        try:
            return self._entries[name]
        except KeyError:
            raise SpecError(field or self.kind, name, list(self._entries),
                            reason=f"unknown {self.kind}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())


#: Data sources: ``fn(params) -> Dataset`` (raw values; the trial runner scales them).
DATASETS: Registry = Registry("data source")
#: Noise steps: ``fn(arrays, params, rng) -> (TrainArrays, record)``.
NOISES: Registry = Registry("noise kind")
#: Models: ``fn(context) -> FitOutcome``; meta ``task`` is 'classification' or 'regression'.
MODELS: Registry = Registry("model")
