"""params.yaml -> Config: defaults, overrides, a stable hash, and one-line errors for bad input."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import typing

import pytest
import yaml

from helpers.project import ROOT
from helpers.runs import QUICK, hpcsweep, overrides
from hpcsweep.config import SECTIONS, TrainConfig, load_config, parse_yaml
from hpcsweep.errors import UserError

# The project's own params.yaml, which users edit (the README has offline sites set data.archive;
# `dvc exp run -S` rewrites it): tests shrink it with overrides and never assert its values.
PARAMS = ROOT / "params.yaml"


def read_params() -> dict:
    """The project's params.yaml as hpcsweep reads it (YAML 1.2), to shrink into a test's own file."""
    return parse_yaml(PARAMS.read_text())


def test_project_params_hold_every_key_of_every_section_and_load():
    written = {section: set(values) for section, values in read_params().items()}
    assert written == {name: {f.name for f in dataclasses.fields(kind)} for name, kind in SECTIONS.items()}
    config = load_config(PARAMS)
    assert isinstance(config.slurm.setup, list) and isinstance(config.slurm.extra, dict)


def test_bare_override_names_train_and_dotted_any_section():
    config = load_config(PARAMS, ["optimizer=adam", "lr=3e-4", "data.archive=/x/a.tar.gz", "slurm.time=1-00:00:00"])
    assert config.train.optimizer == "adam"
    assert config.train.lr == pytest.approx(3e-4)
    assert config.data.archive == "/x/a.tar.gz"
    assert config.slurm.time == "1-00:00:00"


def test_override_values_are_yaml_scalars():
    assignments = ["data.archive=null", "nesterov=true", "optimizer=sgd", "momentum=0.9"]
    assignments += ["micro_batch_size=64", "memory_limit_mb=512"]
    config = load_config(PARAMS, assignments)
    assert config.data.archive is None and config.train.nesterov is True
    assert config.train.micro_batch_size == 64 and config.train.memory_limit_mb == 512


def test_integer_is_accepted_where_a_float_is_expected():
    assert load_config(PARAMS, ["lr=1"]).train.lr == 1.0


def test_an_integral_float_is_accepted_where_an_integer_is_expected():
    """MLproject parameters have no integer type: `mlflow run -P max_epochs=2.0` must still train 2 epochs."""
    config = load_config(PARAMS, ["max_epochs=2.0", "micro_batch_size=64.0", "tracking.port=5000.0"])
    assert (config.train.max_epochs, config.train.micro_batch_size, config.tracking.port) == (2, 64, 5000)
    assert type(config.train.max_epochs) is int
    with pytest.raises(UserError, match=r"^-s: train\.max_epochs=2\.5: expected an integer$"):
        load_config(PARAMS, ["max_epochs=2.5"])


def test_params_option_reads_another_file(tmp_path):
    params = read_params()
    params["train"]["optimizer"] = "rmsprop"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(params))
    assert load_config(other).train.optimizer == "rmsprop"


def test_hash_ignores_key_order_and_paths_but_not_training_values(tmp_path):
    params = read_params()
    reordered = {section: dict(reversed(list(values.items()))) for section, values in reversed(list(params.items()))}
    other = tmp_path / "reordered.yaml"
    other.write_text(yaml.safe_dump(reordered, sort_keys=False))
    base = load_config(PARAMS)
    assert load_config(other).hash == base.hash
    assert load_config(PARAMS, ["data.prepared_dir=/elsewhere"]).hash == base.hash
    assert load_config(PARAMS, [f"lr={base.train.lr * 2}"]).hash != base.hash
    assert len({load_config(PARAMS, [f"seed={s}"]).hash for s in range(5)}) == 5


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optimizr=adam", "-s: unknown key train.optimizr; valid: model, optimizer, lr"),
        ("bogus.key=1", "-s bogus.key: unknown section 'bogus'; valid: data, train, tracking, slurm"),
        ("optimizer=adamm", "-s: train.optimizer='adamm': valid: sgd, adam, adamw, rmsprop, adagrad, lars, lamb"),
        (
            "model=resnet7",
            "-s: train.model='resnet7': valid: resnet110, resnet18, resnet20, resnet32, resnet34, resnet44, "
            "resnet56, resnet9",
        ),
        ("scheduler=linear", "-s: train.scheduler='linear': valid: onecycle, cosine, step, constant"),
        ("lr_scaling=quadratic", "-s: train.lr_scaling='quadratic': valid: linear, sqrt, none"),
        ("lr=-0.1", "-s: train.lr=-0.1: must be > 0"),
        ("lr=0", "-s: train.lr=0: must be > 0"),
        ("momentum=-0.1", "-s: train.momentum=-0.1: must be >= 0"),
        ("weight_decay=-0.0001", "-s: train.weight_decay=-0.0001: must be >= 0"),
        ("base_batch_size=0", "-s: train.base_batch_size=0: must be >= 1"),
        ("warmup_epochs=-1", "-s: train.warmup_epochs=-1: must be >= 0"),
        ("max_epochs=0", "-s: train.max_epochs=0: must be >= 1"),
        ("lr=fast", "-s: train.lr='fast': expected a number"),
        ("momentum=1.0", "-s: train.momentum=1.0: must be < 1"),
        ("batch_size=0", "-s: train.batch_size=0: must be >= 1"),
        ("batch_size=12.5", "-s: train.batch_size=12.5: expected an integer"),
        ("nesterov=1", "-s: train.nesterov=1: expected true or false"),
        ("micro_batch_size=big", "-s: train.micro_batch_size='big': expected an integer or 'auto'"),
        ("micro_batch_size=0", "-s: train.micro_batch_size=0: must be >= 1"),
        ("precision=fp8", "-s: train.precision='fp8': valid: auto, 32-true, bf16-mixed, 16-mixed"),
        ("strategy=fsdp", "-s: train.strategy='fsdp': valid: auto, ddp"),
        ("target_accuracy=1.5", "-s: train.target_accuracy=1.5: must be <= 1"),
        ("max_epochs=null", "-s: train.max_epochs=None: a value is required (an integer)"),
        ("data.loader=dali", "-s: data.loader='dali': valid: device, torchvision"),
        ("slurm.time=2h", "-s: slurm.time='2h': expected [D-]HH:MM:SS"),
        ("slurm.mem=lots", "-s: slurm.mem='lots': expected a size such as 32G"),
        ("slurm.setup=module load cuda", "-s: slurm.setup='module load cuda': expected a list of strings"),
        ("optimizer", "-s 'optimizer': expected key=value"),
    ],
)
def test_bad_override_is_one_line_naming_key_and_valid_values(override, expected):
    with pytest.raises(UserError) as error:
        load_config(PARAMS, [override])
    message = str(error.value)
    assert expected in message
    assert "\n" not in message


def params_file_with(tmp_path, section: str, key: str, text: str):
    """A copy of the project's params.yaml with one value written as plain YAML `text`, as DVC leaves it."""
    params = read_params()
    params[section][key] = "PLACEHOLDER"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False).replace(": PLACEHOLDER\n", f": {text}\n"))
    return path


