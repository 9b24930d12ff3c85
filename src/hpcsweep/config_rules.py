"""The value rules a config field declares, and the checks that enforce them.

config.py declares each field's rule (`rule(ge=0)`, `rule(choices=...)`, `rule(pattern=...)`) and
calls `check_value` on every value it reads; this module holds that machinery so that config.py
stays the schema and the loading. Errors are one line: the label config.py builds (where the value
came from, the key and the value), then what would be valid. Floats must be finite: `.inf` or
`.nan` read as numbers in YAML, and pass every bound check `nan` is compared with. An integral
float (2.0) is an integer: MLproject parameters have no integer type, so `mlflow run -P
max_epochs=2.0` is how many users spell one.
"""

from __future__ import annotations

import math
import operator
import re
import types
import typing
from dataclasses import field
from typing import Any, Literal

from hpcsweep.errors import UserError

# PyYAML follows YAML 1.1, where 3e-4 (no dot) is a string; YAML 1.2 and every user read a number
YAML12_FLOAT = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
BOUNDS = (("ge", ">=", operator.ge), ("gt", ">", operator.gt), ("le", "<=", operator.le), ("lt", "<", operator.lt))


def rule(
    *,
    choices: tuple[str, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    pattern: str | None = None,
    hint: str = "",
) -> Any:
    """A dataclass field with the value constraints `check_rule` enforces; a mapping's `pattern`
    applies to each of its values."""
    return field(metadata=dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt, pattern=pattern, hint=hint))


def check_value(value: Any, annotation: Any, constraints: typing.Mapping, label: str) -> Any:
    """Return the value (ints widened to float where a float is wanted, integral floats narrowed to
    int where an integer is) or raise naming the label."""
    options = typing.get_args(annotation) if is_union(annotation) else (annotation,)
    if value is None:
        if type(None) in options:
            return None
        raise UserError(f"{label}: a value is required ({describe(annotation)})")
    if float in options and isinstance(value, str) and re.fullmatch(YAML12_FLOAT, value):
        value = float(value)
    if int in options and isinstance(value, float) and value.is_integer():
        value = int(value)
    for option in options:
        if typing.get_origin(option) is Literal:
            if value in typing.get_args(option):
                return value
        elif matches_type(value, option):
            value = float(value) if option is float else value
            if option is float and not math.isfinite(value):
                raise UserError(f"{label}: expected a finite number")
            check_rule(value, constraints, label)
            return value
    raise UserError(f"{label}: expected {describe(annotation)}")


def is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def matches_type(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if origin is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool) for k, v in value.items()
        )
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return expected is not type(None) and isinstance(value, expected)


def check_rule(value: Any, constraints: typing.Mapping, label: str) -> None:
    choices = constraints.get("choices")
    if choices is not None and value not in choices:
        raise UserError(f"{label}: valid: {', '.join(choices)}")
    for key, symbol, holds in BOUNDS:
        limit = constraints.get(key)
        if limit is not None and not holds(value, limit):
            raise UserError(f"{label}: must be {symbol} {limit}")
    pattern = constraints.get("pattern")
    if pattern is None:
        return
    for text, text_label in pattern_subjects(value, label):
        if not re.fullmatch(pattern, text):
            raise UserError(f"{text_label}: expected {constraints.get('hint') or pattern}")


def pattern_subjects(value: Any, label: str) -> list[tuple[str, str]]:
    """What a pattern must match: a string itself, or each value of a mapping (labelled by its key)."""
    if isinstance(value, dict):
        return [(str(item), f"{label}: {key}={item!r}") for key, item in value.items()]
    return [(value, label)]


def describe(annotation: Any) -> str:
    """Human words for a type annotation, for error messages."""
    if is_union(annotation):
        return " or ".join(describe(option) for option in typing.get_args(annotation))
    if typing.get_origin(annotation) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return "a list of strings"
    if typing.get_origin(annotation) is dict:
        return "a mapping of names to strings or integers"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(annotation, str(annotation))
