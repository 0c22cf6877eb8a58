"""Building frozen dataclasses from plain mappings (TOML/JSON), with checked types.

Only the small set of types that specs use is supported: ``bool``, ``int``, ``float``, ``str``,
``Literal[...]``, ``X | None``, ``tuple[X, ...]``, fixed ``tuple[X, Y]`` and nested dataclasses.
Every error is a :class:`~genodl_core.errors.SpecError` naming the dotted field path.
After conversion a dataclass may define ``validate(where)`` for range checks across fields.

Values typed on a command line (``-o KEY=VALUE``) arrive as strings; ``convert(..., text=True)``
also parses numbers and booleans from text (the site options use it), with the same checks.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union

from genodl_core.errors import SpecError

T = TypeVar("T")

#: Words read as booleans from text (case-insensitive).
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def build(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Convert ``data`` into an instance of dataclass ``cls``; unknown keys are errors."""
    if data is not None and not isinstance(data, Mapping):
        raise SpecError(where or "spec", data, "a table of key = value pairs", reason="not a table")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise SpecError(f"{where}.{key}" if where else key, data[key], list(fields),
                            reason="unknown key")
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = convert(hints[name], data[name], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(path, None, _describe(hints[name]), reason="missing required key")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def convert(tp: Any, value: Any, path: str, *, text: bool = False) -> Any:
    """Convert one value to type ``tp`` or raise a :class:`SpecError` at ``path``.

    With ``text``, a string also converts to ``int``, ``float`` or ``bool`` when it spells one
    (``"3"``, ``"0.5"``, ``"yes"``; see :data:`TRUE_WORDS` and :data:`FALSE_WORDS`).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise SpecError(path, value, list(args), reason="unknown choice")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return convert(option, value, path, text=text)
            except SpecError:
                if len(options) == 1:
                    raise  # `X | None`: the error of X says more than "wrong type"
                continue
        raise SpecError(path, value, _describe(tp), reason="wrong type")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise SpecError(path, value, _describe(tp), reason="expected a list")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(convert(item, v, f"{path}[{i}]", text=text) for i, v in enumerate(value))
        if len(value) != len(args):
            raise SpecError(path, value, _describe(tp), reason=f"expected {len(args)} items")
        return tuple(convert(a, v, f"{path}[{i}]", text=text)
                     for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, path)
    if text and isinstance(value, str) and tp in (bool, int, float):
        return _from_text(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(path, value, "true or false", reason="expected a boolean")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            # A float is refused even when whole: `n_train = 1e11` is a float in TOML, and a
            # count written in exponent form is more often a slip than a wish.
            raise SpecError(path, value, "an integer (written without a decimal point or "
                            "exponent)", reason="expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(path, value, "a number", reason="expected a number")
        return _finite(float(value), value, path)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(path, value, "a string", reason="expected a string")
        return value
    raise TypeError(f"unsupported spec type {tp!r} at {path}")


def _from_text(tp: type, value: str, path: str) -> Any:
    word = value.strip()
    if tp is bool:
        if word.lower() in TRUE_WORDS:
            return True
        if word.lower() in FALSE_WORDS:
            return False
        raise SpecError(path, value, sorted(TRUE_WORDS | FALSE_WORDS), reason="expected a boolean")
    try:
        number = tp(word)
    except ValueError:
        if tp is int:
            raise SpecError(path, value, "an integer", reason="expected an integer") from None
        raise SpecError(path, value, "a number", reason="expected a number") from None
    return _finite(number, value, path) if tp is float else number


#: Largest magnitude a float parameter may have: the training computes in 32-bit floats, where
#: anything larger is infinity (``learning_rate = 1e300`` would turn every weight into NaN).
FLOAT32_MAX = 3.4028234663852886e38


def _finite(number: float, value: Any, path: str) -> float:
    if not math.isfinite(number):
        # NaN would pass every range check (all its comparisons are False).
        raise SpecError(path, value, "a finite number", reason="not finite")
    if abs(number) > FLOAT32_MAX:
        raise SpecError(path, value, f"a number of magnitude <= {FLOAT32_MAX:.4g}",
                        reason="too large for the 32-bit floats the training computes in")
    return number


def to_plain(obj: Any) -> Any:
    """Inverse of :func:`build`: dataclasses and tuples become dicts and lists (JSON-ready)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def check_range(where: str, name: str, value: float | int | None, lo: float | None = None,
                hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise a :class:`SpecError` unless ``lo <= value <= hi`` (bounds optionally open)."""
    if value is None:
        return
    bad = value != value or (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi)))
    if bad:
        left = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
        right = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
        path = f"{where}.{name}" if where else name
        raise SpecError(path, value, f"{left}{name}{right}", reason="out of range")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "one of " + repr(list(args))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {_describe(args[0]) if args else 'values'}"
        return "[" + ", ".join(_describe(a) for a in args) + "]"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))