def test_a_time_whose_quotes_dvc_dropped_is_still_a_time(tmp_path):
    """`dvc exp run -S` writes `time: "10:00:00"` back as `time: 10:00:00`, a base-60 integer in YAML 1.1."""
    assert load_config(params_file_with(tmp_path, "slurm", "time", "10:00:00")).slurm.time == "10:00:00"
    assert load_config(PARAMS, ["slurm.time=10:00:00"]).slurm.time == "10:00:00"


def test_a_leading_zero_integer_is_refused_as_octal_in_yaml_11_and_decimal_in_12(tmp_path):
    path = params_file_with(tmp_path, "train", "seed", "010")
    line = path.read_text().splitlines().index("  seed: 010") + 1
    with pytest.raises(UserError, match=rf"^{path}:{line}: invalid YAML: 010 is octal in YAML 1.1 and decimal in"):
        load_config(path)
    with pytest.raises(UserError, match=r"^-s seed=010: 010 is octal in YAML 1\.1 .*write it without leading zeros"):
        load_config(PARAMS, ["seed=010"])


def test_a_yaml_11_boolean_word_is_refused_rather_than_read_as_a_string(tmp_path):
    with pytest.raises(UserError, match=r"train.nesterov='yes': expected true or false"):
        load_config(params_file_with(tmp_path, "train", "nesterov", "yes"))


