"""Hand-made `RunRecord`s for the report's tests: runs whose right answers can be worked out by hand.

Both tests/test_report.py and tests/test_report_statistics.py build studies out of these instead of
training: every config key has a value (so that only what a test sets varies), histories exist for
finished and pruned runs as MLflow holds them, and tags are the ones the report reads.
"""

from __future__ import annotations

from hpcsweep.report.records import IDENTITY, PRUNED_TAG, TUNED_TAG, RunRecord

DEFAULTS = {
    "optimizer": "sgd",
    "batch_size": "128",
    "devices": "1",
    "num_nodes": "1",
    "strategy": "auto",
    "micro_batch_size": "auto",
    "target_accuracy": "0.9",
    "max_epochs": "2",
    "val_size": "5000",
    "seed": "0",
}


def record(
    run_id: str,
    status: str = "FINISHED",
    accuracy=(0.5, 0.6),
    seconds=(10.0, 10.0),
    speed: float = 100.0,
    test_accuracy=None,
    tags: dict[str, str] | None = None,
    **params,
) -> RunRecord:
    """One run: per-epoch val/acc `accuracy` (and test/acc `test_accuracy`) after `seconds` per epoch.
    `tags` default to a GPU run; params not given are DEFAULTS, or "x" for the other config keys."""
    values = {name: "x" for name in IDENTITY} | DEFAULTS | {key: str(value) for key, value in params.items()}
    tags = {"device_type": "GPU"} if tags is None else tags
    trained = status == "FINISHED" or PRUNED_TAG in tags
    history = (
        {
            "val/acc": list(accuracy),
            "epoch_time_s": list(seconds),
            "train/loss": [2.0, 1.0, 0.5, 0.25][: len(accuracy)],
            "train/images_per_s": [speed] * len(accuracy),
            **({"test/acc": list(test_accuracy)} if test_accuracy is not None else {}),
        }
        if trained
        else {}
    )
    metrics = (
        {"total_time_s": sum(seconds), "micro_batch_size": 64.0, "accumulate_grad_batches": 2.0} if trained else {}
    )
    return RunRecord(run_id, status, values, metrics, history, tags)


def seeds(name: str, finals: list[float], test_finals: list[float] | None = None, **params) -> list[RunRecord]:
    """One finished run per seed of configuration `name` (its optimizer), each one epoch long, whose
    final val/acc (and test/acc) are `finals` (and `test_finals`)."""
    tests = test_finals or [None] * len(finals)
    return [
        record(
            f"{name}-{seed}",
            accuracy=(final,),
            seconds=(10.0,),
            test_accuracy=None if test is None else (test,),
            seed=seed,
            **({"optimizer": name} | params),
        )
        for seed, (final, test) in enumerate(zip(finals, tests))
    ]


def tuned(tag: str = "lr") -> dict[str, str]:
    """The tags of a run of a grid that tuned `tag` (comma-separated keys), on a GPU."""
    return {TUNED_TAG: tag, "device_type": "GPU"}
