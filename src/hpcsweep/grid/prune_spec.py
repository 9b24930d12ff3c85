"""A grid file's `prune:` mapping, checked key by key into `PruneSettings` (one line per mistake).

    prune: {rule: median, rung_epochs: [1, 2], startup_points: 2}
    prune: {rule: percentile, rung_epochs: [2], keep_percent: 25, startup_points: 4}
    prune: {rule: successive_halving, min_epochs: 1, reduction_factor: 3}

Each rule takes its own keys; the study and journal are the launcher's to fill in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcsweep.errors import UserError
from hpcsweep.training.prune_settings import RULES, PruneSettings

RULE_KEYS = {
    "median": ("rung_epochs", "startup_points"),
    "percentile": ("rung_epochs", "keep_percent", "startup_points"),
    "successive_halving": ("min_epochs", "reduction_factor"),
}
REQUIRED = {"median": ("rung_epochs",), "percentile": ("rung_epochs", "keep_percent"), "successive_halving": ()}
LEAST = {"startup_points": 0, "min_epochs": 1, "reduction_factor": 2}  # the whole-number keys and their minimum


def whole_number(path: Path, key: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{path}: prune.{key}={value!r}: expected a whole number >= {least}")
    return value


def rung_epochs(path: Path, value: Any) -> tuple[int, ...]:
    epochs = value if isinstance(value, list) and value else [None]
    checked = tuple(whole_number(path, "rung_epochs", epoch, 1) for epoch in epochs)
    if list(checked) != sorted(set(checked)):
        raise UserError(f"{path}: prune.rung_epochs={value!r}: expected epochs in increasing order, e.g. [1, 2]")
    return checked


def keep_percent(path: Path, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 100:
        raise UserError(f"{path}: prune.keep_percent={value!r}: expected a number between 0 and 100 (exclusive)")
    return float(value)


def prune_settings(path: Path, prune: Any) -> PruneSettings:
    """The checked settings of the grid file at `path`."""
    if not isinstance(prune, dict):
        raise UserError(f"{path}: prune must be a mapping, e.g. {{rule: median, rung_epochs: [1, 2]}}, got {prune!r}")
    rule = prune.get("rule")
    if rule not in RULES:
        raise UserError(f"{path}: prune.rule={rule!r}: valid: {', '.join(RULES)}")
    valid = ("rule", *RULE_KEYS[rule])
    unknown = [key for key in prune if key not in valid]
    if unknown:
        raise UserError(f"{path}: prune.{unknown[0]}: not a key of rule {rule}; valid: {', '.join(valid)}")
    missing = [key for key in REQUIRED[rule] if key not in prune]
    if missing:
        raise UserError(f"{path}: prune.{missing[0]} is required for rule {rule}")
    values = {key: whole_number(path, key, prune[key], least) for key, least in LEAST.items() if key in prune}
    if "rung_epochs" in prune:
        values["rung_epochs"] = rung_epochs(path, prune["rung_epochs"])
    if "keep_percent" in prune:
        values["keep_percent"] = keep_percent(path, prune["keep_percent"])
    return PruneSettings(rule, **values)


def check_rungs(path: Path, settings: PruneSettings, max_epochs: int) -> None:
    """Some rung must come before `max_epochs` (the longest point's), or nothing could ever stop."""
    if not settings.rungs(max_epochs):
        raise UserError(
            f"{path}: prune: no rung comes before max_epochs={max_epochs}, so no point could be stopped; "
            f"judge points at an earlier epoch"
        )
