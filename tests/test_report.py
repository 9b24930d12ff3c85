"""The report against a real grid of runs (2 optimizers x 2 seeds, one point that fails), plus the
pure parts (Pareto front, seed aggregation, scaling) on hand-made runs whose answers are known."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from helpers.project import ROOT
from helpers.report_records import record
from helpers.runs import environment, grid_command, write_grid
from helpers.synthetic import VAL_SIZE
from hpcsweep.errors import UserError
from hpcsweep.grid import run_reading
from hpcsweep.report import plots as report_plots
from hpcsweep.report.build import REPORT_MARKER, analyse, build_report, check_out_dir, write_files
from hpcsweep.report.frames import scaling_frame
from hpcsweep.report.records import normalised
from hpcsweep.report.render import display_rows
from hpcsweep.report.table import configuration_table, configurations, pareto_front
from hpcsweep.tracking.credentials import redact

TINY = {"max_epochs": 2, "warmup_epochs": 0, "batch_size": 60, "base_batch_size": 60, "accelerator": "cpu"}
FILES = {
    "index.html",
    "table.csv",
    "table.md",
    "table.html",
    "summary.json",
    "summary.md",
    "pareto.csv",
    "curves.csv",
    "accuracy_vs_time.png",
    "pareto.png",
    "train_loss.png",
    REPORT_MARKER,
}
PNG = b"\x89PNG\r\n\x1a\n"


# --- a real study, run once for the module ------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory, synthetic_archive, tracking_server) -> dict:
    """sgd and adam (lr 0.001) x seeds 0 and 1, and an rmsprop point that fails: its batch is larger
    than the 30 images it may use. Seeds come through variants so that the failing point has only
    one: five processes, the slowest part of this file. No model is logged (10-20 s of torch.export
    per training on CI's CPUs; the report never reads it)."""
    from hpcsweep.data.cifar10 import import_archive
    from hpcsweep.data.prepare import prepare

    project = tmp_path_factory.mktemp("report-project")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        raw_dir=str(project / "data/raw"), prepared_dir=str(project / "data/prepared"), val_size=VAL_SIZE
    )
    params["tracking"]["log_model"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    import_archive(synthetic_archive, project / "data/raw")
    prepare(project / "data/raw", project / "data/prepared", VAL_SIZE)
    name = f"report{os.getpid()}"
    grid = write_grid(
        project,
        {
            "name": name,
            "experiment": f"{name}-exp",
            "base": TINY,
            "grid": {"optimizer": ["sgd", "adam", "rmsprop"]},
            "variants": [
                {"optimizer": "sgd", "seed": 0},
                {"optimizer": "sgd", "seed": 1},
                {"optimizer": "adam", "lr": 0.001, "seed": 0},
                {"optimizer": "adam", "lr": 0.001, "seed": 1},
                {"optimizer": "rmsprop", "limit_train_samples": 30},
            ],
        },
    )
    done = subprocess.run(
        grid_command(grid, "--executor", "local"),
        cwd=project,
        env=environment(tracking_server),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"uri": tracking_server, "grid": name, "experiment": f"{name}-exp", "project": project}


@pytest.fixture(scope="module")
def built(study, tmp_path_factory) -> Path:
    client = mlflow.MlflowClient(study["uri"])
    return build_report(client, tmp_path_factory.mktemp("out") / "report", grid=study["grid"])


def point_runs_by_optimizer(uri: str, grid: str) -> dict[str, list]:
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.grid = '{grid}' and tags.`hpcsweep.role` = 'point'",
    )
    grouped: dict[str, list] = {}
    for run in runs:
        grouped.setdefault(run.data.params["optimizer"], []).append(run)
    return grouped


def history(uri: str, run, metric: str) -> list[float]:
    measurements = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, metric)
    return [m.value for m in sorted(measurements, key=lambda m: m.step)]


def table_of(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "table.csv", dtype={"optimizer": str}).set_index("optimizer")


