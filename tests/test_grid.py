"""Grid files and the local executor: expansion, validation, MLflow structure, relaunch, Ctrl-C."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from helpers.project import ROOT, shipped_params
from helpers.runs import TINY, environment, grid_command, point_runs, write_grid
from helpers.synthetic import VAL_SIZE
from hpcsweep.errors import UserError
from hpcsweep.grid.executors.base import Batch
from hpcsweep.grid.executors.slurm import JobSpec, SlurmExecutor, render_job_script
from hpcsweep.grid.spec import Grid, expand, load_grid

ISSUE_EXAMPLE = {
    "name": "optimizers",
    "experiment": "cifar10-optimizers",
    "base": {"model": "resnet20", "max_epochs": 30},
    "grid": {"optimizer": ["sgd", "adam", "rmsprop"], "batch_size": [128, 1024]},
    "variants": [{"optimizer": "sgd", "lr": 0.1}, {"optimizer": "adam", "lr": 0.001}],
    "exclude": [{"optimizer": "rmsprop", "batch_size": 1024}],
    "seeds": [0, 1, 2],
}


def test_variants_select_the_grid_points_they_agree_with_and_set_their_other_keys():
    points = expand(ISSUE_EXAMPLE)
    assert len(points) == (3 * 2 - 1) * 3
    assert all(p["lr"] == 0.1 for p in points if p["optimizer"] == "sgd")
    assert all(p["lr"] == 0.001 for p in points if p["optimizer"] == "adam")
    assert all("lr" not in p for p in points if p["optimizer"] == "rmsprop")  # keeps the base value
    assert {"optimizer": "rmsprop", "batch_size": 1024, "seed": 0} not in points
    assert [p["seed"] for p in points[:3]] == [0, 1, 2]


def test_variants_without_grid_keys_cross_the_grid():
    spec = {"grid": {"batch_size": [128, 256]}, "variants": [{"lr": 0.1}, {"lr": 0.2, "momentum": 0.8}]}
    assert expand(spec) == [
        {"batch_size": 128, "lr": 0.1},
        {"batch_size": 128, "lr": 0.2, "momentum": 0.8},
        {"batch_size": 256, "lr": 0.1},
        {"batch_size": 256, "lr": 0.2, "momentum": 0.8},
    ]


def test_every_point_is_a_full_validated_config_with_a_stable_id(tmp_path):
    grid = load_grid(write_grid(tmp_path, ISSUE_EXAMPLE), ROOT / "params.yaml", {"max_epochs": 2})
    assert len(grid.points) == 15 and grid.experiment == "cifar10-optimizers"
    assert all(p.config.train.max_epochs == 2 for p in grid.points)  # -s beats base
    assert len({p.config.hash for p in grid.points}) == 15
    again = load_grid(write_grid(tmp_path, ISSUE_EXAMPLE), ROOT / "params.yaml", {"max_epochs": 2})
    assert [p.config.hash for p in again.points] == [p.config.hash for p in grid.points]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({**ISSUE_EXAMPLE, "colour": "red"}, "unknown key 'colour'; valid: name, experiment, base, grid, variants"),
        ({"name": "x", "grid": {}}, "empty grid: give at least one of grid, variants or seeds"),
        ({"name": "x", "grid": {"lr": []}}, "grid.lr must be a non-empty list"),
        (
            {"name": "x", "grid": {"optimizer": ["sgd", "adamm"]}},
            "point 1 (optimizer=adamm): train.optimizer='adamm': valid: sgd, adam",
        ),
        ({"name": "x", "grid": {"lr": [0.1]}, "base": {"colour": 1}}, "unknown key train.colour"),
        ({"name": "x", "grid": {"lr": [0.1]}, "slurm": {"time": "2h"}}, "slurm.time='2h': expected [D-]HH:MM:SS"),
        ({"name": "bad name!", "grid": {"lr": [0.1]}}, "name must be a word"),
    ],
)
def test_bad_grid_files_are_one_clear_line(tmp_path, spec, expected):
    path = write_grid(tmp_path, spec)
    with pytest.raises(UserError) as error:
        load_grid(path, ROOT / "params.yaml", {})
    assert expected in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


TUNED = {"name": "x", "grid": {"optimizer": ["sgd", "adam"], "lr": [0.1, 0.01]}, "base": {"max_epochs": 4}}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"tune": ["momentum"]}, "tune: 'momentum' is not varied by the grid; a tuned key is a grid axis or a variant"),
        ({"tune": "lr"}, "tune must be a list, got str"),
        ({"prune": {"rule": "hyperband"}}, "prune.rule='hyperband': valid: median, percentile, successive_halving"),
        ({"prune": "median"}, "prune must be a mapping, e.g. {rule: median, rung_epochs: [1, 2]}, got 'median'"),
        ({"prune": {"rule": "median"}}, "prune.rung_epochs is required for rule median"),
        ({"prune": {"rule": "median", "rung_epochs": [1], "min_epochs": 1}}, "prune.min_epochs: not a key of rule"),
        (
            {"prune": {"rule": "median", "rung_epochs": [2, 1]}},
            "prune.rung_epochs=[2, 1]: expected epochs in increasing",
        ),
        ({"prune": {"rule": "median", "rung_epochs": [0]}}, "prune.rung_epochs=0: expected a whole number >= 1"),
        ({"prune": {"rule": "median", "rung_epochs": [1], "startup_points": True}}, "startup_points=True: expected"),
        ({"prune": {"rule": "percentile", "rung_epochs": [1], "keep_percent": 100}}, "keep_percent=100: expected a"),
        (
            {"prune": {"rule": "successive_halving", "reduction_factor": 1}},
            "prune.reduction_factor=1: expected a whole",
        ),
        ({"prune": {"rule": "median", "rung_epochs": [4, 8]}}, "prune: no rung comes before max_epochs=4, so no"),
    ],
)
def test_bad_tune_and_prune_keys_are_one_clear_line(tmp_path, changes, expected):
    path = write_grid(tmp_path, {**TUNED, **changes})
    with pytest.raises(UserError) as error:
        load_grid(path, ROOT / "params.yaml", {})
    assert expected in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_tuned_keys_and_pruning_settings_are_read_from_the_grid_file(tmp_path):
    spec = {
        **TUNED,
        "variants": [{"optimizer": "sgd", "momentum": 0.8}],
        "tune": ["lr", "momentum"],
        "prune": {"rule": "successive_halving", "min_epochs": 1, "reduction_factor": 3},
    }
    grid = load_grid(write_grid(tmp_path, spec), ROOT / "params.yaml", {})
    assert grid.tune == ("lr", "momentum")  # an axis and a variant key
    assert grid.prune.rule == "successive_halving" and grid.prune.rungs(max_epochs=4) == [1, 3]
    untuned = load_grid(write_grid(tmp_path, TUNED), ROOT / "params.yaml", {})
    assert untuned.tune == () and untuned.prune is None


def test_a_yaml_error_names_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ngrid:\n  lr: [0.1, 0.2\nseeds: [0]\n")
    with pytest.raises(UserError, match=rf"{path}:4: invalid YAML"):
        load_grid(path, ROOT / "params.yaml", {})


def snapshot_job_spec(**changes) -> JobSpec:
    """The job array tests/snapshots/job-array.sbatch holds, with `changes`."""
    spec = JobSpec(
        name="hpcsweep-optimizers",
        array_size=12,
        max_parallel=4,
        nodes=2,
        tasks_per_node=4,
        cpus_per_task=8,
        mem="32G",
        time="02:00:00",
        workdir=Path("/home/u/study"),
        log_dir=Path("/home/u/study/runs/optimizers/20260101-000000/logs"),
        command=["/home/u/study/.venv/bin/python", "-m", "hpcsweep", "run-point", "/p/points-0.json"],
        gpus_per_node=4,
        partition="gpu",
        account="proj42",
        setup=["module load cuda/12.4"],
        extra={"constraint": "a100"},
    )
    return dataclasses.replace(spec, **changes)


def test_rendered_job_script_matches_the_snapshot():
    expected = (Path(__file__).parent / "snapshots" / "job-array.sbatch").read_text()
    assert render_job_script(snapshot_job_spec()) == expected


def test_unknown_extra_sbatch_options_and_bad_templates_are_refused():
    spec = snapshot_job_spec(extra={"ntasks": 8})
    with pytest.raises(UserError, match="unknown or config-controlled option 'ntasks'; valid: account, begin"):
        render_job_script(spec)
    with pytest.raises(UserError, match="option 'gpu-bind'"):  # each task must see every GPU of its node
        render_job_script(snapshot_job_spec(extra={"gpu-bind": "single:1"}))
    ok = snapshot_job_spec(extra={})
    with pytest.raises(UserError, match=r"unknown or malformed placeholder 'gpus'"):
        render_job_script(ok, "#!/bin/bash\n${directives}\n${gpus}\n")


@pytest.mark.slow
def test_local_grid_makes_one_parent_and_a_child_per_point_and_relaunch_skips_finished(
    prepared, tracking_server, tmp_path
):
    project = prepared.parent.parent
    name = f"local{os.getpid()}"
    spec = {
        "name": name,
        "experiment": f"{name}-exp",
        "base": TINY,
        "grid": {"optimizer": ["sgd", "adam"]},
        "variants": [{"optimizer": "adam", "lr": 0.001}],
        "exclude": [],
        "seeds": [0],
    }
    grid = write_grid(project, spec)
    bad = write_grid(
        project,
        {
            **spec,
            "grid": {"optimizer": ["sgd", "adam", "rmsprop"]},
            "variants": [*spec["variants"], {"optimizer": "rmsprop", "memory_limit_mb": 1}],
        },
        "with-failure.yaml",
    )
    done = subprocess.run(
        grid_command(bad), cwd=project, env=environment(tracking_server), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # piped, as into a job log: each point announced, one plain line per epoch, its outcome, time left
    progress = [line for line in done.stdout.splitlines() if line.startswith(("point ", "epoch "))]
    assert [line.split("  ")[0].split(" in ")[0] for line in progress] == [
        "point 1/3: optimizer=sgd, seed=0",
        "epoch 1/1",
        "point 1/3 done",
        "point 2/3: optimizer=adam, lr=0.001, seed=0",
        "epoch 1/1",
        "point 2/3 done",
        "point 3/3: optimizer=rmsprop, memory_limit_mb=1, seed=0",
        "point 3/3 failed",
    ]
    assert "val/acc" in progress[1] and progress[2].endswith(" left") and progress[-1].endswith("(exit 1)")
    runs = point_runs(tracking_server, name)
    parents = [r for r in runs if r.data.tags["hpcsweep.role"] == "launch"]
    children = [r for r in runs if r.data.tags["hpcsweep.role"] == "point"]
    assert len(parents) == 1 and len(children) == 3
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    statuses = {c.data.params["optimizer"]: c.info.status for c in children}
    assert statuses == {"sgd": "FINISHED", "adam": "FINISHED", "rmsprop": "FAILED"}
    artifacts = {a.path for a in mlflow.MlflowClient(tracking_server).list_artifacts(parents[0].info.run_id, "launch")}
    assert artifacts == {"launch/with-failure.yaml", "launch/points.json", "launch/command.txt"}

    again = subprocess.run(
        grid_command(bad), cwd=project, env=environment(tracking_server), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 of 3 points to run" in again.stdout  # only the failed point goes again, into a new run
    rmsprop = [r for r in point_runs(tracking_server, name) if r.data.params.get("optimizer") == "rmsprop"]
    assert len(rmsprop) == 2

    done = subprocess.run(
        grid_command(grid), cwd=project, env=environment(tracking_server), capture_output=True, text=True
    )
    assert "nothing to do" in done.stdout and len(point_runs(tracking_server, name)) == len(runs) + 2

    status = subprocess.run(
        [sys.executable, "-m", "hpcsweep", "status", name],
        cwd=project,
        env=environment(tracking_server),
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1] == "3 points: 1 FAILED, 2 FINISHED"


@pytest.mark.slow
def test_ctrl_c_kills_the_running_point_and_leaves_the_others_scheduled(prepared, tracking_server):
    project = prepared.parent.parent
    name = f"ctrlc{os.getpid()}"
    grid = write_grid(
        project,
        {"name": name, "base": {**TINY, "max_epochs": 5, "batch_size": 10, "base_batch_size": 10}, "seeds": [0, 1, 2]},
    )
    process = subprocess.Popen(
        grid_command(grid),
        cwd=project,
        env=environment(tracking_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as from a terminal: a test run in the background of a non-interactive shell ignores SIGINT,
        # and the launcher would inherit that and rightly go on (as under nohup)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    while not any(
        r.info.status == "RUNNING" and r.data.metrics.get("val/acc") is not None
        for r in point_runs(tracking_server, name)
    ):
        assert time.monotonic() < deadline and process.poll() is None, "the first point never ran"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    process.communicate(timeout=120)
    assert process.returncode != 0
    children = [r for r in point_runs(tracking_server, name) if r.data.tags["hpcsweep.role"] == "point"]
    assert sorted(r.info.status for r in children) == ["KILLED", "SCHEDULED", "SCHEDULED"]

    cancel = subprocess.run(
        [sys.executable, "-m", "hpcsweep", "cancel", name, "--yes"],
        cwd=project,
        env=environment(tracking_server),
        capture_output=True,
        text=True,
    )
    assert cancel.returncode == 0 and "2 runs marked KILLED" in cancel.stdout
    assert {r.info.status for r in point_runs(tracking_server, name) if r.data.tags["hpcsweep.role"] == "point"} == {
        "KILLED"
    }


@pytest.mark.slow
def test_status_of_an_unknown_grid_is_a_clear_error(project, tracking_server):
    done = subprocess.run(
        [sys.executable, "-m", "hpcsweep", "status", "no-such-grid"],
        cwd=project,
        env=environment(tracking_server),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "no grid named 'no-such-grid'" in done.stderr


@pytest.mark.slow
def test_dry_run_writes_scripts_and_points_and_creates_no_run(prepared, tracking_server):
    project = prepared.parent.parent
    name = f"dry{os.getpid()}"
    grid = write_grid(
        project,
        {
            "name": name,
            "base": TINY,
            "grid": {"optimizer": ["sgd", "adam"], "devices": [1, 2]},
            "variants": [],
            "seeds": [0],
        },
    )
    done = subprocess.run(
        grid_command(grid, "--executor", "slurm", "--dry-run", "-s", "strategy=ddp"),
        cwd=project,
        env={**environment(tracking_server), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    scripts = sorted(project.glob(f"runs/{name}/*/job-*.sbatch"))
    assert len(scripts) == 2  # one array per resource shape: 1 and 2 tasks per node
    assert {"#SBATCH --ntasks-per-node=1", "#SBATCH --ntasks-per-node=2"} <= {
        line for script in scripts for line in script.read_text().splitlines()
    }
    assert len(sorted(project.glob(f"runs/{name}/*/points-*.json"))) == 2
    assert point_runs(tracking_server, name) == []


@pytest.mark.slow  # about 10 s: the CLI's imports
def test_a_grid_asking_for_another_val_size_than_the_data_was_prepared_with_is_refused_before_any_run(prepared):
    project = prepared.parent.parent
    name, uri = f"valsize{os.getpid()}", f"sqlite:///{project / 'mlflow.db'}"
    grid = write_grid(project, {"name": name, "base": TINY, "grid": {"optimizer": ["sgd"]}, "seeds": [0]})
    done = subprocess.run(
        grid_command(grid, "-s", "data.val_size=7"), cwd=project, env=environment(uri), capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr == (
        f"Error: data.val_size=7 but {prepared.resolve()} was prepared with {VAL_SIZE}; "
        "run `hpcsweep prepare` again (dvc repro prepare)\n"
    )
    assert not (project / "runs").exists()  # no launch folder
    assert not (project / "mlflow.db").exists() or point_runs(uri, name) == []


ON_GPU = {"accelerator": {"gpu"}, "micro_batch_size": {"auto"}}  # micro-batches that fit the GPU's memory
SINGLE_GPU = {**ON_GPU, "devices x num_nodes": {(1, 1)}}
ALL_OPTIMIZERS = {"sgd", "adam", "adamw", "rmsprop", "adagrad", "lars", "lamb"}
BATCH_SIZES = {32, 128, 512, 2048, 8192}
LARGE_BATCH_OPTIMIZERS = {"sgd", "lars", "lamb"}
# what each study grid's comment promises, as the values its points take ("a x b": pairs of values)
STUDY_GRIDS = {
    "optimizers": {**SINGLE_GPU, "optimizer": ALL_OPTIMIZERS, "batch_size": {512}, "precision": {"auto"}},
    "batch_sizes": {
        **SINGLE_GPU,
        "batch_size": BATCH_SIZES,
        "optimizer": LARGE_BATCH_OPTIMIZERS,
        "precision": {"auto"},
    },
    "parallel": {
        **ON_GPU,
        "devices x num_nodes": {(1, 1), (2, 1), (4, 1), (8, 1), (4, 2), (8, 2)},
        "batch_size": {1024},
        "precision": {"auto"},
    },
    "precision": {**SINGLE_GPU, "precision": {"32-true", "bf16-mixed", "16-mixed"}},
    "p100-optimizers": {**SINGLE_GPU, "optimizer": ALL_OPTIMIZERS, "batch_size": {512}, "precision": {"16-mixed"}},
    "p100-batch-sizes": {
        **SINGLE_GPU,
        "batch_size": BATCH_SIZES,
        "optimizer": LARGE_BATCH_OPTIMIZERS,
        "precision": {"16-mixed"},
    },
    "p100-parallel": {
        **ON_GPU,
        "devices x num_nodes": {(1, 1), (2, 1), (4, 1), (4, 2)},
        "batch_size": {1024},
        "precision": {"16-mixed"},
    },
    "p100-precision": {**SINGLE_GPU, "precision": {"32-true", "16-mixed"}},
    "cpu-demo": {"accelerator": {"cpu"}, "optimizer": {"sgd", "adam"}, "batch_size": {256}},
}
PASCAL_PRECISIONS = {"32-true", "16-mixed"}  # no bf16 on a P100; named, so the grid means the same elsewhere
P100_GPUS_PER_NODE = 4
P100_MEMORY_MB = 16 * 1024


def values_taken(grid: Grid, key: str) -> set:
    """The values train key `key` takes over the grid's points; "a x b" gives (a, b) pairs."""
    names = key.split(" x ")
    pairs = {tuple(getattr(point.config.train, name) for name in names) for point in grid.points}
    return pairs if len(names) > 1 else {value for (value,) in pairs}


