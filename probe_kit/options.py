"""Typed options with declared ranges: one checker for YAML values, ``-o key=value`` text and Python callers.

An option declares its range where it is declared, as ``Annotated`` metadata on a dataclass field or
a function parameter::

    epochs: Annotated[int, Range(min=1)] = 30
    val_fraction: Annotated[float, Range(0, 1, min_open=True, max_open=True)] = 0.3
    head: Literal["linear", "mlp"] = "mlp"

``check_fields`` turns a mapping of raw values into checked ones against those type hints, or raises
``UserError`` naming the key, what was expected and what it got. Values given as text (``-o``) are
parsed by the declared type; values from YAML or Python must already have it (``"8"`` is not an int).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from probe_kit.errors import UserError, short

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric option (``None``: unbounded); ``*_open`` excludes the bound itself."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def contains(self, x: float) -> bool:
        above = self.min is None or (x > self.min if self.min_open else x >= self.min)
        below = self.max is None or (x < self.max if self.max_open else x <= self.max)
        return above and below

    def __str__(self) -> str:
        if self.min is not None and self.max is not None:
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            return f"in {left}{self.min:g}, {self.max:g}{right}"
        if self.min is not None:
            return f"{'>' if self.min_open else '>='} {self.min:g}"
        if self.max is not None:
            return f"{'<' if self.max_open else '<='} {self.max:g}"
        return ""


def _split(hint: Any) -> tuple[Any, list[Range]]:
    """``Annotated[T, Range(...)]`` -> ``(T, [Range])``; anything else -> ``(hint, [])``."""
    if typing.get_origin(hint) is Annotated:
        base, *meta = typing.get_args(hint)
        return base, [m for m in meta if isinstance(m, Range)]
    return hint, []


def describe(hint: Any) -> str:
    """What a value of ``hint`` looks like, in words (for error messages)."""
    base, ranges = _split(hint)
    origin, args = typing.get_origin(base), typing.get_args(base)
    bounds = "".join(f" {r}" for r in ranges if str(r))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) if a is not type(None) else "null" for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if dataclasses.is_dataclass(base):
        return f"a mapping with keys {[f.name for f in dataclasses.fields(base)]}"
    if origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a text", dict: "a mapping"}
    return names.get(base, getattr(base, "__name__", str(base))) + bounds


def check_value(key: str, value: Any, hint: Any, *, text: bool = False) -> Any:
    """``value`` as the type ``hint`` declares, within its ranges; ``text``: parse it from a string."""
    base, ranges = _split(hint)

    def refuse() -> UserError:
        return UserError(f"{key}: expected {describe(hint)}, got {short(value)}")

    origin, args = typing.get_origin(base), typing.get_args(base)
    if base is Any or base is object:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (text and str(value).lower() in ("none", "null")):
            if type(None) in args:
                return None
            raise refuse()
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:  # keep the member's own message (e.g. a nested dataclass's key)
            return check_value(key, value, members[0], text=text)
        for arg in members:
            try:
                return check_value(key, value, arg, text=text)
            except UserError:
                continue
        raise refuse()
    if origin is Literal:
        for choice in args:
            if value == choice or (text and str(value) == str(choice)):
                return choice
        raise refuse()
    if origin in (tuple, list):
        if text and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise refuse()
        item = args[0] if args else Any
        return tuple(check_value(f"{key}[{i}]", v, item, text=text) for i, v in enumerate(value))
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise refuse()
        return base(**check_fields(base, value, prefix=f"{key}.", noun="key"))
    if base is bool:
        if isinstance(value, bool):
            return value
        if text and str(value).lower() in _TRUE + _FALSE:
            return str(value).lower() in _TRUE
        raise refuse()
    if base in (int, float):
        number = _number(value, base, text)
        if number is None or (ranges and not all(r.contains(number) for r in ranges)):
            raise refuse()
        return number
    if base is str:
        if isinstance(value, str):
            return value
        raise refuse()
    if base is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise refuse()
    if isinstance(base, type) and not isinstance(value, base):
        raise refuse()
    return value


def _number(value: Any, kind: type, text: bool) -> int | float | None:
    """``value`` as a finite ``kind``, or ``None``; bools are not numbers, ``2.0`` is an int only as text."""
    if isinstance(value, bool):
        return None
    if text and isinstance(value, str):
        try:
            value = int(value) if kind is int else float(value)
        except ValueError:
            return None
    if kind is int:
        return value if isinstance(value, int) else None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def field_hints(owner: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Declared type hints (with ``Annotated`` ranges) of a dataclass's fields or a function's parameters."""
    try:
        hints = typing.get_type_hints(owner, include_extras=True)
    except (NameError, TypeError):  # a plugin's hints that do not resolve: its options pass unchecked
        hints = {}
    if dataclasses.is_dataclass(owner):
        names = [f.name for f in dataclasses.fields(owner)]
    else:
        import inspect

        names = [p for p in inspect.signature(owner).parameters]
    return {name: hints.get(name, Any) for name in names if name not in skip}


def check_fields(
    owner: Any,
    values: dict[str, Any],
    *,
    prefix: str = "",
    text: bool = False,
    skip: tuple[str, ...] = (),
    noun: str = "option",
) -> dict[str, Any]:
    """Every entry of ``values`` checked against ``owner``'s declared fields; unknown keys are refused.

    ``prefix`` leads every message (``"exp.yaml: synth."``); ``noun`` names what an unknown key is.
    """
    hints = field_hints(owner, skip)
    checked = {}
    for key, value in values.items():
        if key not in hints:
            where = prefix.rstrip(". ").removesuffix(":")
            raise UserError(f"{where + ': ' if where else ''}unknown {noun} {key!r}; expected one of {sorted(hints)}")
        checked[key] = check_value(f"{prefix}{key}", value, hints[key], text=text)
    return checked


# Ranges shared by many options: counts, sizes, rates, weights and held-out shares.
PositiveInt = Annotated[int, Range(min=1)]
NonNegativeInt = Annotated[int, Range(min=0)]
PositiveFloat = Annotated[float, Range(min=0, min_open=True)]
NonNegativeFloat = Annotated[float, Range(min=0)]
Fraction = Annotated[float, Range(0, 1, min_open=True, max_open=True)]  # a share strictly between 0 and 1


def check_instance(obj: Any, prefix: str = "") -> None:
    """A dataclass instance's fields checked against their declarations; call it from ``__post_init__``.

    Checked values replace the given ones (a list becomes the declared tuple, an int the declared float),
    also on frozen dataclasses, so every way of building the object (CLI, YAML, Python) is held to one rule.
    """
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    for key, value in check_fields(type(obj), values, prefix=prefix).items():
        object.__setattr__(obj, key, value)