@pytest.mark.slow
def test_each_configuration_aggregates_its_finished_seeds_as_mlflow_holds_them(study, built):
    table = table_of(built)
    runs = point_runs_by_optimizer(study["uri"], study["grid"])
    assert sorted(table.index) == ["adam", "rmsprop", "sgd"]
    for optimizer in ("sgd", "adam"):
        seeds, row = runs[optimizer], table.loc[optimizer]
        assert {run.info.status for run in seeds} == {"FINISHED"} and len(seeds) == 2
        final = [history(study["uri"], run, "val/acc")[-1] for run in seeds]
        best = [max(history(study["uri"], run, "val/acc")) for run in seeds]
        total = [run.data.metrics["total_time_s"] for run in seeds]
        speed = [statistics.fmean(history(study["uri"], run, "train/images_per_s")) for run in seeds]
        assert (row["status"], row["n_seeds"], row["runs"]) == ("2 FINISHED", 2, 2)
        assert row["val/acc"] == pytest.approx(statistics.fmean(final))
        assert row["val/acc_std"] == pytest.approx(statistics.stdev(final))
        assert row["best_val_acc"] == pytest.approx(statistics.fmean(best))
        assert row["best_val_acc_std"] == pytest.approx(statistics.stdev(best))
        assert row["total_time_s"] == pytest.approx(statistics.fmean(total))
        assert row["gpu_hours"] == pytest.approx(statistics.fmean(total) / 3600)  # 1 device x 1 node
        assert row["train/images_per_s"] == pytest.approx(statistics.fmean(speed))
        assert (row["batch_size"], row["micro_batch_size_used"], row["accumulate_grad_batches"]) == (60, 60, 1)
        assert math.isnan(row["time_to_target_s"]) and row["n_reached_target"] == 0  # 0.9 on 300 images: never
    assert table.loc["adam", "lr"] == 0.001 and table.loc["sgd", "lr"] == 0.1
    assert "seed" not in table.columns
    # every run logged the held-out split it chose on: no "choices made on the test split" sentence
    assert (table["val_size"] == VAL_SIZE).all() and "test split" not in (built / "summary.md").read_text()


@pytest.mark.slow
def test_the_failed_configuration_is_shown_and_never_averaged_in(study, built):
    row = table_of(built).loc["rmsprop"]
    assert (row["status"], row["n_seeds"], row["runs"]) == ("1 FAILED", 0, 1)
    assert math.isnan(row["val/acc"]) and math.isnan(row["gpu_hours"])
    assert re.search(r"\| rmsprop \|.*\| 1 FAILED \| 0 \| – \|", (built / "table.md").read_text())
    summary = json.loads((built / "summary.json").read_text())
    assert (summary["configurations"], summary["finished_configurations"]) == (3, 2)
    assert (summary["runs"], summary["finished_runs"], summary["failed_runs"]) == (5, 4, 1)
    assert not pd.read_csv(built / "pareto.csv")["configuration"].str.contains("rmsprop").any()
    text = (built / "summary.md").read_text()
    assert "Not all runs finished for optimizer=rmsprop" in text and "1 FAILED" in text
    recommended = re.search(r"Recommendation: (.*)", text).group(1)
    assert "rmsprop" not in recommended and ("adam" in recommended or "sgd" in recommended)


@pytest.mark.slow
def test_every_file_is_written_and_the_page_embeds_the_table_and_loadable_images(built):
    assert {path.name for path in built.iterdir()} == FILES
    page = (built / "index.html").read_text()
    assert "<table class='sortable'>" in page and 'addEventListener("click"' in page and page.count("<script>") == 1
    assert "CPU-hours" in page and "GPU-hours" not in page  # the study trained on the CPU
    assert all(f"<td data-sort='{word}'>{word}</td>" in page for word in ("sgd", "adam", "rmsprop"))
    images = re.findall(r"<img alt='[^']*' src='data:image/png;base64,([^']+)'>", page)
    assert len(images) == 3 and all(base64.b64decode(image).startswith(PNG) for image in images)
    assert all((built / name).read_bytes().startswith(PNG) for name in FILES if name.endswith(".png"))
    assert page.count("Not drawn:") == 2 and "batch_size does not vary" in page  # nor do the GPUs
    assert "train/mfu" not in (built / "table.md").read_text()  # CPU runs have no MFU: no empty column
    curves = pd.read_csv(built / "curves.csv")
    assert list(curves.columns) == ["configuration", "epoch", "wall_time_s", "val_acc", "train_loss"]
    assert len(curves) == 2 * 2  # two finished configurations x two epochs


