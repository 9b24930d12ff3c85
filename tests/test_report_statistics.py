"""The report's answers a reviewer checks, on hand-made runs whose right answers are worked out by hand:
confidence intervals and Welch's test, the "tied" verdict and the seeds that would separate a tie,
tuned selection with its edge-of-range warning, choices that never read test/acc, the sentence
for choices made on the test split, pruned points and what they saved, and device-hours named
for the device. No server, no training: each test takes well under a second."""

from __future__ import annotations

import json
import math

import pytest

from helpers.report_records import record, seeds, tuned
from hpcsweep.report.build import analyse, write_files
from hpcsweep.report.records import PRUNED_TAG, TUNED_TAG
from hpcsweep.report.render import display_rows, markdown_table, tuning_rows
from hpcsweep.report.statistics import ci_half_width, seeds_to_separate, tied, welch_p
from hpcsweep.report.summary import summary_numbers

T_975_2 = 4.302653  # Student's t, two-sided 95%, 2 degrees of freedom (every printed t-table: 4.303)


def sentence(analysed, start: str) -> str:
    [found] = [said for said in analysed.sentences if said.startswith(start)]
    return found


def rows_by_label(analysed) -> dict[str, dict[str, str]]:
    rows = display_rows(analysed.table, analysed.varying, analysed.device)
    return {row["optimizer"][0] + ("" if "lr" not in row else f"@{row['lr'][0]}"): row for row in rows}


def summary(analysed) -> dict:
    return summary_numbers(analysed.records, analysed.table, analysed.front, analysed.device)


def test_a_mean_gets_a_student_t_interval_and_two_means_a_welch_test_as_computed_by_hand():
    assert ci_half_width([0.80, 0.82, 0.84]) == pytest.approx(T_975_2 * 0.02 / math.sqrt(3))  # 0.0497
    assert ci_half_width([0.80, 0.82, 0.84]) == pytest.approx(0.0497, abs=1e-4)
    assert math.isnan(ci_half_width([0.8]))
    # Welch: d = 0.02, s = 0.02 in both, t = 0.02 / sqrt(2 x 0.02^2 / 3) = sqrt(1.5), df = 4; Student's
    # t with 4 degrees of freedom has F(t) = 1/2 + 3/8 x/sqrt(1+x^2/4) (1 - x^2 / (12 (1 + x^2/4)))
    x = math.sqrt(1.5)
    cdf = 0.5 + 3 / 8 * x / math.sqrt(1 + x**2 / 4) * (1 - x**2 / (12 * (1 + x**2 / 4)))
    assert welch_p([0.80, 0.82, 0.84], [0.78, 0.80, 0.82]) == pytest.approx(2 * (1 - cdf))  # 0.2879
    assert math.isnan(welch_p([0.8], [0.7, 0.71]))
    analysed = analyse(seeds("a", [0.80, 0.82, 0.84]) + seeds("b", [0.78, 0.80, 0.82]), "hand-made", "test", None)
    table = analysed.table.set_index("optimizer")
    assert table.loc["a", "val/acc"] == pytest.approx(0.82)
    assert table.loc["a", "val/acc_ci95"] == pytest.approx(0.0497, abs=1e-4)
    assert table.loc["b", "p_vs_best"] == pytest.approx(0.2879, abs=1e-4)
    assert rows_by_label(analysed)["a"]["val/acc"][0] == "0.8200 ± 0.0497"
    assert rows_by_label(analysed)["b"]["p vs best"][0] == "0.288 (tied)"


