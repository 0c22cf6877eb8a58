"""Explicit registries of the pluggable parts: data sources, noise steps and models.

Each entry couples a callable with the frozen dataclass of its parameters, so that a spec can be
validated completely (names, types, ranges) before any data is read or any job submitted.
Unknown names list the known ones.

The modules that register components sit above this one (they import it), and so does
:mod:`genodl_core.catalog`, which imports them all. A registry therefore names the catalogue
instead of importing it, and imports it on the first lookup that needs it: getting a name not
registered yet, or listing the entries. Whoever validates a spec finds every component, and
importing this module (or the spec module) stays light and free of import cycles.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from genodl_core.errors import SpecError

F = TypeVar("F", bound=Callable[..., Any])

#: The module whose import registers every data source, noise step and model.
CATALOG = "genodl_core.catalog"


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, implementation, parameter class and metadata."""

    name: str
    fn: Callable[..., Any]
    params: type
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """A named collection of components filled by the :meth:`register` decorator.

    Parameters
    ----------
    kind
        What the entries are, for messages ("model").
    catalog
        Module imported on the first lookup that needs every entry (see the module docstring);
        None for a registry filled only by explicit registrations.
    """

    def __init__(self, kind: str, catalog: str | None = CATALOG):
        self.kind = kind
        self.catalog = catalog
        self._entries: dict[str, Entry] = {}
        self._loaded = catalog is None

    def _load(self) -> dict[str, Entry]:
        """The entries, after importing the catalogue once."""
        if not self._loaded:
            # Re-entrant: a lookup while the catalogue is being imported gets the partly
            # imported module back and sees the entries registered so far.
            importlib.import_module(self.catalog)
            self._loaded = True
        return self._entries

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
        entries = self._entries if name in self._entries else self._load()
        try:
            return entries[name]
        except KeyError:
            raise SpecError(field or self.kind, name, list(entries),
                            reason=f"unknown {self.kind}") from None

    def names(self) -> list[str]:
        return sorted(self._load())

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered so far.

        Does not import the catalogue: gathering results asks about noise kinds this way after
        importing only the noise modules, without paying for the models and torch.
        """
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._load().values()))


#: Data sources: ``fn(params) -> Dataset`` (raw values; the trial runner scales them).
DATASETS: Registry = Registry("data source")
#: Noise steps: ``fn(arrays, params, rng) -> (TrainArrays, record)``.
NOISES: Registry = Registry("noise kind")
#: Models: a :class:`~genodl_core.training.family.Family` that the engine trains, or, for the
#: closed-form baselines, ``fn(member) -> FitOutcome``; meta ``task`` is 'classification' or
#: 'regression'.
MODELS: Registry = Registry("model")
