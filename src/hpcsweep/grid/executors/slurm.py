"""SLURM: render a job-array script, submit it, cancel (reading job states back: slurm_states.py).

Each piece is a small function with one job (as in submitit): `render_job_script` is pure and
typed, `submit_array` only runs sbatch, the parsers only parse; `SlurmExecutor` puts them
behind the executor interface. One array per resource shape, cut into several where it holds more
points than the cluster's MaxArraySize allows (`scontrol show config`); each task reads its point from the
JSON file written at launch and runs `srun` with one task per device, so Lightning's
SLURMEnvironment sets up DDP from SLURM's variables. `--signal=SIGUSR1@90` with `--requeue` lets
Lightning checkpoint and requeue before a time limit or preemption; the restarted task resumes
into the same MLflow run. A time limit must leave at least as much training as the signal's lead,
or every restart would be signalled at once and requeue again.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from hpcsweep.atomic import atomic_file
from hpcsweep.config import Config
from hpcsweep.errors import UserError
from hpcsweep.grid.executors.base import Batch, BatchRuns, Executor
from hpcsweep.grid.executors.slurm_states import queued_states, slurm_output
from hpcsweep.grid.spec import Point
from hpcsweep.telemetry import shell_defaults
from hpcsweep.tracking.credentials import environment_for_jobs

# sbatch long options a grid's slurm.extra may set; the ones rendered from the config
# (nodes, ntasks-per-node, time, ...) are not among them, so they cannot contradict it. No gpu-bind:
# every task must see all GPUs of its node (see DEFAULT_TEMPLATE)
EXTRA_OPTIONS = tuple(
    """account begin comment constraint cluster-constraint clusters contiguous core-spec cores-per-socket
    dependency exclude exclusive gpu-freq gres gres-flags hint licenses mail-type mail-user mem-bind
    mem-per-cpu mem-per-gpu mincpus network nice nodelist power prefer priority profile propagate
    reservation sockets-per-node switches thread-spec threads-per-core tmp uid wckey""".split()
)

# SIGUSR1 comes this long before the time limit: Lightning's checkpoint and requeue must fit in it
REQUEUE_SIGNAL_LEAD_S = 90
TIME_LIMIT = re.compile(r"(?:(\d+)-)?(\d+):(\d+):(\d+)")  # slurm.time, as config.py allows it
GPU_GRES_NAMES = ("gpu", "shard", "mps")  # gres=gpu:2, gpu:a100:2, shard:4, mps:50: GPUs or a share of one
# array task ids run from 0 to MaxArraySize - 1; Slurm's default, for where scontrol cannot say (a dry run
# off the cluster)
DEFAULT_MAX_ARRAY_SIZE = 1001
MAX_ARRAY_SIZE = re.compile(r"^MaxArraySize\s*=\s*(\d+)\s*$", re.MULTILINE)  # a `scontrol show config` line
LOG_FOLDER = "logs"  # in the launch folder
LOG_PATTERN = "%A_%a.out"  # one log per array task, kept across requeues (--open-mode=append)

DEFAULT_TEMPLATE = """#!/bin/bash
${directives}

# rendered by hpcsweep: task $$SLURM_ARRAY_TASK_ID of this array trains point $$SLURM_ARRAY_TASK_ID
set -euo pipefail
# SIGUSR1 is for the training step (Lightning checkpoints and requeues); the batch shell would
# die of it (`scancel --signal=USR1 --full`, `--signal=B:USR1`), failing the job under it
trap 'echo "hpcsweep: SIGUSR1 reached the batch shell; the training step handles it"' USR1
${setup}
# the first node of the allocation hosts the process group (sites whose node names do not
# resolve set HPCSWEEP_MASTER_ADDR)
export MASTER_ADDR="$${HPCSWEEP_MASTER_ADDR:-$$(scontrol show hostnames "$$SLURM_JOB_NODELIST" | head -n 1)}"
# since Slurm 22.05 srun no longer takes --cpus-per-task from sbatch: without it every rank gets one CPU.
# No --gpus-per-task or --gpu-bind: each task sees every GPU of its node and Lightning picks
# cuda:LOCAL_RANK; a task bound to one GPU would find no cuda:1..N-1.
srun --kill-on-bad-exit=1 --cpus-per-task="$$SLURM_CPUS_PER_TASK" ${command} "$$SLURM_ARRAY_TASK_ID"
"""


@dataclass(frozen=True)
class JobSpec:
    """Everything a job-array script says, in SLURM's own terms."""

    name: str
    array_size: int
    max_parallel: int
    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    mem: str
    time: str
    workdir: Path
    log_dir: Path
    command: list[str]
    gpus_per_node: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    setup: list[str] = field(default_factory=list)
    extra: dict[str, str | int] = field(default_factory=dict)


def check_extra_options(extra: dict[str, str | int]) -> None:
    for option in extra:
        if option not in EXTRA_OPTIONS:
            raise UserError(
                f"slurm.extra: unknown or config-controlled option {option!r}; valid: "
                f"{', '.join(EXTRA_OPTIONS)} (nodes, tasks, gpus, time and memory come from the config)"
            )