def test_overlapping_intervals_are_called_tied_with_the_seeds_that_would_separate_them():
    best, other = [0.80, 0.82, 0.84], [0.78, 0.80, 0.82]
    assert tied(best, other) is True and tied(best, [0.60, 0.61, 0.62]) is False and tied(best, [0.7]) is None
    # pooled s = 0.02, d = 0.02: the fewest n with n >= 2 (t(2n-2) s/d)^2 = 2 t(2n-2)^2:
    # n = 8: 2 x 2.1448^2 = 9.2 > 8; n = 9: 2 x 2.1199^2 = 8.99 <= 9
    assert seeds_to_separate(best, other) == 9
    assert seeds_to_separate(best, [0.7]) is None and seeds_to_separate(best, best) == math.inf
    analysed = analyse(seeds("a", best) + seeds("b", other) + seeds("c", [0.60, 0.61, 0.62]), "h", "test", None)
    verdict = sentence(analysed, "Tied within noise for the highest val/acc: optimizer=a")
    assert "and optimizer=b (val/acc 0.8000 ± 0.0497 over 3 seeds)" in verdict and "optimizer=c" not in verdict
    assert verdict.endswith(
        "about 9 seeds per configuration would separate optimizer=a and optimizer=b at the measured spread."
    )
    assert not any(said.startswith("Most accurate") for said in analysed.sentences)
    assert summary(analysed)["tied_with_best"] == 1


def test_a_winner_is_named_only_when_separated_and_one_seed_establishes_nothing():
    clear = analyse(seeds("a", [0.90, 0.91, 0.92]) + seeds("b", [0.70, 0.71, 0.72]), "h", "test", None)
    assert sentence(clear, "Most accurate: optimizer=a").endswith(
        "ahead of every other configuration (95% intervals apart, Welch's t-test p < 0.05)."
    )
    single = analyse(seeds("a", [0.90]) + seeds("b", [0.70, 0.71]), "h", "test", None)
    said = sentence(single, "Highest val/acc, not established: optimizer=a (val/acc 0.9000 over 1 seed")
    assert said.endswith("seeds needed to separate optimizer=a and optimizer=b: cannot say: one seed.")
    assert rows_by_label(single)["b"]["p vs best"][0] == "– (one seed)"


def test_each_tuned_set_up_is_compared_at_its_best_value_and_an_edge_value_is_warned_about():
    sgd = {"0.01": [0.70, 0.72], "0.1": [0.80, 0.82], "0.3": [0.84, 0.86]}  # best at the top of the range
    adam = {"0.0003": [0.78, 0.80], "0.001": [0.83, 0.85], "0.003": [0.75, 0.77]}  # best inside it
    records = [run for lr, finals in sgd.items() for run in seeds("sgd", finals, lr=lr, tags=tuned())]
    records += [run for lr, finals in adam.items() for run in seeds("adam", finals, lr=lr, tags=tuned())]
    records += seeds("lamb", [0.5, 0.52], lr=0.01)  # no tag: tuned nothing, compared as it is
    analysed = analyse(records, "hand-made", "test", None)
    shown = rows_by_label(analysed)
    assert set(shown) == {"sgd@0.3", "adam@0.001", "lamb@0.01"}  # one row per set-up
    assert shown["sgd@0.3"]["tuned"][0] == "lr 0.01..0.3, 3 values"
    assert shown["adam@0.001"]["tuned"][0] == "lr 0.0003..0.003, 3 values" and shown["lamb@0.01"]["tuned"][0] == ""
    warnings = [said for said in analysed.sentences if said.startswith("Tuning:")]
    assert warnings == ["Tuning: best lr=0.3 is the largest tried for optimizer=sgd: extend the range."]
    assert "optimizer=sgd, lr=0.3 (of lr 0.01..0.3, 3 values)" in sentence(analysed, "Each tuned set-up")
    assert set(analysed.table.loc[analysed.table["chosen"] & (analysed.table["n_seeds"] > 0), "configuration"]) == {
        "optimizer=sgd, lr=0.3",
        "optimizer=adam, lr=0.001",
        "optimizer=lamb, lr=0.01",
    }
    assert summary(analysed)["best_configuration"] == "optimizer=sgd, lr=0.3"


