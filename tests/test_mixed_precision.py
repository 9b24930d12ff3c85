"""16-mixed and bf16-mixed with micro-batches, on the CPU: the precision the config names is the one that runs.

Lightning alone would train `16-mixed` on the CPU as bf16-mixed; the project's precision plugin
(training/mixed_precision.py) runs fp16 autocast with a GradScaler there too, so loss scaling
under manual optimization, micro-batches, out-of-memory retries and the layer-wise optimizers
are checked on any machine. Small 8x8 images keep autocast, slow on a CPU, to seconds.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.nn import functional as F

from helpers.lightning_fit import fit, learnable_batch, module_for, parameters_of
from hpcsweep.config import load_config
from hpcsweep.tracking.run_folder import RunFolder
from hpcsweep.training.mixed_precision import precision_plugin
from hpcsweep.training.module import ResNetModule
from hpcsweep.training.train import build_trainer

AUTOCAST_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def loss_on(module: ResNetModule, images, labels) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(module(images), labels))


@pytest.mark.parametrize(
    ("precision", "dtype", "scaled"), [("16-mixed", "float16", True), ("bf16-mixed", "bfloat16", False)]
)
def test_the_trainer_trains_in_the_precision_the_config_names_on_the_cpu(project, tmp_path, precision, dtype, scaled):
    train = load_config(project / "params.yaml", ["accelerator=cpu", f"precision={precision}"]).train
    trainer = build_trainer(train, RunFolder.under(tmp_path, "run"), [])
    assert trainer.precision == precision
    assert trainer.precision_plugin.autocast_context_manager().fast_dtype == getattr(torch, dtype)
    assert (trainer.precision_plugin.scaler is not None) == scaled


@pytest.fixture
def run_out_of_memory_once(monkeypatch):
    """The `nth` training micro-batch raises OutOfMemoryError after its backward (a CPU cannot
    run out of memory for real: the kernel kills the process first); records the autocast dtype
    every micro-batch ran under."""
    real_backward = ResNetModule.backward_micro_batch
    seen = {"calls": 0, "autocast": set()}

    def inject(nth: int) -> dict:
        def backward_then_run_out(self, images, labels):
            seen["autocast"].add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            loss = real_backward(self, images, labels)
            seen["calls"] += 1
            if seen["calls"] == nth:
                raise torch.OutOfMemoryError("injected by the test")
            return loss

        monkeypatch.setattr(ResNetModule, "backward_micro_batch", backward_then_run_out)
        return seen

    return inject


@pytest.mark.slow  # 4 steps and a rerun under autocast, many times slower than fp32 on a CPU
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_trains_in_micro_batches_through_an_out_of_memory_retry(
    project, precision, run_out_of_memory_once
):
    images, labels = learnable_batch(16)
    module = module_for(
        project, f"precision={precision}", "batch_size=16", "base_batch_size=16", "micro_batch_size=8", "lr=0.05"
    )
    module.train()
    loss_before = loss_on(module, images, labels)
    seen = run_out_of_memory_once(nth=3)  # the first micro-batch of step 2
    trainer = fit(module, images, labels, steps=4, plugin=precision_plugin(precision, "cpu"))
    assert trainer.global_step == 4 and module.oom_retries == 1
    assert module.micro_batch_size == 4 and module.accumulate_grad_batches == 4  # the effective batch kept
    assert seen["autocast"] == {AUTOCAST_DTYPES[precision]}
    assert loss_on(module, images, labels) < 0.8 * loss_before
    scaler = trainer.precision_plugin.scaler
    if precision == "16-mixed":
        assert scaler.get_scale() > 1  # loss scaling really happened, and no step overflowed
    else:
        assert scaler is None


class GradientNormTheOptimizerSees(L.Callback):
    """The norm of the gradients each optimizer step receives (a torch step pre-hook)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.optimizers[0].register_step_pre_hook(self.record)

    def record(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad.flatten() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))


def one_step(project, optimizer: str, precision: str) -> tuple[torch.Tensor, float, L.Trainer]:
    """The weights' update in one step of two micro-batches, the gradient norm the optimizer saw, the trainer."""
    module = module_for(
        project,
        f"optimizer={optimizer}",
        f"precision={precision}",
        "batch_size=16",
        "base_batch_size=16",
        "micro_batch_size=8",
        "scheduler=constant",
    )
    images, labels = learnable_batch(16)
    seen = GradientNormTheOptimizerSees()
    before = parameters_of(module)
    trainer = fit(module, images, labels, steps=1, plugin=precision_plugin(precision, "cpu"), callbacks=[seen])
    after = parameters_of(module)
    [norm] = seen.norms
    return torch.cat([(after[name] - before[name]).flatten() for name in before]), norm, trainer


@pytest.mark.parametrize("optimizer", ["sgd", "lars", "lamb"])
def test_one_16_mixed_step_moves_the_weights_as_a_32_true_step_does(project, optimizer):
    """The scaler must unscale the accumulated gradients before the optimizer sees them, or SGD and
    LARS's non-adapted parameters (BatchNorm, biases) step 65536 times too far and LARS's trust
    ratio is computed from scaled norms. LAMB's update, a ratio of Adam moments, does not change
    with a constant gradient scale, so for LAMB only the gradients the optimizer saw can tell.
    fp16 autocast alone moves a randomly initialised ResNet's gradients by 5-8% (measured), hence
    the tolerances."""
    fp32_update, fp32_norm, _ = one_step(project, optimizer, "32-true")
    fp16_update, fp16_norm, trainer = one_step(project, optimizer, "16-mixed")
    assert trainer.precision_plugin.scaler.get_scale() > 1  # the loss was scaled
    assert 0.85 < fp16_norm / fp32_norm < 1.15  # ... and the gradients unscaled before the step
    assert 0.8 < float(fp16_update.norm() / fp32_update.norm()) < 1.25
    assert float(F.cosine_similarity(fp16_update, fp32_update, dim=0)) > 0.9