def directives(spec: JobSpec) -> list[str]:
    options = {
        "job-name": spec.name,
        "array": f"0-{spec.array_size - 1}%{spec.max_parallel}",
        "nodes": spec.nodes,
        "ntasks-per-node": spec.tasks_per_node,
        "cpus-per-task": spec.cpus_per_task,
        "mem": spec.mem,
        "time": spec.time,
        "chdir": spec.workdir,
        "output": spec.log_dir / LOG_PATTERN,
        "open-mode": "append",
        "signal": f"SIGUSR1@{REQUEUE_SIGNAL_LEAD_S}",
        "gpus-per-node": spec.gpus_per_node,
        "partition": spec.partition,
        "account": spec.account,
        "qos": spec.qos,
        **spec.extra,
    }
    lines = [f"#SBATCH --{name}={value}" for name, value in options.items() if value is not None]
    return [*lines, "#SBATCH --requeue"]


def time_limit_s(time: str) -> int:
    days, hours, minutes, seconds = (int(part or 0) for part in TIME_LIMIT.fullmatch(time).groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def check_time_limit(point: Point) -> None:
    """Refuse a time limit that leaves less training than the requeue signal's lead before it."""
    limit, shortest = time_limit_s(point.config.slurm.time), 2 * REQUEUE_SIGNAL_LEAD_S
    if limit < shortest:
        raise UserError(
            f"point {point.index} ({point.label}): slurm.time={point.config.slurm.time} leaves "
            f"{max(limit - REQUEUE_SIGNAL_LEAD_S, 0)} s of training before SIGUSR1, which SLURM sends "
            f"{REQUEUE_SIGNAL_LEAD_S} s before the limit to checkpoint and requeue; use at least "
            f"{shortest // 3600:02d}:{shortest // 60 % 60:02d}:{shortest % 60:02d}"
        )


def gres_gpu_parts(extra: Mapping[str, str | int]) -> list[str]:
    """The parts of slurm.extra's gres that ask for GPUs or a share of one (gpu:a100:2, shard:4)."""
    parts = str(extra.get("gres", "")).lower().split(",")
    return [part for part in parts if part.split(":")[0] in GPU_GRES_NAMES]


def gres_gpus(parts: list[str]) -> int:
    """Whole GPUs per node the gres parts name: gpu is 1, gpu:2 and gpu:a100:2 are 2."""
    fields = [part.split(":") for part in parts if part.split(":")[0] == "gpu"]
    return sum(int(field[-1]) if len(field) > 1 and field[-1].isdigit() else 1 for field in fields)


def gpu_requests(extra: Mapping[str, str | int]) -> list[str]:
    """The slurm.extra options that ask SLURM for GPUs or a share of one."""
    return [
        f"{option}={value}"
        for option, value in extra.items()
        if "gpu" in option or (option == "gres" and gres_gpu_parts(extra))
    ]


def gpus_per_node(config: Config) -> int | None:
    """What hpcsweep asks SLURM for with --gpus-per-node: the devices of a GPU training, unless
    slurm.extra's gres names the GPUs itself (a type, a share): asked twice, SLURM would count both."""
    wanted = config.train.accelerator == "gpu" and not gres_gpu_parts(config.slurm.extra)
    return config.train.devices if wanted else None


def check_accelerator(point: Point) -> None:
    """Refuse what would train on the wrong device: SLURM gives a job GPUs only when asked, and
    hpcsweep asks (--gpus-per-node=devices) only for `accelerator: gpu`."""
    name, accelerator = f"point {point.index} ({point.label})", point.config.train.accelerator
    use = "set accelerator: gpu (hpcsweep then asks for --gpus-per-node=devices)"
    if accelerator == "auto":
        raise UserError(f"{name}: accelerator=auto would get no GPU from SLURM; {use} or accelerator: cpu")
    extra, devices = point.config.slurm.extra, point.config.train.devices
    requests = gpu_requests(extra)
    if accelerator == "cpu" and requests:
        raise UserError(
            f"{name}: accelerator=cpu, but slurm.extra {requests[0]} asks SLURM for GPUs the training "
            f"would leave idle; {use} or drop {requests[0].partition('=')[0]} from slurm.extra"
        )
    whole = gres_gpus(gres_gpu_parts(extra))
    if accelerator == "gpu" and whole and whole != devices:
        raise UserError(
            f"{name}: slurm.extra gres={extra['gres']} asks SLURM for {whole} GPU(s) per node and "
            f"train.devices={devices} trains on {devices}: make them agree (with GPUs in slurm.extra's "
            f"gres, hpcsweep asks for no --gpus-per-node of its own)"
        )


def task_log(log_dir: Path, job_id: str, task: int) -> Path:
    """The file SLURM writes task `task` of array `job_id`'s output to: the --output pattern resolved."""
    return log_dir / LOG_PATTERN.replace("%A", job_id).replace("%a", str(task))


def parse_max_array_size(text: str) -> int | None:
    """MaxArraySize from `scontrol show config` output; None where it is not there."""
    found = MAX_ARRAY_SIZE.search(text)
    return int(found.group(1)) if found else None


def max_array_size() -> int:
    """The cluster's MaxArraySize, or Slurm's default where scontrol cannot tell (not installed, no
    controller answering)."""
    size = parse_max_array_size(slurm_output("scontrol", "show", "config"))
    if size == 0:
        raise UserError("this cluster's MaxArraySize is 0: job arrays are disabled, and hpcsweep submits job arrays")
    return DEFAULT_MAX_ARRAY_SIZE if size is None else size


def render_job_script(spec: JobSpec, template: str = DEFAULT_TEMPLATE) -> str:
    """The job script for `spec`; a site template uses the same ${directives}, ${setup}, ${command}.

    ${setup} opens with the telemetry defaults, so a site's template gets them too, and a site or
    user that exports its own value (on the login node or in the setup lines) keeps it."""
    check_extra_options(spec.extra)
    try:
        return Template(template).substitute(
            directives="\n".join(directives(spec)),
            setup="\n".join([*shell_defaults(), *spec.setup]),
            command=" ".join(shlex.quote(part) for part in spec.command),
        )
    except (KeyError, ValueError) as error:
        raise UserError(
            f"job template: unknown or malformed placeholder {error}; "
            f"valid: ${{directives}}, ${{setup}}, ${{command}} ($$ for a literal $)"
        ) from None


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise UserError("sbatch not found on PATH: run on a SLURM login node, or use --executor local")


def sbatch(script: Path, *options: str, environment: Mapping[str, str]) -> str:
    """Run sbatch on the script; its own message when it refuses. SLURM keeps `environment` with the job."""
    done = subprocess.run(["sbatch", *options, str(script)], capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        message = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
        raise UserError(f"sbatch refused {script}: {message}")
    return done.stdout


def test_only(script: Path, environment: Mapping[str, str]) -> None:
    """Ask the scheduler whether it would accept the job (partition, account, limits), submitting nothing."""
    sbatch(script, "--test-only", environment=environment)


def submit_array(script: Path, environment: Mapping[str, str]) -> str:
    """Submit the script; returns the array job id."""
    return sbatch(script, "--parsable", environment=environment).strip().split(";")[0]


def cancel(array_job_ids: list[str]) -> None:
    if array_job_ids:
        subprocess.run(["scancel", *array_job_ids], check=False)


class SlurmExecutor(Executor):
    """A batch is one job array: its script written at prepare, tested and submitted with sbatch."""

    def check(self) -> None:
        require_sbatch()

    def check_points(self, points: list[Point]) -> None:
        for point in points:
            check_time_limit(point)
            check_accelerator(point)

    def max_batch_size(self) -> int:
        return max_array_size()

    def prepare(self, batch: Batch) -> None:
        log_dir(batch).mkdir(parents=True, exist_ok=True)  # SLURM fails a job whose --output folder is missing
        batch.script = batch.folder / f"job-{batch.number}.sbatch"
        with atomic_file(batch.script) as temporary:
            temporary.write_text(render_job_script(self.job_spec(batch), self.settings.template or DEFAULT_TEMPLATE))

    def test(self, batch: Batch) -> None:
        test_only(batch.script, self.job_environment())

    def submit(self, batch: Batch, runs: BatchRuns) -> None:
        job_id = submit_array(batch.script, self.job_environment())
        runs.queued(job_id, [task_log(log_dir(batch), job_id, task) for task in range(len(batch.points))])
        print(f"submitted job array {job_id} ({len(batch.points)} points): {batch.script}")

    def live_jobs(self, job_keys: list[str]) -> set[str]:
        return set(queued_states(job_keys))

    def job_environment(self) -> dict[str, str]:
        """What sbatch hands the job: SLURM keeps it with the job, so secrets the job reads itself stay out."""
        return environment_for_jobs(self.settings.secrets_from_file)

    def job_spec(self, batch: Batch) -> JobSpec:
        """The batch's points share one resource shape, so its first point's config speaks for all."""
        config = batch.points[0].config
        resources = config.slurm
        return JobSpec(
            name=f"hpcsweep-{batch.grid_name}",
            array_size=len(batch.points),
            max_parallel=self.settings.max_parallel or resources.max_parallel,
            nodes=config.train.num_nodes,
            tasks_per_node=config.train.devices,
            cpus_per_task=resources.cpus_per_task,
            mem=resources.mem,
            time=resources.time,
            workdir=Path.cwd(),
            log_dir=log_dir(batch),
            command=[sys.executable, "-m", "hpcsweep", "run-point", str(batch.points_file)],
            gpus_per_node=gpus_per_node(config),
            partition=resources.partition,
            account=resources.account,
            qos=resources.qos,
            setup=resources.setup,
            extra=resources.extra,
        )


def log_dir(batch: Batch) -> Path:
    return batch.folder / LOG_FOLDER


def this_task(points_file: Path, task: int) -> tuple[str, Path] | None:
    """The job array and log file of array task `task` running here; None outside a SLURM job array."""
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    return (job_id, task_log(points_file.parent / LOG_FOLDER, job_id, task)) if job_id else None