def test_a_tuned_value_at_the_bottom_of_the_range_is_warned_about_too():
    records = [run for lr in ("0.01", "0.1") for run in seeds("sgd", [0.9 - float(lr)], lr=lr, tags=tuned())]
    analysed = analyse([*records, *seeds("adam", [0.5], lr=0.01)], "hand-made", "test", None)
    assert "Tuning: best lr=0.01 is the smallest tried for optimizer=sgd: extend the range." in analysed.sentences


def test_every_choice_reads_val_acc_and_test_acc_is_only_reported():
    """test/acc ranks each pair the other way round; every choice must follow val/acc."""
    records = [
        *seeds("sgd", [0.80, 0.82], [0.50, 0.52], lr=0.1, tags=tuned()),
        *seeds("sgd", [0.70, 0.72], [0.95, 0.97], lr=0.01, tags=tuned()),
        *seeds("adam", [0.60, 0.62], [0.99, 0.99], lr=0.001),
    ]
    # time to 0.75: val/acc gets there in the second epoch only; test/acc in the first
    records += [
        record(f"slow{seed}", accuracy=(0.5, 0.8), test_accuracy=(0.9, 0.9), optimizer="rmsprop", lr=1, seed=seed)
        for seed in (0, 1)
    ]
    analysed = analyse(records, "hand-made", "test", target=0.75)
    numbers = summary(analysed)
    assert numbers["best_configuration"] == "optimizer=sgd, lr=0.1" and numbers["best_test_acc"] == pytest.approx(0.51)
    assert analysed.table.set_index("configuration").loc["optimizer=rmsprop, lr=1", "time_to_target_s"] == 20.0
    assert "optimizer=adam" not in sentence(analysed, "Recommendation:")
    shown = rows_by_label(analysed)
    assert "sgd@0.01" not in shown and shown["sgd@0.1"]["test/acc"][0].startswith("0.5100 ± ")
    assert "| test/acc |" in markdown_table(display_rows(analysed.table, analysed.varying, analysed.device))
    tuning = markdown_table(tuning_rows(analysed.table, analysed.varying))  # every value tried, the chosen marked
    assert "| optimizer=sgd | 0.01 | 2 FINISHED | 2 | 0.7100 ± 0.1271 |  |" in tuning
    assert "| optimizer=sgd | 0.1 | 2 FINISHED | 2 | 0.8100 ± 0.1271 | chosen |" in tuning


@pytest.mark.parametrize("val_size", ["0", None])
def test_choices_made_on_the_test_split_are_said_in_one_sentence(val_size):
    records = seeds("a", [0.8, 0.82], val_size=val_size or "x") + seeds("b", [0.7, 0.72], val_size=val_size or "x")
    if val_size is None:  # runs from before the validation split: no val_size param at all
        for run in records:
            del run.params["val_size"]
    analysed = analyse(records, "hand-made", "test", None)
    [note] = [said for said in analysed.sentences if "test split" in said]
    assert note.startswith("Choices were made on the test split: these runs held no validation split out")
    assert summary(analysed)["choices_on_test_split"] == 1
    held_out = analyse(seeds("a", [0.8, 0.82]), "hand-made", "test", None)
    assert not any("test split" in said for said in held_out.sentences)
    assert summary(held_out)["choices_on_test_split"] == 0