@pytest.mark.parametrize("grid_file", sorted((ROOT / "slurm/grids").glob("*.yaml")), ids=lambda p: p.name)
def test_the_study_grids_are_valid_portable_and_keep_their_comments_promises(grid_file):
    grid = load_grid(grid_file, ROOT / "params.yaml", {})
    assert grid.name == grid_file.stem and grid.points
    SlurmExecutor().check_points(grid.points)  # what a launch refuses: short time limits, accelerator auto
    assert {point.config.slurm.partition for point in grid.points} == {None}  # the site's -s slurm.partition
    for key, promised in STUDY_GRIDS.get(grid.name, {}).items():
        assert values_taken(grid, key) == promised, key
    if grid.name.startswith("p100-"):
        assert values_taken(grid, "precision") <= PASCAL_PRECISIONS
        assert max(values_taken(grid, "devices")) <= P100_GPUS_PER_NODE
        assert all((point.config.train.memory_limit_mb or 0) <= P100_MEMORY_MB for point in grid.points)


def test_every_study_grid_with_promises_exists():
    assert set(STUDY_GRIDS) <= {path.stem for path in (ROOT / "slurm/grids").glob("*.yaml")}


def test_a_slurm_launch_refuses_accelerator_auto_in_one_line_before_writing_anything(project):
    grid = write_grid(project, {"name": "unasked", "grid": {"lr": [0.1]}})  # params.yaml's accelerator: auto
    done = subprocess.run(
        grid_command(grid, "--executor", "slurm", "--dry-run"), cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert done.stderr == (
        "Error: point 0 (lr=0.1): accelerator=auto would get no GPU from SLURM; set accelerator: gpu "
        "(hpcsweep then asks for --gpus-per-node=devices) or accelerator: cpu\n"
    )
    assert not (project / "runs").exists()


def config_on_gpu(config, devices: int):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, accelerator="gpu", devices=devices))


