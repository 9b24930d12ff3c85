"""SLURM's view of jobs: what squeue, scontrol, the jobcomp log and sacct say, parsed.

`hpcsweep status` shows SLURM's verdict beside MLflow's, and a relaunch skips points whose job is
still queued; both ask here. Each source is read where the site has it (no accounting, no jobcomp
log, no SLURM commands at all on a workstation), so status shows what the others know. The parsers
are pure and tested on recorded outputs (tests/fixtures/slurm/).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Slurm's out-of-memory "signal" (SIG_OOM, 253) as an exit code shows it: 0:125
OUT_OF_MEMORY_SIGNAL = "125"
SACCT_FIELDS = "JobID,State,DerivedExitCode"
SCONTROL_CALLS = 8  # at most this many `scontrol show job ID` calls; more jobs are read in one


def slurm_output(*command: str) -> str:
    """What a SLURM query prints; nothing where it fails or SLURM is not installed (a workstation that
    sees the jobcomp log), so status shows what the other sources know."""
    if shutil.which(command[0]) is None:
        return ""
    done = subprocess.run(command, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def end_state(state: str, derived_exit_code: str) -> str:
    """The job's state, OUT_OF_MEMORY where a step was killed for memory: a task whose srun step the
    kernel killed ends FAILED (its batch script fails after srun), and only DerivedExitCode, the
    highest exit code of its steps, says why."""
    killed_for_memory = derived_exit_code.partition(":")[2] == OUT_OF_MEMORY_SIGNAL
    return "OUT_OF_MEMORY" if state == "FAILED" and killed_for_memory else state


def parse_squeue(text: str) -> dict[str, str]:
    """`squeue -h -r -o %i|%T` lines to {"1234_5": "RUNNING"}."""
    states = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            states[job] = state
    return states


def queued_states(job_ids: list[str]) -> dict[str, str]:
    """States of the jobs still in the queue (pending, running, requeued, ...)."""
    if not job_ids:
        return {}
    return parse_squeue(slurm_output("squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(job_ids)))


JOBCOMP_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_jobcomp(text: str) -> dict[str, str]:
    """KEY=VALUE job records (the jobcomp/filetxt log, `scontrol -o show job`) to {"1234_5": "COMPLETED"};
    later lines win (a requeued job ends twice)."""
    states = {}
    for line in text.splitlines():
        fields = dict(JOBCOMP_FIELD.findall(line))
        if "JobState" not in fields:
            continue
        array_job, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        key = f"{array_job}_{task}" if array_job and task and task not in ("4294967294", "") else fields.get("JobId")
        states[key] = end_state(fields["JobState"], fields.get("DerivedExitCode", ""))
    return states


def parse_sacct(text: str) -> dict[str, str]:
    """`sacct -n -P -X -o JobID,State,DerivedExitCode` lines to {"1234_5": "TIMEOUT"}; "CANCELLED by 123"
    is CANCELLED."""
    states = {}
    for line in text.splitlines():
        job, _, rest = line.partition("|")
        state, _, derived_exit_code = rest.partition("|")
        if job and state:
            states[job] = end_state(state.split()[0], derived_exit_code)
    return states


def scontrol_states(job_ids: list[str]) -> dict[str, str]:
    """What scontrol remembers of the jobs (the same KEY=VALUE records as the jobcomp log; -d adds
    DerivedExitCode): one call per job for a few, else one call for every job it remembers, since
    a call takes ~10 ms and a 1000-point grid may be hundreds of arrays where MaxArraySize is small."""
    if len(job_ids) > SCONTROL_CALLS:
        return parse_jobcomp(slurm_output("scontrol", "-o", "-d", "show", "job"))
    states = {}
    for job in job_ids:
        states.update(parse_jobcomp(slurm_output("scontrol", "-o", "-d", "show", "job", job)))
    return states


def jobcomp_states() -> dict[str, str]:
    jobcomp = os.environ.get("HPCSWEEP_SLURM_JOBCOMP")
    return parse_jobcomp(Path(jobcomp).read_text()) if jobcomp and Path(jobcomp).is_file() else {}


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    return parse_sacct(slurm_output("sacct", "-n", "-P", "-X", "-o", SACCT_FIELDS, "-j", ",".join(job_ids)))


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's view of array tasks ("1234_5"): the queue for live jobs, the records for ended ones
    (scontrol for recent jobs, the jobcomp file, sacct; sacct's word over the file's over
    scontrol's), where the site has them. The three commands, each a round trip to slurmctld or
    slurmdbd, are asked at once."""
    arrays = sorted({job.split("_")[0] for job in job_ids})
    with ThreadPoolExecutor(3) as pool:
        recent, accounted, queued = (
            pool.submit(read, arrays) for read in (scontrol_states, sacct_states, queued_states)
        )
        return {**recent.result(), **jobcomp_states(), **accounted.result(), **queued.result()}