def test_pruned_points_are_shown_never_averaged_in_cannot_win_and_their_savings_are_counted():
    pruned = {PRUNED_TAG: "1", TUNED_TAG: "lr", "device_type": "GPU"}
    records = [
        *seeds("sgd", [0.80, 0.82], lr=0.1, tags=tuned(), max_epochs=4),
        # a seed of the same point pruned at epoch 2 of 4, on 2 GPUs: (4 - 2) x 30 s x 2 / 3600 = 1/30 h
        record(
            "cut",
            "KILLED",
            accuracy=(0.1, 0.99),
            seconds=(30.0, 30.0),
            tags=pruned | {PRUNED_TAG: "2"},
            lr=0.1,
            max_epochs=4,
            devices=2,
            seed=9,
        ),
        # an absurd lr pruned at epoch 1 of 4 after 60 s, on 1 GPU: 3 x 60 / 3600 = 1/20 h; its one
        # epoch looked best of all, and it still cannot be chosen
        record("absurd", "KILLED", accuracy=(0.99,), seconds=(60.0,), tags=pruned, lr=10, max_epochs=4),
    ]
    analysed = analyse(records, "hand-made", "test", None)
    table = analysed.table.set_index("configuration")
    assert table.loc["lr=0.1, devices=1", "status"] == "2 FINISHED"
    assert table.loc["lr=0.1, devices=2", "status"] == "1 pruned at epoch 2"
    numbers = summary(analysed)
    assert numbers["best_configuration"] == "lr=0.1, devices=1" and numbers["best_val_acc"] == pytest.approx(0.81)
    assert (numbers["pruned_runs"], numbers["killed_runs"]) == (2, 0)
    assert numbers["device_hours_saved"] == pytest.approx(1 / 30 + 1 / 20)
    assert sentence(analysed, "Early stopping pruned 2 points at epochs 1, 2, saving about 0.0833 GPU-hours")
    assert not any(said.startswith("Not all runs finished") for said in analysed.sentences)


def test_a_pruned_seed_is_counted_in_the_status_of_its_configuration_and_left_out_of_its_mean():
    pruned = {PRUNED_TAG: "1", "device_type": "GPU"}
    records = [*seeds("sgd", [0.80, 0.82]), record("cut", "KILLED", accuracy=(0.1,), tags=pruned, seed=5)]
    row = analyse(records, "hand-made", "test", None).table.iloc[0]
    assert (row["status"], row["n_seeds"], row["runs"], row["val/acc"]) == (
        "2 FINISHED, 1 pruned at epoch 1",
        2,
        3,
        0.81,
    )


@pytest.mark.parametrize(
    ("tags", "accelerator", "name"),
    [
        ({"device_type": "CPU"}, "auto", "CPU-hours"),
        ({"device_type": "GPU"}, "auto", "GPU-hours"),
        ({}, "gpu", "GPU-hours"),  # runs older than the tag: the accelerator says
        ({}, "cuda", "GPU-hours"),
        ({}, "auto", "device-hours"),  # ... or does not
    ],
)
def test_device_hours_are_named_for_the_device_the_runs_used(tags, accelerator, name):
    records = seeds("a", [0.8, 0.82], tags=tags, accelerator=accelerator) + seeds(
        "b", [0.6, 0.62], tags=tags, accelerator=accelerator
    )
    analysed = analyse(records, "hand-made", "test", None)
    text = " ".join(analysed.sentences)
    assert f" {name}" in text and all(other not in text for other in {"CPU-hours", "GPU-hours"} - {name})
    header = markdown_table(display_rows(analysed.table, analysed.varying, analysed.device)).splitlines()[0]
    assert f"| {name} to target |" in header and f"| {name} |" in header
    assert summary(analysed)["device_hours_name"] == name


