"""The report reads metric histories in bulk from a real MLflow server, and loses nothing doing it.

One experiment of 101 runs (more than the 100 one bulk request may name): short runs shaped like
trainings, some with a resumed epoch (a step logged again, later; and once more with an earlier
timestamp, which must not count), some missing metrics, some not finished; and 2 long runs of
12,501 val/acc points each, 25,002 points, more than the 25,000 the server puts in one answer.
Logging them takes about 330 requests (three per run, 1000 points per log_batch), the bulk of
this module's time. Every history the report reads must be exactly what was logged, as per-run reads give it.
"""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.entities import Metric, Param

from hpcsweep.report import histories
from hpcsweep.report.histories import epoch_histories, epoch_series
from hpcsweep.report.records import ACCURACY, HISTORIES, PRUNED_TAG, fetch_records

pytestmark = pytest.mark.server

SHORT_RUNS, LONG_RUNS, EPOCHS, LONG_EPOCHS = 99, 2, 3, 12_501
T0 = 1_700_000_000_000  # ms
RESUMED_STEP = 1


def short_run(index: int) -> tuple[str, list[Metric], dict[str, str]]:
    """What run `index` logs: its status, its measurements and its tags. Every 7th resumes epoch
    1 (logged three times: the one with the latest timestamp counts); every 5th lacks test/acc
    and train/mfu; 3 are not trained (KILLED, RUNNING, FAILED) and one was pruned."""
    names = [name for name in HISTORIES if index % 5 or name not in ("test/acc", "train/mfu")]
    metrics = [
        Metric(name, index * 1000 + step * 10 + position, T0 + step * 1000, step)
        for position, name in enumerate(names)
        for step in range(EPOCHS)
    ]
    if index % 7 == 0:
        metrics += [Metric(name, -index - 0.5, T0 + 5000, RESUMED_STEP) for name in names]  # counts
        metrics += [Metric(name, -index - 0.25, T0 + 500, RESUMED_STEP) for name in names]  # older: ignored
    status = {3: "KILLED", 4: "RUNNING", 8: "FAILED", 9: "KILLED"}.get(index, "FINISHED")
    return status, metrics, {PRUNED_TAG: "2"} if index == 9 else {}


def expected_history(status: str, metrics: list[Metric], tags: dict[str, str]) -> dict[str, list[float]]:
    """The per-epoch histories worked out from what was logged, not read back."""
    if status != "FINISHED" and PRUNED_TAG not in tags:
        return {}
    latest: dict[str, dict[int, Metric]] = {name: {} for name in HISTORIES}
    for metric in metrics:
        kept = latest[metric.key].get(metric.step)
        if kept is None or metric.timestamp > kept.timestamp:
            latest[metric.key][metric.step] = metric
    return {name: [latest[name][step].value for step in sorted(latest[name])] for name in HISTORIES}


@pytest.fixture(scope="module")
def study(tracking_server) -> dict:
    """The experiment's name, its client, and each run's expected histories by run id."""
    client = mlflow.MlflowClient(tracking_server)
    name = f"report-bulk-{os.getpid()}"
    experiment = client.create_experiment(name)
    long = [Metric(ACCURACY, step / LONG_EPOCHS, T0 + step, step) for step in range(LONG_EPOCHS)]
    shapes = [short_run(index) for index in range(SHORT_RUNS)] + [("FINISHED", long, {})] * LONG_RUNS

    expected = {}
    for index, (status, metrics, tags) in enumerate(shapes):
        run_id = client.create_run(experiment, tags=tags).info.run_id
        client.log_batch(run_id, metrics=metrics, params=[Param("seed", str(index))])  # in batches of 1000
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        expected[run_id] = expected_history(status, metrics, tags)
    return {"name": name, "client": client, "expected": expected}


def test_report_records_hold_every_logged_point(study, monkeypatch):
    """Through `fetch_records`, as `hpcsweep report` reads: more runs than one request may name,
    resumed epochs, missing metrics, runs that did not finish, and the val/acc answer of the
    newest 100 runs (the long ones among them) cut by the server at its 25,000 points."""
    answers = []
    request = histories.request_history
    monkeypatch.setattr(histories, "request_history", lambda *args: answers.append(request(*args)) or answers[-1])
    records, _ = fetch_records(study["client"], study["name"], None)
    assert max(len(answer) for answer in answers) == histories.POINTS_PER_REQUEST  # an answer was cut
    assert {record.run_id: record.history for record in records} == study["expected"]
    resumed = next(record for record in records if record.params["seed"] == "7")
    assert resumed.history[ACCURACY] == [7000.0, -7.5, 7020.0]  # the resumed epoch's latest value


def test_expected_histories_are_what_per_run_reads_give(study):
    """What the tests expect equals `MlflowClient.get_metric_history` read run by run (the way the
    report read before), for the runs that are hard to get right: resumed, missing metrics, pruned, long."""
    client, run_ids = study["client"], list(study["expected"])
    for index in (0, 5, 7, 9, 14, SHORT_RUNS):
        one_by_one = {name: epoch_series(client.get_metric_history(run_ids[index], name)) for name in HISTORIES}
        assert one_by_one == study["expected"][run_ids[index]]


def test_answers_cut_short_are_completed(study, monkeypatch):
    """With the server asked for at most 50 points per answer, nearly every answer is cut, most
    inside a run, and a long run alone fills one (read through the client): still every point arrives."""
    monkeypatch.setattr(histories, "POINTS_PER_REQUEST", 50)
    trained = {run_id: history for run_id, history in study["expected"].items() if history}
    assert epoch_histories(study["client"], list(trained), HISTORIES) == trained
