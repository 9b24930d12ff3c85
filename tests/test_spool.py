"""The spool file: order, what counts as sent, one sender at a time, batching within MLflow's
limits, and a record the server refuses for good set aside without blocking the rest."""

from __future__ import annotations

import json

import mlflow
import pytest

from hpcsweep.tracking.sender import MAX_METRICS, records_in_next_request, send_unsent
from hpcsweep.tracking.spool import SPOOL_FILE, Spool, find_spools


def batch(run_id: str, metrics=(), params=(), tags=()) -> dict:
    return {
        "run_id": run_id,
        "metrics": [list(m) for m in metrics],
        "params": [list(p) for p in params],
        "tags": [list(t) for t in tags],
    }


def test_a_new_claim_resumes_after_what_was_sent_and_ignores_a_line_cut_short(tmp_path):
    spool = Spool(tmp_path)
    spool.claim("http://server:5000")
    for step in range(3):
        spool.append(batch("run", metrics=[("loss", 1.0 / (step + 1), 1000 + step, step)]))
    spool.mark_sent(1)
    spool.release()
    with (tmp_path / SPOOL_FILE).open("a") as stream:
        stream.write('{"run_id": "run", "metr')  # the process died in the middle of a write

    again = Spool(tmp_path)
    assert again.claim()
    assert again.uri == "http://server:5000"
    assert [record["metrics"][0][3] for record in again.unsent()] == [1, 2]


def test_an_epoch_repeated_after_a_kill_spools_its_figures_once_and_system_metrics_always(tmp_path):
    first = Spool(tmp_path)
    first.claim("http://server:5000")
    first.append(batch("run", metrics=[("val/acc", 0.5, 1000, 0), ("system/cpu", 9.0, 1000, 0)]))
    first.release()  # killed before epoch 0's checkpoint: the next attempt runs epoch 0 again

    again = Spool(tmp_path)
    again.claim("http://server:5000")
    again.append(batch("run", metrics=[("val/acc", 0.6, 2000, 0), ("system/cpu", 7.0, 2000, 0)]))
    again.append(batch("run", metrics=[("val/acc", 0.6, 2000, 0)]))  # nothing new: no record at all
    again.append(batch("run", metrics=[("val/acc", 0.7, 3000, 1)], tags=[("note", "x")]))
    again.append(batch("other", metrics=[("val/acc", 0.1, 3000, 0)]))  # another run's own step 0
    lines = [json.loads(line) for line in (tmp_path / SPOOL_FILE).read_text().splitlines()[1:]]
    assert [record["metrics"] for record in lines] == [
        [["val/acc", 0.5, 1000, 0], ["system/cpu", 9.0, 1000, 0]],
        [["system/cpu", 7.0, 2000, 0]],
        [["val/acc", 0.7, 3000, 1]],
        [["val/acc", 0.1, 3000, 0]],
    ]


def test_only_one_process_sends_from_a_spool(tmp_path):
    first, second = Spool(tmp_path), Spool(tmp_path)
    assert first.claim("http://server:5000")
    assert not second.claim(wait=False)
    first.release()
    assert second.claim(wait=False)


def test_batches_stay_within_mlflow_limits_and_never_repeat_a_param_key():
    metrics = [("m", 0.0, 1, step) for step in range(MAX_METRICS // 2 + 1)]
    assert records_in_next_request([batch("a", metrics), batch("a", metrics)]) == 1
    assert records_in_next_request([batch("a", params=[("lr", "0.1")]), batch("a", params=[("lr", "0.1")])]) == 1
    assert records_in_next_request([batch("a", tags=[("x", "1")]), batch("a", params=[("x", "1")])]) == 2
    assert records_in_next_request([batch("a"), batch("b")]) == 1
    status = {"run_id": "a", "status": "FINISHED", "end_time": 1}
    assert records_in_next_request([batch("a"), batch("a"), status, batch("a")]) == 2
    assert records_in_next_request([status, batch("a")]) == 1


@pytest.mark.slow
def test_a_record_refused_for_good_is_set_aside_and_the_rest_still_lands(tmp_path, tracking_server):
    client = mlflow.MlflowClient(tracking_server)
    experiment = client.create_experiment(f"spool-{tmp_path.name}")
    live, deleted = client.create_run(experiment).info.run_id, client.create_run(experiment).info.run_id
    client.delete_run(deleted)
    spool = Spool(tmp_path)
    spool.claim(tracking_server)
    spool.append(batch(live, metrics=[("loss", 2.0, 1000, 0)]))
    spool.append(batch(deleted, metrics=[("loss", 9.0, 1000, 0)]))
    spool.append(batch(live, metrics=[("loss", 1.0, 2000, 1)], params=[("lr", "0.1")]))
    spool.append({"run_id": live, "status": "FINISHED", "end_time": 3000, "run_name": None})
    send_unsent(spool)

    assert spool.unsent() == [] and (tmp_path / "mlflow-spool.sent").read_text() == "4"
    run = client.get_run(live)
    assert [(m.step, m.value) for m in client.get_metric_history(live, "loss")] == [(0, 2.0), (1, 1.0)]
    assert run.data.params == {"lr": "0.1"} and run.info.status == "FINISHED"
    (rejected,) = [json.loads(line) for line in (tmp_path / "mlflow-spool.rejected").read_text().splitlines()]
    assert rejected["record"]["run_id"] == deleted


def test_find_spools_names_a_missing_folder(tmp_path):
    from hpcsweep.errors import UserError

    with pytest.raises(UserError, match="no such folder"):
        find_spools(tmp_path / "nowhere")
    (tmp_path / "a" / "run1").mkdir(parents=True)
    (tmp_path / "a" / "run1" / SPOOL_FILE).write_text('{"uri": "http://x"}\n')
    assert find_spools(tmp_path) == [tmp_path / "a" / "run1"]