@pytest.mark.parametrize("path", sorted((ROOT / "slurm/grids").glob("*.yaml")), ids=lambda path: path.name)
def test_the_shipped_grid_files_read_the_same_in_yaml_11_and_12(path):
    assert parse_yaml(path.read_text()) == yaml.safe_load(path.read_text())


def test_bad_params_file_errors_name_the_file_and_line(tmp_path):
    broken = tmp_path / "params.yaml"
    broken.write_text("data:\n  archive: null\n\traw_dir: data/raw\n")
    with pytest.raises(UserError, match=rf"{broken}:3: invalid YAML: found character '\\t'"):
        load_config(broken)
    with pytest.raises(UserError, match="params file not found"):
        load_config(tmp_path / "missing.yaml")


def test_missing_and_unknown_keys_in_a_file_are_named(tmp_path):
    params = read_params()
    params["tracking"]["colour"] = "blue"
    other = tmp_path / "params.yaml"
    other.write_text(yaml.safe_dump(params))
    with pytest.raises(
        UserError,
        match=rf"{other}: unknown key tracking.colour; valid: uri, experiment, system_metrics, ",
    ):
        load_config(other)
    del params["tracking"]["colour"]
    del params["train"]["seed"]
    other.write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match=rf"{other}: section 'train' is missing seed"):
        load_config(other)


BAD_TRAIN_VALUES = {
    "model": "resnet7",
    "optimizer": "adamm",
    "lr": 0,
    "momentum": -0.1,
    "nesterov": "maybe",
    "weight_decay": -1,
    "decay_norm_and_bias": 2,
    "scheduler": "linear",
    "warmup_epochs": -1,
    "lr_scaling": "cubic",
    "base_batch_size": 0,
    "batch_size": -8,
    "micro_batch_size": "half",
    "memory_limit_mb": 0,
    "memory_margin": 1.0,
    "max_epochs": 0,
    "precision": "fp8",
    "compile": "maybe",
    "accelerator": "tpu",
    "strategy": "fsdp",
    "devices": 0,
    "num_nodes": 0,
    "seed": -1,
    "limit_train_samples": 0,
    "target_accuracy": 0,
}

CONTRADICTIONS = [
    (["warmup_epochs=2", "max_epochs=2"], "warmup_epochs=2.0 must be < max_epochs=2"),
    (["max_epochs=1", "warmup_epochs=1"], "warmup_epochs=1.0 must be < max_epochs=1"),  # set on purpose: kept
    (
        ["nesterov=true", "optimizer=adam", "momentum=0.9"],
        "nesterov=true needs optimizer=sgd and momentum > 0 (got optimizer=adam, momentum=0.9)",
    ),
    (
        ["nesterov=true", "optimizer=sgd", "momentum=0"],
        "nesterov=true needs optimizer=sgd and momentum > 0 (got optimizer=sgd, momentum=0.0)",
    ),
    (["devices=2", "num_nodes=1", "strategy=auto"], "devices=2 x num_nodes=1 needs strategy=ddp"),
    (
        ["strategy=ddp", "devices=3", "num_nodes=1", "batch_size=128"],
        "batch_size=128 cannot be split over 3 ranks",
    ),
    (
        ["micro_batch_size=48", "batch_size=128", "devices=1", "num_nodes=1"],
        "micro_batch_size=48 must divide the per-rank batch 128",
    ),
]


