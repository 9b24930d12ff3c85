"""The job side of a grid: what one array task (or one local point) runs.

The launcher wrote every point's full config and the launch its run belongs to into a points file;
task i trains entry i into its run: the one the launcher created for it, or, where the task started
first, one the task creates now (run_ids.py: never both). Each DDP rank and each node runs this same
command and finds the same run, so every process knows it without a shared environment. A grid that
prunes also wrote its pruning settings and study there, for the training to report to.
"""

from __future__ import annotations

import json
from pathlib import Path

from hpcsweep.config import Config, config_from_dict
from hpcsweep.errors import UserError
from hpcsweep.grid import run_ids, run_reading
from hpcsweep.grid import runs as grid_runs
from hpcsweep.grid.executors.slurm import this_task
from hpcsweep.ranks import global_rank
from hpcsweep.tracking.client import tracking_client
from hpcsweep.tracking.credentials import load_secrets
from hpcsweep.training.prune_settings import PruneSettings


def run_point(points_file: Path, index: int) -> None:
    """Train entry `index` of a launch's points file into its run."""
    from hpcsweep.training.train import train  # torch: only once the entry is known to be valid

    document = json.loads(points_file.read_text())
    entries = document["points"]
    if not 0 <= index < len(entries):
        raise UserError(f"{points_file}: no point {index}; it holds 0..{len(entries) - 1}")
    entry = entries[index]
    config = config_from_dict(entry["config"], source=f"{points_file}[{index}]")
    load_secrets(config.tracking.secrets_file)
    pruning = PruneSettings.from_dict(document["pruning"]) if "pruning" in document else None
    run_id = point_run(points_file, index, document, config)
    try:
        train(config, run_id=run_id, pruning=pruning)
    except Exception:  # not SystemExit: a requeued or killed training has set its run's status itself
        mark_failed_if_unfinished(config, run_id)
        raise


def point_run(points_file: Path, index: int, document: dict, config: Config) -> str:
    """The run the launcher made for this point, or, where this task came first, one made now."""
    if "lineage" not in document:
        raise UserError(f"{points_file}: written by a dry run (no launch, no runs); launch the grid without --dry-run")
    entry = document["points"][index]
    job = this_task(points_file, index)
    tags = grid_runs.job_tags(job[0], index, str(job[1])) if job else {}
    lineage = grid_runs.Lineage.from_dict(document["lineage"])

    def create() -> str:
        return grid_runs.create_child(tracking_client(config), lineage, entry["label"], config, tags, scheduled=False)

    return run_ids.run_id_of(points_file, index, create)


def mark_failed_if_unfinished(config: Config, run_id: str | None) -> None:
    """A point that dies before training opens its run (bad data, a probe that cannot fit) must
    not stay SCHEDULED forever: the next launch resubmits FAILED points."""
    if run_id and global_rank() == 0:
        client = tracking_client(config)
        if run_reading.is_active(client.get_run(run_id)):
            grid_runs.finish(client, run_id, "FAILED")
