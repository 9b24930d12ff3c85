"""A grid file -> the list of training configs a study runs, each validated and identified.

    name: optimizers                       # status, cancel and report find the grid by it
    experiment: cifar10-optimizers         # MLflow experiment
    base: {model: resnet20, max_epochs: 30}                  # on top of params.yaml
    grid: {optimizer: [sgd, adam, rmsprop], batch_size: [128, 1024]}   # cartesian product
    variants: [{optimizer: sgd, lr: 0.1}, {optimizer: adam, lr: 0.001}]
    exclude: [{optimizer: rmsprop, batch_size: 1024}]
    seeds: [0, 1, 2]
    slurm: {partition: gpu, time: "02:00:00", ...}          # on top of params.yaml's slurm
    tune: [lr]                             # keys tuned per configuration (grid axes or variant keys)
    prune: {rule: median, rung_epochs: [5, 10], startup_points: 4}   # opt-in early stopping

Keys are config keys: bare for `train`, dotted for other sections (`data.loader`).

`variants` co-vary keys. A variant's keys that are also grid axes select the grid points it
applies to (the variant's values must equal the point's); its other keys are set on those
points. So `{optimizer: sgd, lr: 0.1}` gives every sgd point lr 0.1; a point no variant selects
keeps its base values (rmsprop above); a point selected by several variants becomes one point
per variant; and variants sharing no key with the grid select every point, which crosses the
grid with the variants. `exclude` then drops points matching all keys of an entry, and `seeds`
repeats each point once per seed.

`tune` names the keys whose values are tuned rather than compared (each must be a grid axis or
a variant key): every child run is tagged `hpcsweep.tuned` with them, and the report picks the
best value per configuration. `prune` stops points far behind their peers at rung epochs
(Optuna's pruners; prune_spec.py lists the rules and their keys).

Precedence, lowest first: params.yaml, base, the point, the command line's `-s`. Every point is
validated as a full config before anything is submitted; an error names the point. A grid over
1000 points is refused before any point is validated, unless the caller allows it (`--yes`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcsweep.config import Config, config_with, read_params_file, read_yaml_mapping
from hpcsweep.errors import UserError
from hpcsweep.grid.prune_spec import check_rungs, prune_settings
from hpcsweep.training.prune_settings import PruneSettings

GRID_KEYS = ("name", "experiment", "base", "grid", "variants", "exclude", "seeds", "slurm", "tune", "prune")
MAX_POINTS_WITHOUT_YES = 1000


@dataclass(frozen=True)
class Point:
    index: int
    assignments: dict[str, Any]  # what the grid set: the point's name in tables
    config: Config

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.assignments.items()) or "base"


@dataclass(frozen=True)
class Grid:
    name: str
    experiment: str
    path: Path
    points: list[Point]
    tune: tuple[str, ...] = ()  # the config keys tuned per configuration
    prune: PruneSettings | None = None  # early stopping, when the grid file asks for it


def matches(point: dict[str, Any], pattern: dict[str, Any]) -> bool:
    return all(key in point and point[key] == value for key, value in pattern.items())


def with_variants(point: dict[str, Any], variants: list[dict], axes: set[str]) -> list[dict[str, Any]]:
    """The point once per variant that selects it (or once as it is, if none does)."""
    selecting = [v for v in variants if matches(point, {k: v[k] for k in v if k in axes})]
    return [{**point, **variant} for variant in selecting] or [point]


def iter_points(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The grid's points as assignments, one at a time, in a stable order: grid x variants - excluded, x seeds."""
    axes = spec.get("grid") or {}
    seeds = spec.get("seeds")
    for values in itertools.product(*axes.values()):
        for point in with_variants(dict(zip(axes, values)), spec.get("variants") or [], set(axes)):
            if not any(matches(point, pattern) for pattern in spec.get("exclude") or []):
                yield from ({**point, "seed": seed} for seed in seeds) if seeds else [point]


