"""The speed knobs and the figures that judge them: FLOPs per image, peak FLOPs per GPU, MFU, compile.

The pure parts are checked against hand counts and NVIDIA's datasheets; the trainings check that
the figures reach MLflow, that MFU is left out where no peak is known (the CPU), and that
`compile: true` trains and writes checkpoints an uncompiled model loads.
"""

from __future__ import annotations

import mlflow
import pytest
import torch

from helpers.runs import QUICK
from hpcsweep.config import load_config
from hpcsweep.hardware.flops import forward_flops, model_flops_utilisation, number_format, peak_flops_per_s
from hpcsweep.models import build_model
from hpcsweep.tracking.run_folder import LAST_CHECKPOINT
from hpcsweep.tracking.tags import PRECISION_USED
from hpcsweep.training.efficiency import device_peak_flops, model_forward_flops
from hpcsweep.training.module import ResNetModule
from hpcsweep.training.train import run_folder_for, train

# --- the pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_name", "precision", "tf32", "tflops"),
    [
        ("Tesla P100-PCIE-16GB", "32-true", True, 9.3),  # no TF32 before Ampere: fp32
        ("Tesla P100-PCIE-12GB", "16-mixed", True, 18.7),
        ("Tesla P100-SXM2-16GB", "16-mixed", True, 21.2),
        ("Tesla P100-PCIE-16GB", "bf16-mixed", True, None),  # no bf16 hardware: no peak, no MFU
        ("Tesla V100-SXM2-32GB", "16-mixed", True, 125.0),
        ("Tesla V100-PCIE-16GB", "16-mixed", True, 112.0),
        ("Tesla V100-SXM2-16GB", "32-true", True, 15.7),
        ("Tesla T4", "16-mixed", True, 65.0),
        ("NVIDIA A100-SXM4-80GB", "32-true", True, 156.0),
        ("NVIDIA A100-PCIE-40GB", "32-true", False, 19.5),
        ("NVIDIA A100 80GB PCIe", "bf16-mixed", True, 312.0),
        ("NVIDIA A10", "bf16-mixed", True, 125.0),
        ("NVIDIA L40S", "16-mixed", True, 362.05),
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", True, 989.5),
        ("NVIDIA H100 80GB HBM3", "32-true", False, 67.0),
        ("NVIDIA H100 PCIe", "bf16-mixed", True, 756.5),
        ("NVIDIA H100 PCIe", "32-true", False, 51.0),
        ("NVIDIA H100 NVL", "bf16-mixed", True, 835.5),
        ("NVIDIA H200", "bf16-mixed", True, 989.5),
        ("NVIDIA H200 NVL", "bf16-mixed", True, 835.5),
        ("NVIDIA A10G", "bf16-mixed", True, None),  # not the A10: unknown, not matched to it
        ("NVIDIA GeForce RTX 4090", "bf16-mixed", True, None),
    ],
)
def test_peak_flops_come_from_the_datasheet_row_of_the_name_torch_reports(device_name, precision, tf32, tflops):
    peak = peak_flops_per_s(device_name, precision, tf32)
    assert peak == (pytest.approx(tflops * 1e12) if tflops else None)


def test_the_cpu_has_no_peak_and_an_unknown_precision_is_a_programming_error():
    assert device_peak_flops(torch.device("cpu"), "32-true") is None
    with pytest.raises(ValueError, match="'64-true'"):
        number_format("64-true", tf32_convolutions=True)


def resnet20_forward_macs_by_hand() -> int:
    """He et al.'s ResNet-20 layer by layer: a 3x3 conv from c_in to c_out channels on an h x w
    output does h * w * c_out * c_in * 9 multiply-accumulates; option-A shortcuts do none."""
    conv = lambda side, c_in, c_out: side * side * c_out * c_in * 9  # noqa: E731
    stem = conv(32, 3, 16)
    stage1 = 6 * conv(32, 16, 16)
    stage2 = conv(16, 16, 32) + 5 * conv(16, 32, 32)  # the first conv strides to 16 x 16
    stage3 = conv(8, 32, 64) + 5 * conv(8, 64, 64)
    classifier = 64 * 10
    return stem + stage1 + stage2 + stage3 + classifier


def test_forward_flops_are_two_per_multiply_accumulate_of_a_hand_count_and_the_published_figures():
    resnet20 = model_forward_flops("resnet20")
    assert resnet20 == 2 * resnet20_forward_macs_by_hand()
    # published as "41M" / "0.56G" FLOPs, which are multiply-accumulates (one FMA = 2 FLOPs)
    assert resnet20 / 2 == pytest.approx(41e6, rel=0.02)
    assert model_forward_flops("resnet18") / 2 == pytest.approx(0.56e9, rel=0.01)


def test_counting_a_live_model_leaves_its_batchnorm_statistics_and_mode_alone():
    model = build_model("resnet20").train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    assert forward_flops(model) == model_forward_flops("resnet20")
    assert model.training
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_mfu_is_three_forward_passes_per_image_over_the_peak():
    # 1 GFLOP forward per image at 1,000 images/s = 3 TFLOP/s achieved, on two 5-TFLOP/s devices
    assert model_flops_utilisation(1e9, 1000.0, 2 * 5e12) == pytest.approx(0.3)


# --- real trainings ---------------------------------------------------------------------------------


def train_quick(prepared, tmp_path, monkeypatch, *assignments: str):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = load_config(
        prepared.parent.parent / "params.yaml",
        [*QUICK, f"tracking.checkpoint_dir={tmp_path / 'checkpoints'}", *assignments],
    )
    return config, train(config)


@pytest.mark.slow
def test_model_flops_reach_mlflow_each_epoch_and_mfu_is_left_out_on_the_cpu(prepared, tmp_path, monkeypatch):
    _, result = train_quick(prepared, tmp_path, monkeypatch, "max_epochs=2")
    client = mlflow.MlflowClient()
    assert result.status == "FINISHED"
    logged = client.get_metric_history(result.run_id, "model_gflops_per_image")
    resnet20 = pytest.approx(0.0811020806)  # GFLOPs: hand-checked in the test above
    assert sorted((m.step, m.value) for m in logged) == [(0, resnet20), (1, resnet20)]
    assert "train/mfu" not in client.get_run(result.run_id).data.metrics  # no peak for a CPU: no made-up MFU


@pytest.mark.slow
def test_a_compiled_training_writes_checkpoints_an_uncompiled_model_loads(prepared, tmp_path, monkeypatch):
    torch._dynamo.utils.counters.clear()  # process-wide: count this training's graphs only
    config, result = train_quick(prepared, tmp_path, monkeypatch, "compile=true")
    assert result.status == "FINISHED" and result.epochs == 1
    checkpoint = run_folder_for(config, None).path / LAST_CHECKPOINT  # a run of its own: named by the config hash
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the network did run compiled
    loaded = ResNetModule.load_from_checkpoint(checkpoint, strict=True)  # a renamed or missing key raises
    assert loaded.config.compile  # trained compiled; the loaded model is not


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_mfu_is_logged_where_its_peak_is_known(prepared, tmp_path, monkeypatch):
    _, result = train_quick(prepared, tmp_path, monkeypatch, "accelerator=gpu")
    run = mlflow.MlflowClient().get_run(result.run_id)
    metrics = run.data.metrics
    known = device_peak_flops(torch.device("cuda", 0), run.data.params[PRECISION_USED]) is not None
    assert torch.backends.cudnn.benchmark  # set by the Trainer on CUDA
    assert ("train/mfu" in metrics) == known, torch.cuda.get_device_name(0)
    if known:
        assert 0 < metrics["train/mfu"] < 1
