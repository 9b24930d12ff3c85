"""Typed configuration: the only reader of params.yaml.

params.yaml is the one place defaults live (DVC reads the same file for its stage params). This
module turns it, plus `-s key=value` overrides, into a frozen `Config` and rejects anything a
typo could produce: an unknown section or key, a wrong type, a value out of range. Each error is
one line naming where the value came from, the key, the value and what would be valid. It is the
one place a user's value is validated: the modules that use a config trust it and raise
ValueError only on programming errors.

Overrides: a bare key names the `train` section (`-s optimizer=adam`), a dotted key any section
(`-s data.archive=PATH`); values are parsed as YAML scalars, so `-s data.archive=null` is None.
Relative paths in a params file are relative to its folder (params_file.py); in -s, to the cwd.

YAML 1.2, as DVC reads and writes params.yaml: `dvc exp run -S` rewrites the file and drops the
quotes of `time: "10:00:00"`, which YAML 1.1 (PyYAML) would read as the integer 36000. Where the
two versions read a plain scalar differently, 1.2's reading is a string that the key's type check
refuses or accepts as written (`yes`, `on`, `1:30`), or a number 1.1 left as a string (`1e-3`),
except for one: a leading-zero integer is octal in 1.1 and decimal in 1.2, so it is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ruamel.yaml
from ruamel.yaml.constructor import ConstructorError, SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import ScalarNode

from hpcsweep.config_rules import check_value, rule
from hpcsweep.errors import UserError
from hpcsweep.params_file import beside_the_file, find_params, fit_warmup
from hpcsweep.training.batch_plan import per_rank_batch_size, plan_batches

# The choice names live here, not beside the code that builds them, so that validating a config
# (and with it `status`, `report` and every mistyped -s key) never imports torch. Tests check that
# models/, training/optimizers.py and training/schedules.py can build exactly these.
MODEL_NAMES = ("resnet110", "resnet18", "resnet20", "resnet32", "resnet34", "resnet44", "resnet56", "resnet9")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "lars", "lamb")
SCHEDULERS = ("onecycle", "cosine", "step", "constant")
LR_SCALINGS = ("linear", "sqrt", "none")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")  # auto: hardware/precision.py picks per device
STRATEGIES = ("auto", "ddp")
ACCELERATORS = ("auto", "cpu", "gpu")
LOADERS = ("device", "torchvision")
# SLURM values become #SBATCH lines: a newline would end sbatch's directives and start a shell line,
# a space would smuggle in another option; so names are one word, and slurm.extra values one token
SLURM_NAME = r"[A-Za-z0-9_.-]+"
SLURM_NAME_HINT = "a SLURM name: letters, digits, _ . - (no spaces or newlines)"
SBATCH_VALUE = r"[A-Za-z0-9_.,:@%+=/&|*!?\[\]()-]+"
SBATCH_VALUE_HINT = "one sbatch value: letters, digits and _ . , : @ % + = / & | * ! ? [ ] ( ) - (no spaces or quotes)"


@dataclass(frozen=True)
class DataConfig:
    archive: str | None
    raw_dir: str
    prepared_dir: str
    val_size: int = rule(ge=0)  # training images held out for validation by `hpcsweep prepare`
    loader: str = rule(choices=LOADERS)


@dataclass(frozen=True)
class TrainConfig:
    model: str = rule(choices=MODEL_NAMES)
    optimizer: str = rule(choices=OPTIMIZERS)
    lr: float = rule(gt=0)
    momentum: float = rule(ge=0, lt=1)
    nesterov: bool = rule()
    weight_decay: float = rule(ge=0)
    decay_norm_and_bias: bool = rule()
    scheduler: str = rule(choices=SCHEDULERS)
    warmup_epochs: float = rule(ge=0)
    lr_scaling: str = rule(choices=LR_SCALINGS)
    base_batch_size: int = rule(ge=1)
    batch_size: int = rule(ge=1)
    micro_batch_size: int | Literal["auto"] = rule(ge=1)
    memory_limit_mb: int | None = rule(ge=1)
    memory_margin: float = rule(ge=0, lt=1)
    max_epochs: int = rule(ge=1)
    precision: str = rule(choices=PRECISIONS)
    compile: bool = rule()
    accelerator: str = rule(choices=ACCELERATORS)
    strategy: str = rule(choices=STRATEGIES)
    devices: int = rule(ge=1)
    num_nodes: int = rule(ge=1)
    seed: int = rule(ge=0)
    limit_train_samples: int | None = rule(ge=1)
    target_accuracy: float = rule(gt=0, le=1)


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None
    experiment: str = rule(pattern=r"\S.*", hint="a non-empty name")
    system_metrics: bool = rule()
    log_model: bool = rule()
    checkpoint_dir: str = rule(pattern=r"\S.*", hint="a folder")
    flush_timeout_s: float = rule(ge=0)
    secrets_file: str | None
    backend_store_uri: str = rule(
        pattern=r"\w[\w+]*://\S*", hint="a SQLAlchemy URI such as postgresql://mlflow@db:5432/mlflow"
    )
    artifacts_destination: str = rule(pattern=r"\S+", hint="s3://BUCKET[/PREFIX] or a folder")
    serve_artifacts: bool = rule()
    host: str = rule(pattern=r"\S+", hint="an address to listen on, such as 0.0.0.0")
    port: int = rule(ge=1, le=65535)
    workers: int = rule(ge=1)
    db_connections: int = rule(ge=1)


@dataclass(frozen=True)
class SlurmConfig:
    partition: str | None = rule(
        pattern=rf"{SLURM_NAME}(,{SLURM_NAME})*", hint=f"{SLURM_NAME_HINT}, or several separated by commas"
    )
    time: str = rule(pattern=r"(\d+-)?\d{1,2}:\d{2}:\d{2}", hint="[D-]HH:MM:SS")
    cpus_per_task: int = rule(ge=1)
    mem: str = rule(pattern=r"\d+[KMGT]?", hint="a size such as 32G")
    max_parallel: int = rule(ge=1)
    max_requeues: int = rule(ge=1)
    account: str | None = rule(pattern=SLURM_NAME, hint=SLURM_NAME_HINT)
    qos: str | None = rule(pattern=SLURM_NAME, hint=SLURM_NAME_HINT)
    setup: list[str]  # shell lines on purpose: the job script runs them
    extra: dict[str, str | int] = rule(pattern=SBATCH_VALUE, hint=SBATCH_VALUE_HINT)


@dataclass(frozen=True)
class Config:
    data: DataConfig
    train: TrainConfig
    tracking: TrackingConfig
    slurm: SlurmConfig

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @property
    def hash(self) -> str:
        """Identity of what a run computes: the train section and the loader, never paths.

        Canonical JSON with sorted keys, so key order in any file never changes it.
        """
        identity = {"train": dataclasses.asdict(self.train), "loader": self.data.loader}
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


SECTIONS: dict[str, type] = typing.get_type_hints(Config)


def load_config(params: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> Config:
    """Read `params` (None: the file `find_params` finds), apply `key=value` overrides, validate."""
    path = find_params(params)
    return config_with(read_params_file(path), parse_overrides(overrides), source=str(path), overrides_label="-s")


def read_params_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: params file not found (pass --params FILE or set HPCSWEEP_PARAMS)")
    return beside_the_file(read_yaml_mapping(path, f"a mapping with sections {', '.join(SECTIONS)}"), path.parent)


class Yaml12Constructor(SafeConstructor):
    """YAML 1.2's safe reading, refusing the integers YAML 1.1 reads as another number."""

    def construct_yaml_int(self, node: ScalarNode) -> int:
        # A `%YAML 1.1` document says which reading it means; only 1.2's is ambiguous
        if self.resolver.processing_version > (1, 1) and re.fullmatch(r"[-+]?0[0-9_]+", node.value):
            raise ConstructorError(
                problem=f"{node.value} is octal in YAML 1.1 and decimal in YAML 1.2: write it without leading zeros "
                f"(or 0o{node.value.lstrip('+-0')} for octal)",
                problem_mark=node.start_mark,
            )
        return super().construct_yaml_int(node)