@pytest.mark.parametrize(
    ("extra", "refused", "gpus"),
    [
        ({"gres": "gpu:2"}, "gres=gpu:2", 2),
        ({"constraint": "p100", "gres": "craynetwork:1,gpu:p100:2"}, "gres=craynetwork:1,gpu:p100:2", 2),
        ({"gres": "shard:1"}, "gres=shard:1", 1),  # a share of one GPU
        ({"mem-per-gpu": "16G"}, "mem-per-gpu=16G", 1),
        ({"gres": "craynetwork:1", "constraint": "gpu_node"}, None, 1),  # no GPU asked for
    ],
)
def test_cpu_points_whose_slurm_extra_asks_for_gpus_are_refused(tmp_path, extra, refused, gpus):
    spec = {"name": "cpu", "base": {"accelerator": "cpu"}, "grid": {"seed": [0]}, "slurm": {"extra": extra}}
    points = load_grid(write_grid(tmp_path, spec), ROOT / "params.yaml", {}).points
    if refused is None:
        SlurmExecutor().check_points(points)
        return
    with pytest.raises(UserError) as error:
        SlurmExecutor().check_points(points)
    assert str(error.value) == (
        f"point 0 (seed=0): accelerator=cpu, but slurm.extra {refused} asks SLURM for GPUs the training would "
        f"leave idle; set accelerator: gpu (hpcsweep then asks for --gpus-per-node=devices) or drop "
        f"{refused.split('=')[0]} from slurm.extra"
    )
    points[0] = dataclasses.replace(points[0], config=config_on_gpu(points[0].config, gpus))
    SlurmExecutor().check_points(points)  # the same request for a GPU training on its GPUs is what it needs