def expand(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(iter_points(spec))


def check_size(path: Path, spec: dict[str, Any], max_points: int) -> None:
    """Refuse a grid over `max_points` before any point is validated (that takes minutes for 10^6).

    The axes' lengths times the seeds count the points; variants only add to that, so without an
    exclude it is enough to refuse. Excludes can only be counted by walking the points, which stops
    at the first point over the limit.
    """
    seeds = spec.get("seeds") or []
    lengths = [len(values) for values in (spec.get("grid") or {}).values()] + ([len(seeds)] if seeds else [])
    if math.prod(lengths) > max_points and not spec.get("exclude"):
        size = f"at least {math.prod(lengths)} points ({' x '.join(map(str, lengths))} from the axes and seeds)"
    elif sum(1 for _ in itertools.islice(iter_points(spec), max_points + 1)) > max_points:
        size = f"over {max_points} points"
    else:
        return
    raise UserError(f"{path}: {size}; grids over {max_points} need --yes")


def check_shape(path: Path, spec: dict[str, Any]) -> None:
    """Types of the grid file's own keys; the values inside are checked as configs later."""
    unknown = sorted(set(spec) - set(GRID_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; valid: {', '.join(GRID_KEYS)}")
    if not isinstance(spec.get("name"), str) or not spec["name"].replace("-", "").replace("_", "").isalnum():
        raise UserError(f"{path}: name must be a word of letters, digits, - and _ (got {spec.get('name')!r})")
    kinds = {
        "experiment": str,
        "base": dict,
        "grid": dict,
        "variants": list,
        "exclude": list,
        "seeds": list,
        "slurm": dict,
        "tune": list,
    }
    for key, kind in kinds.items():
        if key in spec and not isinstance(spec[key], kind):
            raise UserError(f"{path}: {key} must be a {kind.__name__}, got {type(spec[key]).__name__}")
    for axis, values in (spec.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid.{axis} must be a non-empty list of values, got {values!r}")
    for key in ("variants", "exclude"):
        if any(not isinstance(entry, dict) for entry in spec.get(key) or []):
            raise UserError(f"{path}: every entry of {key} must be a mapping of keys to values")


def tuned_keys(path: Path, spec: dict[str, Any]) -> tuple[str, ...]:
    """The `tune` keys, each one the grid varies: a grid axis or a variant key."""
    varied = [*(spec.get("grid") or {}), *(key for variant in spec.get("variants") or [] for key in variant)]
    for key in spec.get("tune", []):
        if key not in varied:
            choices = ", ".join(dict.fromkeys(varied)) or "none"
            raise UserError(
                f"{path}: tune: {key!r} is not varied by the grid; a tuned key is a grid axis or a variant key "
                f"(here: {choices})"
            )
    return tuple(dict.fromkeys(spec.get("tune", [])))


def load_grid(
    path: Path,
    params: Path,
    overrides: dict[str, Any],
    experiment: str | None = None,
    max_points: int | None = MAX_POINTS_WITHOUT_YES,
) -> Grid:
    """Read, expand and validate a grid file into configs (nothing is created or submitted); a grid
    over `max_points` is refused before its points are validated (None: any size, for --yes)."""
    path = Path(path)
    spec = read_yaml_mapping(path, f"a grid mapping with keys {', '.join(GRID_KEYS)}")
    check_shape(path, spec)
    tune = tuned_keys(path, spec)
    prune = prune_settings(path, spec["prune"]) if "prune" in spec else None
    if not (spec.get("grid") or spec.get("variants") or spec.get("seeds")):
        raise UserError(f"{path}: empty grid: give at least one of grid, variants or seeds")
    if max_points is not None:
        check_size(path, spec, max_points)
    raw = read_params_file(Path(params))
    base = {**(spec.get("base") or {}), **{f"slurm.{k}": v for k, v in (spec.get("slurm") or {}).items()}}
    experiment = experiment or spec.get("experiment") or spec["name"]
    points, seen = [], {}
    for index, assignments in enumerate(expand(spec)):
        label = f"{path}: point {index} ({', '.join(f'{k}={v}' for k, v in assignments.items()) or 'base'})"
        config = config_with(
            raw,
            {**base, **assignments, **overrides, "tracking.experiment": experiment},
            source=label,
            overrides_label=label,
        )
        if config.hash in seen:
            continue  # e.g. -s max_epochs=1 over an axis of epochs: one run is enough
        seen[config.hash] = index
        points.append(Point(len(points), assignments, config))
    if not points:
        raise UserError(f"{path}: the grid has no points (empty grid, or everything excluded)")
    if prune:
        check_rungs(path, prune, max(point.config.train.max_epochs for point in points))
    return Grid(spec["name"], experiment, path, points, tune, prune)