Yaml12Constructor.add_constructor("tag:yaml.org,2002:int", Yaml12Constructor.construct_yaml_int)


def parse_yaml(text: str) -> Any:
    """`text` read as YAML 1.2 (plain Python dicts, lists and scalars); raises ruamel's YAMLError."""
    reader = ruamel.yaml.YAML(typ="safe", pure=True)
    reader.Constructor = Yaml12Constructor
    return reader.load(text)


def read_yaml_mapping(path: Path, expected: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (params, grid files); errors name the file and line."""
    try:
        raw = parse_yaml(Path(path).read_text())
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    except MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else "?"
        raise UserError(f"{path}:{line}: invalid YAML: {error.problem}") from None
    except YAMLError as error:
        raise UserError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected {expected}")
    return raw


def parse_overrides(overrides: typing.Iterable[str]) -> dict[str, Any]:
    """`key=value` strings to {key: value}, values parsed as YAML 1.2 scalars (text that is not YAML stays text)."""
    parsed = {}
    for assignment in overrides:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise UserError(f"-s {assignment!r}: expected key=value, e.g. -s optimizer=adam or -s data.archive=PATH")
        try:
            parsed[key] = parse_yaml(text)
        except ConstructorError as error:
            raise UserError(f"-s {assignment}: {error.problem}") from None
        except YAMLError:
            parsed[key] = text
    return parsed


def section_and_name(key: str, label: str) -> tuple[str, str]:
    """A bare key is a train key; a dotted key names its section."""
    section, _, name = key.rpartition(".")
    section = section or "train"
    if section not in SECTIONS:
        raise UserError(f"{label} {key}: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
    return section, name


def config_with(raw: dict[str, Any], assignments: dict[str, Any], source: str, overrides_label: str) -> Config:
    """Validate `raw` (a params mapping) with `assignments` applied on top; `raw` is not modified.

    Errors about an assigned key name `overrides_label` (e.g. "-s", or a grid point) as their
    source, errors about the rest name `source`.
    """
    merged = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    overridden = set()
    for key, value in assignments.items():
        section, name = section_and_name(key, overrides_label)
        if not isinstance(merged.setdefault(section, {}), dict):
            raise UserError(f"{source}: section {section!r} is not a mapping")
        merged[section][name] = value
        overridden.add(f"{section}.{name}")
    return config_from_dict(merged, source=source, overridden=overridden, overrides_label=overrides_label)


def config_from_dict(
    raw: dict[str, Any], source: str, overridden: set[str] = frozenset(), overrides_label: str = "-s"
) -> Config:
    """Validate a nested mapping (a params file, a grid point, a job's JSON) into a `Config`."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise UserError(f"{source}: unknown section {unknown[0]!r}; valid: {', '.join(SECTIONS)}")
    sections = {}
    for name, section_type in SECTIONS.items():
        values = raw.get(name)
        if not isinstance(values, dict):
            raise UserError(f"{source}: section {name!r} missing or not a mapping")
        sections[name] = section_from_dict(section_type, name, values, source, overridden, overrides_label)
    sections["train"] = fit_warmup(sections["train"], overridden)
    check_train_consistency(sections["train"], source)
    return Config(**sections)


def check_train_consistency(train: TrainConfig, source: str) -> None:
    """Rules between keys, so that a bad combination fails here and not an hour into a job."""
    if train.warmup_epochs and train.warmup_epochs >= train.max_epochs:
        raise UserError(f"{source}: train.warmup_epochs={train.warmup_epochs} must be < max_epochs={train.max_epochs}")
    if train.nesterov and (train.optimizer != "sgd" or train.momentum == 0):
        raise UserError(
            f"{source}: train.nesterov=true needs optimizer=sgd and momentum > 0 "
            f"(got optimizer={train.optimizer}, momentum={train.momentum})"
        )
    world_size = train.devices * train.num_nodes
    if world_size > 1 and train.strategy != "ddp":
        raise UserError(
            f"{source}: devices={train.devices} x num_nodes={train.num_nodes} needs strategy=ddp "
            f"(got strategy={train.strategy})"
        )
    try:
        if train.micro_batch_size == "auto":
            per_rank_batch_size(train.batch_size, world_size)
        else:
            plan_batches(train.batch_size, world_size, train.micro_batch_size)
    except UserError as error:
        raise UserError(f"{source}: {error}") from None


@functools.cache
def type_hints(section_type: type) -> dict[str, Any]:
    """The section's field types, Annotated rules included: resolved once (a 1000-point grid
    validates 4000 sections, and resolving them each time took most of a dry run)."""
    return typing.get_type_hints(section_type, include_extras=True)


def section_from_dict(
    section_type: type, section: str, values: dict, source: str, overridden: set[str], overrides_label: str
) -> Any:
    hints = type_hints(section_type)
    fields = {f.name: f for f in dataclasses.fields(section_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = overrides_label if f"{section}.{unknown[0]}" in overridden else source
        raise UserError(f"{where}: unknown key {section}.{unknown[0]}; valid: {', '.join(fields)}")
    missing = [name for name in fields if name not in values]
    if missing:
        raise UserError(f"{source}: section {section!r} is missing {', '.join(missing)}")
    checked = {}
    for name, spec in fields.items():
        where = overrides_label if f"{section}.{name}" in overridden else source
        label = f"{where}: {section}.{name}={values[name]!r}"
        checked[name] = check_value(values[name], hints[name], spec.metadata, label)
    return section_type(**checked)