def rendered_directives(tmp_path: Path, train: dict, slurm: dict | None = None) -> list[str]:
    """The job script SlurmExecutor writes for one point of `train` (and `slurm`) settings, read back."""
    spec = {"name": "shape", "base": train, "seeds": [0], **({"slurm": slurm} if slurm else {})}
    grid = load_grid(write_grid(tmp_path, spec), ROOT / "params.yaml", {})
    batch = Batch(0, grid.name, grid.points, tmp_path / "launch")
    SlurmExecutor().prepare(batch)
    return batch.script.read_text().splitlines()


def test_devices_and_nodes_of_a_real_config_become_tasks_and_gpus_per_node_and_srun_gets_the_cpus(tmp_path):
    multi_node = rendered_directives(tmp_path, {"accelerator": "gpu", "devices": 4, "num_nodes": 2, "strategy": "ddp"})
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4"} <= set(multi_node)
    assert "#SBATCH --cpus-per-task=4" in multi_node  # params.yaml's slurm.cpus_per_task
    (srun,) = [line for line in multi_node if line.startswith("srun ")]
    assert srun.startswith('srun --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" ')
    on_cpu = rendered_directives(tmp_path, {"accelerator": "cpu", "devices": 2, "strategy": "ddp"})
    assert {"#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=2"} <= set(on_cpu)
    assert not [line for line in on_cpu if line.startswith("#SBATCH") and "gpu" in line]