def test_every_train_key_has_a_rejected_bad_value():
    assert set(BAD_TRAIN_VALUES) == {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in BAD_TRAIN_VALUES.items():
        with pytest.raises(UserError, match=rf"^-s: train\.{key}="):
            load_config(PARAMS, [f"{key}={value}"])


@pytest.mark.parametrize(("assignments", "expected"), CONTRADICTIONS)
def test_contradicting_keys_are_refused_before_training(assignments, expected):
    with pytest.raises(UserError) as error:
        load_config(PARAMS, assignments)
    assert expected in str(error.value)


# Runs `hpcsweep ARGS...` in-process, then says on its last stdout line whether torch got imported.
CLI_THEN_REPORT_TORCH = """
import sys
import typing
from hpcsweep.cli import main
try:
    main(sys.argv[1:], prog_name="hpcsweep")
except SystemExit as exit:
    code = exit.code
print("torch imported:", "torch" in sys.modules)
sys.exit(code)
"""


def run_cli_reporting_torch(folder, *arguments):
    return subprocess.run(
        [sys.executable, "-c", CLI_THEN_REPORT_TORCH, *arguments], cwd=folder, capture_output=True, text=True
    )


def test_help_and_config_errors_answer_without_importing_torch(tmp_path):
    """Importing torch takes seconds: --help, report --help and a mistyped -s key must not pay it."""
    shutil.copy(PARAMS, tmp_path / "params.yaml")

    for arguments, usage in [
        (["--help"], "Usage: hpcsweep [OPTIONS]"),
        (["report", "--help"], "Usage: hpcsweep report"),
    ]:
        answered = run_cli_reporting_torch(tmp_path, *arguments)
        assert (answered.returncode, answered.stderr) == (0, ""), answered.stderr
        assert answered.stdout.startswith(usage)
        assert answered.stdout.splitlines()[-1] == "torch imported: False"

    mistyped = run_cli_reporting_torch(tmp_path, "status", "somegrid", "-s", "bogus_key=1")
    assert mistyped.returncode == 1, mistyped.stderr
    assert mistyped.stderr.startswith("Error: -s: unknown key train.bogus_key; valid: model, optimizer, lr")
    assert mistyped.stderr.count("\n") == 1  # one line, no traceback
    assert mistyped.stdout == "torch imported: False\n"


@pytest.fixture
def notices(caplog):
    """The notice lines hpcsweep gives; each is given once per process, so start afresh."""
    from hpcsweep.params_file import notice_once

    notice_once.cache_clear()
    caplog.set_level(logging.WARNING, logger="hpcsweep")
    return caplog


def test_a_default_warmup_too_long_for_the_run_is_halved_with_one_notice(notices, tmp_path):
    params = read_params()
    params["train"]["warmup_epochs"] = 1  # the shipped default, whatever the user's file now says
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    config = load_config(path, ["max_epochs=1"])
    assert config.train.warmup_epochs == 0.5
    assert load_config(path, ["max_epochs=1"]).hash == config.hash
    assert [record.getMessage() for record in notices.records] == [
        "train.warmup_epochs=1.0 from the params file does not fit max_epochs=1: using warmup_epochs=0.5, "
        "half the run (set warmup_epochs to choose)"
    ]
    assert load_config(path, ["max_epochs=3"]).train.warmup_epochs == 1.0  # one that fits is kept


@pytest.mark.slow
def test_a_one_epoch_training_runs_on_the_default_warmup(prepared):
    project = prepared.parent.parent
    quick = [assignment for assignment in QUICK if not assignment.startswith("warmup_epochs=")]
    done = hpcsweep(["train", *overrides(*quick)], project, f"sqlite:///{project / 'mlflow.db'}", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after 1 epochs" in done.stdout
    assert "using warmup_epochs=0.5" in done.stderr


def project_paths(project, subfolder: str):
    """`project`'s params.yaml with every path relative, and the subfolder to run in."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(archive="archives/cifar.tar.gz", raw_dir="data/raw", prepared_dir="data/prepared")
    params["tracking"].update(checkpoint_dir="checkpoints", secrets_file="secrets.env")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / subfolder).mkdir(parents=True)
    return project / subfolder


@pytest.fixture
def searching(monkeypatch):
    """No params file named by the environment, and no tracking store chosen by it."""
    for name in ("HPCSWEEP_PARAMS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_from_a_subfolder_the_projects_params_file_is_used_and_named(project, searching, notices):
    searching.chdir(project_paths(project, "notebooks/deep"))
    config = load_config(None, ["optimizer=adam"])
    root = project.resolve()
    assert config.train.optimizer == "adam"
    assert (config.data.archive, config.data.raw_dir, config.data.prepared_dir) == (
        str(root / "archives/cifar.tar.gz"),
        str(root / "data/raw"),
        str(root / "data/prepared"),
    )
    assert (config.tracking.checkpoint_dir, config.tracking.secrets_file) == (
        str(root / "checkpoints"),
        str(root / "secrets.env"),
    )
    assert config.tracking.uri == f"sqlite:///{root / 'mlflow.db'}"
    assert [record.getMessage() for record in notices.records] == [f"using params file {root / 'params.yaml'}"]


def test_in_the_params_files_folder_paths_stay_as_written(project, searching, notices):
    project_paths(project, "sub")
    searching.chdir(project)
    config = load_config(None, ["data.raw_dir=elsewhere"])
    assert (config.data.raw_dir, config.data.prepared_dir, config.tracking.checkpoint_dir) == (
        "elsewhere",
        "data/prepared",
        "checkpoints",
    )
    assert config.tracking.uri is None and notices.records == []


def test_in_a_dvc_experiments_copy_the_store_checkpoints_and_archive_are_the_projects(project, searching):
    """`dvc exp run --temp/--queue` runs in a copy under .dvc/tmp/exps that is deleted afterwards."""
    project_paths(project, ".dvc/tmp/exps/tmpcopy/.dvc")
    copy = project / ".dvc/tmp/exps/tmpcopy"
    shutil.copy(project / "params.yaml", copy / "params.yaml")
    searching.chdir(copy)
    in_the_copy = load_config()
    searching.setenv("DVC_ROOT", str(project))  # DVC's name for the project, in every stage's environment
    config = load_config()
    root = project.resolve()
    assert config.tracking.uri == f"sqlite:///{root / 'mlflow.db'}"
    assert config.tracking.checkpoint_dir == str(root / "checkpoints")
    assert (config.data.archive, config.tracking.secrets_file) == (
        str(root / "archives/cifar.tar.gz"),
        str(root / "secrets.env"),
    )
    assert (config.data.raw_dir, config.data.prepared_dir) == ("data/raw", "data/prepared")  # DVC's outs: the copy's
    assert (in_the_copy.tracking.uri, in_the_copy.tracking.checkpoint_dir) == (None, "checkpoints")  # DVC_ROOT unset
    searching.chdir(project)
    assert load_config().tracking.uri is None  # `dvc repro` and `dvc exp run` in the project itself: as written


def test_the_environment_names_a_params_file_and_params_beats_it(project, searching, tmp_path):
    params = read_params()
    params["train"]["optimizer"] = "rmsprop"
    params["tracking"]["secrets_file"] = "~/.hpcsweep-secrets"
    other = tmp_path / "elsewhere" / "site.yaml"
    other.parent.mkdir()
    other.write_text(yaml.safe_dump(params))
    searching.chdir(project)
    searching.setenv("HPCSWEEP_PARAMS", str(other))
    config = load_config()
    assert config.train.optimizer == "rmsprop"
    assert config.data.raw_dir == str(other.parent.resolve() / "data/raw")
    assert config.tracking.secrets_file == "~/.hpcsweep-secrets"  # the home folder, wherever the file is
    assert load_config(project / "params.yaml").train.optimizer == read_params()["train"]["optimizer"]
    searching.setenv("HPCSWEEP_PARAMS", str(tmp_path / "missing.yaml"))
    with pytest.raises(UserError, match=f"^HPCSWEEP_PARAMS={tmp_path / 'missing.yaml'}: params file not found"):
        load_config()


@pytest.mark.parametrize("boundary", [".git", ".dvc"])
def test_the_search_stops_at_the_project_boundary(tmp_path, searching, boundary):
    shutil.copy(PARAMS, tmp_path / "params.yaml")  # outside the project: never used
    (tmp_path / "repo" / boundary).mkdir(parents=True)
    (tmp_path / "repo" / "sub").mkdir()
    searching.chdir(tmp_path / "repo" / "sub")
    with pytest.raises(UserError) as error:
        load_config()
    assert str(error.value).startswith("params.yaml: params file not found")
    assert "--params FILE" in str(error.value) and "HPCSWEEP_PARAMS" in str(error.value)


@pytest.mark.slow
def test_a_command_from_a_subfolder_uses_the_projects_params_and_tracking_store(project):
    subfolder = project_paths(project, "sub")
    (project / "secrets.env").write_text("")
    (project / "secrets.env").chmod(0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "HPCSWEEP_"))}
    done = subprocess.run(
        [sys.executable, "-m", "hpcsweep", "status", "no-such-grid"],
        cwd=subfolder,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "no grid named 'no-such-grid'" in done.stderr, done.stderr
    assert done.stderr.startswith(f"using params file {project.resolve() / 'params.yaml'}\n")
    assert (project / "mlflow.db").is_file() and not (subfolder / "mlflow.db").exists()


def every_float_key() -> list[str]:
    """`section.key` of every field that holds a float, read from the Config's own type hints."""
    keys = []
    for section, section_type in SECTIONS.items():
        for name, annotation in typing.get_type_hints(section_type).items():
            if float in (typing.get_args(annotation) or (annotation,)):
                keys.append(f"{section}.{name}")
    return keys


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan"])
def test_non_finite_floats_are_refused_for_every_float_key(text):
    keys = every_float_key()
    assert {"train.lr", "train.weight_decay", "tracking.flush_timeout_s"} <= set(keys)
    for key in keys:
        with pytest.raises(UserError) as error:
            load_config(PARAMS, [f"{key}={text}"])
        assert "expected a finite number" in str(error.value) and f"{key}=" in str(error.value), key


SLURM_INJECTIONS = {
    "partition": "gpu\nrm -rf ~",
    "account": "proj42 --time=99:00:00",
    "qos": "high\n#SBATCH --nodes=64",
    "extra": {"comment": "x --nodes=64"},
}


@pytest.mark.parametrize("key", SLURM_INJECTIONS)
def test_slurm_values_that_would_inject_a_line_or_an_option_are_refused(tmp_path, key):
    params = read_params()
    params["slurm"][key] = SLURM_INJECTIONS[key]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(UserError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: slurm.{key}=") and "\n" not in message
    assert "no spaces" in message


def test_ordinary_slurm_values_still_load():
    values = [
        "slurm.partition=gpu,debug",
        "slurm.account=proj-42.a",
        "slurm.qos=normal",
        "slurm.extra={constraint: 'a100&nvlink', gres: 'gpu:a100:2', mail-user: u@example.org, nice: -5}",
    ]
    slurm = load_config(PARAMS, values).slurm
    assert (slurm.partition, slurm.account, slurm.qos) == ("gpu,debug", "proj-42.a", "normal")
    assert slurm.extra == {"constraint": "a100&nvlink", "gres": "gpu:a100:2", "mail-user": "u@example.org", "nice": -5}