@pytest.mark.slow
def test_the_report_is_uploaded_onto_the_grid_launch_run(study, built):
    client = mlflow.MlflowClient(study["uri"])
    launch = client.search_runs(
        [client.get_experiment_by_name(study["experiment"]).experiment_id], "tags.`hpcsweep.role` = 'launch'"
    )[0]
    uploaded = {artifact.path for artifact in client.list_artifacts(launch.info.run_id, "report")}
    assert {f"report/{name}" for name in FILES} == uploaded


@pytest.mark.slow
def test_a_target_given_at_report_time_is_timed_from_the_val_acc_history(study, tmp_path):
    runs = point_runs_by_optimizer(study["uri"], study["grid"])["sgd"]
    histories = [(history(study["uri"], r, "val/acc"), history(study["uri"], r, "epoch_time_s")) for r in runs]
    target = min(max(accuracy) for accuracy, _ in histories)  # every seed reaches it
    expected = [
        sum(seconds[: next(i for i, a in enumerate(accuracy) if a >= target) + 1]) for accuracy, seconds in histories
    ]
    out = build_report(
        mlflow.MlflowClient(study["uri"]), tmp_path / "r", experiment=study["experiment"], target_accuracy=target
    )
    row = table_of(out).loc["sgd"]
    assert row["time_to_target_s"] == pytest.approx(statistics.fmean(expected))
    assert row["n_reached_target"] == 2 and row["target_accuracy"] == pytest.approx(target)
    assert "recomputed" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_dvc_reads_the_summary_as_metrics_and_the_csv_files_as_plots(built, tmp_path):
    (tmp_path / "report").mkdir()
    for name in ("summary.json", "pareto.csv", "curves.csv"):
        (tmp_path / "report" / name).write_bytes((built / name).read_bytes())
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "metrics": ["report/summary.json"],
                "plots": [
                    {"report/pareto.csv": {"x": "gpu_hours", "y": "val_acc"}},
                    {"report/curves.csv": {"x": "wall_time_s", "y": "val_acc"}},
                ],
            }
        )
    )
    dvc = str(Path(sys.executable).parent / "dvc")
    for command in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, check=True)
    shown = subprocess.run([dvc, "metrics", "show", "--json"], cwd=tmp_path, capture_output=True, text=True, check=True)
    metrics = json.loads(shown.stdout)[""]["data"]["report/summary.json"]["data"]
    assert metrics == json.loads((built / "summary.json").read_text())
    plots = subprocess.run([dvc, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True, check=True)
    data = json.loads(plots.stdout)["data"]
    values = data["report/pareto.csv"][0]["content"]["data"]["values"]
    assert len(values) == 2 and {"gpu_hours", "val_acc", "configuration"} <= set(values[0])


@pytest.mark.slow
def test_unknown_experiments_and_grids_and_empty_experiments_are_one_line_errors(tracking_server, tmp_path):
    client = mlflow.MlflowClient(tracking_server)
    empty = f"empty{os.getpid()}"
    client.create_experiment(empty)
    cases = [
        ({"experiment": "no-such-experiment"}, "no experiment named 'no-such-experiment'"),
        ({"grid": "no-such-grid"}, "no grid named 'no-such-grid'"),
        ({"experiment": empty}, f"experiment '{empty}'"),
        ({}, "exactly one of --experiment NAME or --grid NAME"),
        ({"experiment": empty, "grid": "g"}, "exactly one of"),
        ({"experiment": empty, "target_accuracy": 1.5}, "--target-accuracy=1.5"),
    ]
    for arguments, expected in cases:
        with pytest.raises(UserError) as error:
            build_report(client, tmp_path / "out", **arguments)
        assert expected in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.slow
def test_an_experiment_whose_runs_all_failed_still_gets_a_report_that_recommends_nothing(tracking_server, tmp_path):
    client = mlflow.MlflowClient(tracking_server)
    experiment = f"allfailed{os.getpid()}"
    experiment_id = client.create_experiment(experiment)
    for seed in (0, 1):
        run = client.create_run(experiment_id, tags={"config_hash": f"h{seed}"})
        for key, value in {
            "optimizer": "lamb",
            "batch_size": 8192,
            "seed": seed,
            "devices": 1,
            "num_nodes": 1,
            "micro_batch_size": "auto",
            "target_accuracy": 0.9,
        }.items():
            client.log_param(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FAILED")
    out = build_report(client, tmp_path / "report", experiment=experiment)
    text = (out / "summary.md").read_text()
    assert "no configuration finished" in text and "Recommendation: none" in text
    assert pd.read_csv(out / "table.csv")["status"].tolist() == ["2 FAILED"]
    assert json.loads((out / "summary.json").read_text())["failed_runs"] == 2
    assert (out / "index.html").read_text().count("Not drawn:") == 5


@pytest.mark.slow
def test_mfu_logged_by_the_runs_is_averaged_per_configuration_into_the_table(tracking_server, tmp_path):
    """Runs logged straight into MLflow, as a GPU training logs them: MFU per epoch, or none (the CPU)."""
    client = mlflow.MlflowClient(tracking_server)
    experiment = f"mfu{os.getpid()}"
    experiment_id = client.create_experiment(experiment)
    mfu = {("sgd", 0): [0.2, 0.4], ("sgd", 1): [0.5, 0.5], ("adam", 0): None}
    for (optimizer, seed), series in mfu.items():
        run_id = client.create_run(experiment_id, tags={"config_hash": f"{optimizer}{seed}"}).info.run_id
        for key, value in {"optimizer": optimizer, "seed": seed, "devices": 1, "num_nodes": 1}.items():
            client.log_param(run_id, key, value)
        for epoch in range(2):
            for name, value in {"val/acc": 0.5, "epoch_time_s": 10.0, "train/mfu": series and series[epoch]}.items():
                if value is not None:
                    client.log_metric(run_id, name, value, step=epoch)
        client.log_metric(run_id, "total_time_s", 20.0)
        client.set_terminated(run_id, "FINISHED")
    out = build_report(client, tmp_path / "report", experiment=experiment)
    table = pd.read_csv(out / "table.csv").set_index("optimizer")
    assert table.loc["sgd", "train/mfu"] == pytest.approx(statistics.fmean([0.3, 0.5]))  # seeds' run means
    assert math.isnan(table.loc["adam", "train/mfu"])
    markdown = (out / "table.md").read_text()
    assert "| train/mfu |" in markdown and "| 40.0% |" in markdown and "| – |" in markdown


# --- the pure parts on hand-made runs ---------------------------------------------------------------


def test_pareto_front_on_a_hand_checked_table():
    table = pd.DataFrame(
        {"gpu_hours": [1.0, 2.0, 2.0, 3.0, 0.5, 4.0, 1.0], "val/acc": [0.80, 0.85, 0.84, 0.85, 0.70, 0.90, 0.80]}
    )
    # 2.0/0.84 loses to 2.0/0.85; 3.0/0.85 to 2.0/0.85; the twin 1.0/0.80 points do not beat each other
    assert pareto_front(table).tolist() == [True, True, False, False, True, True, True]
    assert pareto_front(table.iloc[:0]).tolist() == []


def test_seeds_are_aggregated_and_unfinished_seeds_are_counted_but_not_averaged():
    records = [
        record("a", accuracy=(0.4, 0.6), seed=0),
        record("b", accuracy=(0.5, 0.8), seed=1),
        record("c", "FAILED", seed=2),
        record("d", "RUNNING", seed=3),
        record("e", accuracy=(0.3, 0.5), optimizer="adam"),
    ]
    found, varying = configurations(records)
    table = configuration_table(found, target=0.55).set_index("optimizer")
    sgd = table.loc["sgd"]
    assert varying == ["optimizer"] and sgd["status"] == "2 FINISHED, 1 FAILED, 1 RUNNING"
    assert (sgd["runs"], sgd["n_seeds"]) == (4, 2)
    assert sgd["val/acc"] == pytest.approx(0.7) and sgd["val/acc_std"] == pytest.approx(statistics.stdev([0.6, 0.8]))
    assert sgd["time_to_target_s"] == pytest.approx(statistics.fmean([20.0, 20.0])) and sgd["n_reached_target"] == 2
    assert table.loc["adam", "n_reached_target"] == 0 and math.isnan(table.loc["adam", "val/acc_std"])  # one seed


def test_the_mfu_column_is_shown_only_when_a_configuration_has_mfu():
    measured, unmeasured = record("a", optimizer="sgd"), record("b", optimizer="adam")
    measured.history["train/mfu"] = [0.25, 0.35]
    both = analyse([measured, unmeasured], "hand-made", "test", None)
    cells = {row["optimizer"][0]: row["train/mfu"][0] for row in display_rows(both.table, both.varying)}
    assert cells == {"sgd": "30.0%", "adam": "–"}
    neither = analyse([unmeasured, record("c", optimizer="lamb")], "hand-made", "test", None)
    assert all("train/mfu" not in row for row in display_rows(neither.table, neither.varying))


def test_scaling_compares_each_gpu_count_with_the_one_gpu_run_of_the_same_other_params():
    records = [
        record("1", speed=100.0),
        record("2", speed=180.0, devices=2, strategy="ddp"),
        record("4", speed=200.0, devices=2, num_nodes=2, strategy="ddp"),
        record("x", speed=999.0, devices=2, strategy="ddp", optimizer="adam"),
    ]  # no 1-GPU adam: no baseline
    found, varying = configurations(records)
    frame = scaling_frame(configuration_table(found), varying)
    assert frame["gpus"].tolist() == [1, 2, 4] and set(frame["group"]) == {"optimizer=sgd"}
    assert frame["speedup"].tolist() == pytest.approx([1.0, 1.8, 2.0])
    assert frame["efficiency"].tolist() == pytest.approx([1.0, 0.9, 0.5])


def test_batch_size_and_scaling_plots_are_drawn_when_their_parameter_varies(tmp_path):
    records = [
        record(f"{o}{b}", accuracy=(0.5, 0.5 + b / 10_000), optimizer=o, batch_size=b)
        for o in ("sgd", "adam")
        for b in (128, 1024)
    ]
    records += [record("ddp", devices=4, strategy="ddp", speed=350.0, batch_size=128)]
    analysed = analyse(records, "hand-made", "test", None)
    write_files(analysed, tmp_path)
    assert {"batch_size.png", "scaling.png"} <= {path.name for path in tmp_path.iterdir()}
    assert "Not drawn" not in (tmp_path / "index.html").read_text()
    assert report_plots.against_batch_size(analysed.table.iloc[:1], analysed.varying).skipped


def test_only_the_newest_run_of_each_config_hash_counts():
    class Run:  # the two attributes latest_by_hash reads
        def __init__(self, run_id, config_hash):
            self.info = type("Info", (), {"run_id": run_id})()
            self.data = type("Data", (), {"tags": {"config_hash": config_hash} if config_hash else {}})()

    newest_first = [Run("new", "h1"), Run("other", "h2"), Run("old", "h1"), Run("untagged", None)]
    assert [run.info.run_id for run in run_reading.latest_by_hash(newest_first).values()] == [
        "new",
        "other",
        "untagged",
    ]


def test_the_sentences_name_the_winners_and_recommend_the_cheapest_near_the_best():
    hours = {"a": 2.0, "b": 1.0, "c": 0.5}  # one epoch each, so epoch time = total time
    accuracy = {"a": 0.90, "b": 0.895, "c": 0.80}
    records = [
        record(name, accuracy=(accuracy[name],), seconds=(hours[name] * 3600,), optimizer=name, target_accuracy=0.85)
        for name in hours
    ]
    analysed = analyse(records, "hand-made", "test", target=0.85)
    fastest, most, budget, advice, recomputed = analysed.sentences
    assert fastest == (
        "Time to 85% val/acc (the target), fastest first: optimizer=b: 3600.0 s, 1 GPU-hours (1/1 seeds); "
        "optimizer=a: 7200.0 s, 2 GPU-hours (1/1 seeds); never reached by optimizer=c."
    )
    assert most.startswith("Highest val/acc, not established: optimizer=a (val/acc 0.9000 over 1 seed, 2 GPU-hours)")
    assert most.endswith("seeds needed to separate optimizer=a and optimizer=b: cannot say: one seed.")
    assert budget.startswith("Best under 1 GPU-hours (the median cost): optimizer=b")
    assert advice.startswith("Recommendation: optimizer=b") and "for 50% of its GPU-hours" in advice
    assert "within 0.01 val/acc of the most accurate (optimizer=a)" in advice and "single seed" in advice
    assert recomputed.startswith("Time to target recomputed for val/acc 0.85")
    assert analysed.front.tolist() == [True, True, True]


def test_numbers_spelled_differently_are_one_configuration():
    assert {normalised(v) for v in ("1e-3", "0.001", "0.0010")} == {"0.001"}
    assert normalised("1") == normalised("1.0") == "1" and normalised("auto") == "auto"
    assert redact("postgresql://me:secret@db/mlflow") == "postgresql://me:***@db/mlflow"  # what reports show


def test_a_report_folder_is_marked_and_an_earlier_report_may_be_replaced(tmp_path):
    report = analyse([record("a"), record("b", optimizer="adam")], "hand-made", "test", None)
    folder = tmp_path / "report"
    folder.mkdir()
    write_files(report, folder)
    assert (folder / REPORT_MARKER).is_file()
    assert check_out_dir(folder) == folder.resolve()
    assert check_out_dir(tmp_path / "new") == (tmp_path / "new").resolve()
    (tmp_path / "empty").mkdir()
    assert check_out_dir(tmp_path / "empty") == (tmp_path / "empty").resolve()


def test_a_folder_that_is_not_an_earlier_report_is_refused_and_kept(tmp_path):
    work = tmp_path / "thesis"
    work.mkdir()
    (work / "chapter1.tex").write_text("years of work\n")
    (tmp_path / "notes.txt").write_text("a file\n")
    for out, words in [(work, "is not empty and not an earlier report"), (tmp_path / "notes.txt", "is a file")]:
        with pytest.raises(UserError) as error:
            check_out_dir(out)
        assert str(error.value).startswith(f"--out {out}: {out.resolve()} ") and words in str(error.value)
        assert "\n" not in str(error.value)
    assert (work / "chapter1.tex").read_text() == "years of work\n"


@pytest.mark.parametrize("out", [".", "data"])
def test_report_out_on_a_working_folder_is_one_line_and_touches_nothing(project, out):
    (project / "data").mkdir(exist_ok=True)
    (project / "data" / "keep.txt").write_text("mine\n")
    before = sorted(str(path.relative_to(project)) for path in project.rglob("*") if "mlflow" not in path.name)
    done = subprocess.run(
        [sys.executable, "-m", "hpcsweep", "report", "--experiment", "any", "--out", out],
        cwd=project,
        env=environment(f"sqlite:///{project / 'mlflow.db'}"),
        capture_output=True,
        text=True,
    )
    error = done.stderr.splitlines()[-1]  # after MLflow's own lines as it creates the empty store
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert error.startswith(f"Error: --out {out}: {(project / out).resolve()} is not empty and not an earlier")
    after = sorted(str(path.relative_to(project)) for path in project.rglob("*") if "mlflow" not in path.name)
    assert after == before and (project / "data" / "keep.txt").read_text() == "mine\n"