def test_gpus_named_in_slurm_extras_gres_replace_gpus_per_node_and_must_match_the_devices(tmp_path):
    """A site that wants a GPU type (`gres: gpu:a100:2`) or a share of one (`shard:1`) names it in
    slurm.extra; asked for again with --gpus-per-node, SLURM would count the GPUs twice."""
    train = {"accelerator": "gpu", "devices": 2, "strategy": "ddp"}
    typed = rendered_directives(tmp_path, train, {"extra": {"gres": "gpu:a100:2"}})
    assert "#SBATCH --gres=gpu:a100:2" in typed and "#SBATCH --ntasks-per-node=2" in typed
    assert not [line for line in typed if line.startswith("#SBATCH --gpus")]
    shared = rendered_directives(tmp_path, {"accelerator": "gpu"}, {"extra": {"gres": "shard:1"}})
    assert "#SBATCH --gres=shard:1" in shared and not [line for line in shared if line.startswith("#SBATCH --gpus")]
    spec = {"name": "typed", "base": train, "seeds": [0], "slurm": {"extra": {"gres": "gpu:a100:4"}}}
    points = load_grid(write_grid(tmp_path, spec), ROOT / "params.yaml", {}).points
    with pytest.raises(UserError) as error:
        SlurmExecutor().check_points(points)
    assert str(error.value) == (
        "point 0 (seed=0): slurm.extra gres=gpu:a100:4 asks SLURM for 4 GPU(s) per node and train.devices=2 "
        "trains on 2: make them agree (with GPUs in slurm.extra's gres, hpcsweep asks for no --gpus-per-node "
        "of its own)"
    )