def test_the_page_and_its_plot_name_cpu_hours_for_a_study_on_cpus(tmp_path):
    cpu = {"device_type": "CPU"}
    write_files(analyse(seeds("a", [0.8], tags=cpu) + seeds("b", [0.6], tags=cpu), "hand-made", "test", None), tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "val/acc against CPU-hours: the Pareto front" in page and "GPU-hours" not in page
    assert json.loads((tmp_path / "summary.json").read_text())["device_hours_name"] == "CPU-hours"


def test_a_study_on_cpus_and_gpus_together_is_counted_in_device_hours():
    records = seeds("a", [0.8, 0.82], tags={"device_type": "CPU"}) + seeds("b", [0.6, 0.62])
    assert analyse(records, "hand-made", "test", None).device == "device-hours"


def test_time_to_the_target_leads_the_findings_and_ranks_the_table():
    fast = [record(f"f{s}", accuracy=(0.86, 0.87), optimizer="fast", seed=s) for s in (0, 1)]  # 10 s to 0.85
    slow = [record(f"s{s}", accuracy=(0.50, 0.95), optimizer="slow", seed=s) for s in (0, 1)]  # 20 s
    never = [record(f"n{s}", accuracy=(0.50, 0.60), optimizer="never", seed=s) for s in (0, 1)]
    analysed = analyse(fast + slow + never, "hand-made", "test", target=0.85)
    assert analysed.sentences[0] == (
        "Time to 85% val/acc (the target), fastest first: optimizer=fast: 10.0 s, 0.00278 GPU-hours (2/2 seeds); "
        "optimizer=slow: 20.0 s, 0.00556 GPU-hours (2/2 seeds); never reached by optimizer=never."
    )
    assert analysed.table["optimizer"].tolist() == ["fast", "slow", "never"]
    numbers = summary(analysed)
    assert numbers["fastest_configuration"] == "optimizer=fast" and numbers["best_configuration"] == "optimizer=slow"
    assert numbers["fastest_time_to_target_s"] == 10.0


def test_when_nothing_reaches_the_target_the_median_best_val_acc_is_timed_instead():
    ahead = [record(f"a{s}", accuracy=(0.72, 0.73), optimizer="a", seed=s) for s in (0, 1)]
    behind = [record(f"b{s}", accuracy=(0.50, 0.71), optimizer="b", seed=s) for s in (0, 1)]
    analysed = analyse(ahead + behind, "hand-made", "test", target=0.9)  # bests 0.73, 0.73, 0.71, 0.71
    assert analysed.sentences[0] == (
        "Nothing reached the target (90% val/acc). Time to 72% val/acc (the median best val/acc), fastest first: "
        "optimizer=a: 10.0 s, 0.00278 GPU-hours (2/2 seeds); never reached by optimizer=b."
    )


def two_seeds(name: str, finals: tuple[float, float], seconds: float) -> list:
    return [
        record(f"{name}-{seed}", accuracy=(final,), seconds=(seconds,), optimizer=name, seed=seed)
        for seed, final in enumerate(finals)
    ]


@pytest.mark.parametrize(("cheaper_seconds", "recommended"), [(9.5, "optimizer=a"), (5.0, "optimizer=b")])
def test_a_tied_configuration_is_recommended_over_the_best_only_for_a_real_saving(cheaper_seconds, recommended):
    """Two seeds tie nearly everything (t = 12.7): a set-up 10 points lower must not be recommended
    over the most accurate for a saving as small as 5%, which is itself within noise."""
    records = [*two_seeds("a", (0.40, 0.30), 10.0), *two_seeds("b", (0.30, 0.20), cheaper_seconds)]
    advice = sentence(analyse(records, "hand-made", "test", None), "Recommendation:")
    assert advice.startswith(f"Recommendation: {recommended} "), advice


def test_a_study_of_many_configurations_plots_the_curves_of_the_most_accurate_only():
    """A legend cannot name hundreds of lines (a 1000-point study has over 300 configurations):
    the curve plots keep the MAX_CURVES most accurate at their last epoch, and say so."""
    import pandas as pd

    from hpcsweep.report.plots import MAX_CURVES, accuracy_curves, most_accurate_curves

    finals = {f"lr={index}": 0.5 + ((index * 7) % 20) / 100 for index in range(20)}  # 20 distinct finals
    curves = pd.DataFrame(
        [
            {"configuration": label, "epoch": epoch, "wall_time_s": epoch + 1.0, "val_acc": final * (epoch + 1) / 3}
            for label, final in finals.items()
            for epoch in range(3)
        ]
    )
    kept = most_accurate_curves(curves)
    assert set(kept["configuration"]) == set(sorted(finals, key=finals.get)[-MAX_CURVES:])
    assert len(kept) == 3 * MAX_CURVES
    assert accuracy_curves(curves).title.endswith(f": the {MAX_CURVES} most accurate of 20 configurations")
