"""An array task that logs like a 30-epoch training without the compute, for the scale tests.

A real training imports torch and mlflow (seconds of CPU each) before its first epoch; a thousand
of them cannot run through the 2-core development cluster in a test. This task does what a
training does to the tracking server and nothing else: it finds its point's run as `run-point` does
(the launcher's; where the task came first, one it makes itself with `hpcsweep.grid.task`, paying
for the import of mlflow only then), marks it RUNNING, logs one
log_batch per epoch (the per-epoch metrics the report reads) and ends it FINISHED, over plain
HTTP. A job-script template (`template()`) runs it in place of `hpcsweep run-point`; its last two
arguments are the points file and the task index, as for `run-point`.

The simulated accuracy is a known function of lr and seed (`final_accuracy`), so a test can say
which configuration the report must find best.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import requests

from hpcsweep.grid import run_ids

EPOCHS = 30
EPOCH_TIME_S = 2.0
BEST_LR = 0.05


def final_accuracy(lr: float, seed: int) -> float:
    """Highest at BEST_LR, falling off with the distance in decades; seeds differ a little."""
    return 0.9 - 0.2 * abs(math.log10(lr / BEST_LR)) + 0.001 * (seed % 5)


def template(python: str) -> str:
    """A job-script template (for `hpcsweep grid --template`) that runs this file for each task."""
    return (
        "#!/bin/bash\n${directives}\nset -euo pipefail\n${setup}\n"
        f'{python} {Path(__file__).resolve()} ${{command}} "$$SLURM_ARRAY_TASK_ID"\n'
    )


def epoch_metrics(epoch: int, accuracy: float, now_ms: int) -> list[dict]:
    progress = (epoch + 1) / EPOCHS
    values = {
        "val/acc": accuracy * progress,
        "val/loss": 2.3 * (1 - progress) + 0.2,
        "test/acc": accuracy * progress - 0.01,
        "epoch_time_s": EPOCH_TIME_S,
        "train/loss": 2.3 * (1 - progress) + 0.1,
        "train/images_per_s": 20_000.0,
        "train/mfu": 0.3,
    }
    return [{"key": key, "value": value, "timestamp": now_ms, "step": epoch} for key, value in values.items()]


def point_run(points_file: Path, task: int, document: dict) -> str:
    """The run the launcher made, read from its file; where there is none yet, `run-point`'s own way."""
    made = run_ids.recorded(points_file, task)
    if made:
        return made
    from hpcsweep.config import config_from_dict
    from hpcsweep.grid.task import point_run as run_point_run

    config = config_from_dict(document["points"][task]["config"], source=str(points_file))
    return run_point_run(points_file, task, document, config)


def main(points_file: Path, task: int) -> None:
    document = json.loads(points_file.read_text())
    entry = document["points"][task]
    train, uri = entry["config"]["train"], entry["config"]["tracking"]["uri"]
    run_id = point_run(points_file, task, document)
    accuracy = final_accuracy(float(train["lr"]), int(train["seed"]))
    with requests.Session() as http:

        def post(endpoint: str, body: dict) -> None:
            http.post(
                f"{uri}/api/2.0/mlflow/runs/{endpoint}", json={"run_id": run_id, **body}, timeout=60
            ).raise_for_status()

        post("update", {"status": "RUNNING"})
        post(
            "log-batch",
            {"tags": [{"key": "device_type", "value": "GPU"}, {"key": "device_name", "value": "simulated"}]},
        )
        for epoch in range(EPOCHS):
            post("log-batch", {"metrics": epoch_metrics(epoch, accuracy, int(time.time() * 1000))})
        total = {"key": "total_time_s", "value": EPOCHS * EPOCH_TIME_S, "timestamp": int(time.time() * 1000), "step": 0}
        post("log-batch", {"metrics": [total]})
        post("update", {"status": "FINISHED", "end_time": int(time.time() * 1000)})


if __name__ == "__main__":
    main(Path(sys.argv[-2]), int(sys.argv[-1]))