def test_a_rendered_job_script_turns_telemetry_off_unless_the_job_environment_chose(tmp_path):
    spec = snapshot_job_spec(command=["env"], setup=[])
    script = tmp_path / "job.sh"
    # a site's own template: the defaults come with its ${setup}
    script.write_text(render_job_script(spec, "#!/bin/bash\n${directives}\n${setup}\n${command}\n"))
    variables = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    unset = {name: value for name, value in os.environ.items() if name not in variables}
    for chosen, expected in (({}, "true"), (dict.fromkeys(variables, "false"), "false")):
        done = subprocess.run(["bash", script], env={**unset, **chosen}, capture_output=True, text=True, check=True)
        assert {f"{name}={expected}" for name in variables} <= set(done.stdout.splitlines())


def test_a_grid_whose_base_runs_one_epoch_expands_with_the_default_warmup_fitted(tmp_path):
    spec = {"name": "short", "base": {"max_epochs": 1}, "grid": {"optimizer": ["sgd", "adam"]}}
    params = shipped_params(tmp_path / "params.yaml")  # its 1-epoch warm-up, whatever a user set here
    grid = load_grid(write_grid(tmp_path, spec), params, {})
    assert [p.config.train.warmup_epochs for p in grid.points] == [0.5, 0.5]
    point = {**spec, "base": {"max_epochs": 1, "warmup_epochs": 1}}  # set on purpose: refused
    with pytest.raises(UserError, match=r"warmup_epochs=1\.0 must be < max_epochs=1"):
        load_grid(write_grid(tmp_path, point), params, {})


def test_grid_finds_the_projects_params_file_from_a_subfolder(project):
    (project / "sub").mkdir()
    grid = write_grid(project / "sub", {"name": "bad", "grid": {"optimizer": ["bogus"]}})
    env = {key: value for key, value in os.environ.items() if key != "HPCSWEEP_PARAMS"}
    done = subprocess.run(grid_command(grid), cwd=project / "sub", env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"using params file {project.resolve() / 'params.yaml'}",
        f"Error: {grid}: point 0 (optimizer=bogus): train.optimizer='bogus': "
        "valid: sgd, adam, adamw, rmsprop, adagrad, lars, lamb",
    ]


def test_a_million_point_grid_is_refused_from_its_axes_before_any_point_is_validated(tmp_path):
    axes = {"lr": [0.001 * (i + 1) for i in range(1000)], "momentum": [0.0005 * i for i in range(1000)]}
    for spec, words in [
        ({"name": "huge", "grid": axes}, "at least 1000000 points (1000 x 1000 from the axes and seeds)"),
        ({"name": "huge", "grid": axes, "exclude": [{"lr": 0.001}]}, "over 1000 points"),
    ]:
        path = write_grid(tmp_path, spec)
        started = time.monotonic()
        with pytest.raises(UserError) as error:
            load_grid(path, ROOT / "params.yaml", {})
        assert time.monotonic() - started < 10  # validating the points would take most of an hour
        assert str(error.value) == f"{path}: {words}; grids over 1000 need --yes"


def test_the_size_limit_counts_points_after_excludes_and_yes_lifts_it(tmp_path):
    spec = {"name": "small", "grid": {"lr": [0.1, 0.2, 0.3, 0.4]}, "seeds": [0, 1, 2], "exclude": [{"lr": 0.4}]}
    path = write_grid(tmp_path, spec)
    assert len(load_grid(path, ROOT / "params.yaml", {}, max_points=9).points) == 9
    with pytest.raises(UserError, match=r"over 8 points; grids over 8 need --yes"):
        load_grid(path, ROOT / "params.yaml", {}, max_points=8)
    assert len(load_grid(path, ROOT / "params.yaml", {}, max_points=None).points) == 9


@pytest.mark.parametrize(
    ("slurm", "words"),
    [
        ({"partition": "gpu\necho pwned"}, "slurm.partition='gpu\\necho pwned': expected a SLURM name"),
        ({"qos": "normal\n#SBATCH --nodes=64"}, "slurm.qos='normal\\n#SBATCH --nodes=64': expected a SLURM name"),
        ({"extra": {"comment": "x --time=99:00:00"}}, "comment='x --time=99:00:00': expected one sbatch value"),
    ],
)
def test_slurm_values_of_a_grid_that_would_inject_into_the_job_script_are_refused(tmp_path, slurm, words):
    path = write_grid(tmp_path, {"name": "inject", "grid": {"lr": [0.1]}, "slurm": slurm})
    with pytest.raises(UserError) as error:
        load_grid(path, ROOT / "params.yaml", {})
    assert words in str(error.value) and f"{path}: point 0" in str(error.value) and "\n" not in str(error.value)


def test_a_dry_run_with_an_injected_partition_exits_with_one_line_and_writes_no_job_script(project):
    grid = write_grid(project, {"name": "inject", "grid": {"lr": [0.1]}, "slurm": {"partition": "gpu\necho pwned"}})
    done = subprocess.run(
        [*grid_command(grid, "--executor", "slurm", "--dry-run")], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "slurm.partition='gpu\\necho pwned': expected a SLURM name" in done.stderr
    assert not list(project.rglob("*.sbatch"))


def test_a_key_is_taken_from_params_then_base_then_point_then_the_command_line(tmp_path):
    """Precedence: params.yaml < base < point < -s, one key settled at each level."""
    spec = {
        "name": "precedence",
        "base": {"lr": 0.2, "momentum": 0.8, "weight_decay": 0.001},
        "grid": {"lr": [0.3], "momentum": [0.7]},
    }
    [point] = load_grid(write_grid(tmp_path, spec), ROOT / "params.yaml", {"momentum": 0.6}).points
    train = point.config.train
    assert train.batch_size == 128  # params.yaml only
    assert train.weight_decay == 0.001  # base over params.yaml
    assert train.lr == 0.3  # point over base
    assert train.momentum == 0.6  # -s over the point
