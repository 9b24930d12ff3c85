"""train(config) -> TrainResult: one training, on any number of ranks, into one MLflow run.

The Lightning Trainer gets the strategy, precision and batching the config names, checkpoints
(last and best by `val/acc`, on the held-out validation split, each written whole:
checkpoint_io.py) in the training's run folder, and the efficiency callback. The folder is named
after the launcher's MLflow run or else the config hash, so that running the same training again
after an interruption finds the checkpoint and the run, and resumes both.
The whole fit happens inside one `TrackedRun`; the run's status says how training ended.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from hpcsweep.atomic import atomic_file
from hpcsweep.config import Config, TrainConfig
from hpcsweep.data.coverage import DataCoverage
from hpcsweep.data.loader import CIFAR10DataModule, load_stats
from hpcsweep.hardware.gpus import trains_on_cuda
from hpcsweep.hardware.precision import precision_for
from hpcsweep.models.normalised import NormalisedInput
from hpcsweep.ranks import global_rank, slurm_job
from hpcsweep.tracking.run import TrackedRun
from hpcsweep.tracking.run_folder import BEST_CHECKPOINT, LAST_CHECKPOINT, RunFolder
from hpcsweep.tracking.tags import PRECISION_USED
from hpcsweep.training.batch_plan import per_rank_batch_size
from hpcsweep.training.checkpoint_io import AtomicCheckpointIO, first_loadable
from hpcsweep.training.efficiency import EfficiencyMetrics
from hpcsweep.training.mixed_precision import precision_plugin
from hpcsweep.training.module import ResNetModule
from hpcsweep.training.preflight import check_can_train
from hpcsweep.training.progress import progress_display
from hpcsweep.training.prune_settings import PRUNED_AT_EPOCH, PruneSettings
from hpcsweep.training.pruning import Pruning


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_id: str | None
    status: str
    epochs: int
    steps: int  # optimizer steps
    val_acc: float | None
    best_val_acc: float | None
    val_loss: float | None
    train_loss: float | None
    total_time_s: float
    time_to_target_s: float | None
    effective_batch_size: int
    micro_batch_size: int | None
    accumulate_grad_batches: int | None
    oom_retries: int
    probe_time_s: float | None
    step_memory_mb: float | None
    probe_min_micro_batch_size: int | None  # the smallest and largest choice among the ranks
    probe_max_micro_batch_size: int | None

    def write_json(self, path: Path) -> None:
        with atomic_file(Path(path)) as temporary:
            temporary.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


def run_folder_for(config: Config, run_id: str | None) -> RunFolder:
    return RunFolder.under(config.tracking.checkpoint_dir, run_id or config.hash)


def strategy_for(train: TrainConfig):
    if train.strategy != "ddp":
        return train.strategy
    return DDPStrategy(process_group_backend="nccl" if trains_on_cuda(train.accelerator) else "gloo")


def build_trainer(train: TrainConfig, folder: RunFolder, callbacks: list[L.Callback]) -> L.Trainer:
    # Both are saved at the very end of an epoch (Lightning runs checkpoint callbacks after the
    # others), once autologging has spooled the epoch's figures: a job killed before the checkpoint
    # repeats the epoch (the spool drops the repeated figures), one killed after it loses nothing.
    # `last` is a callback of its own: ModelCheckpoint(save_last=True) writes last.ckpt only in
    # epochs that improve the monitored metric, and a resume would go back to the best epoch.
    best = ModelCheckpoint(
        dirpath=folder.path, filename=BEST_CHECKPOINT, monitor="val/acc", mode="max", save_on_train_epoch_end=True
    )
    last = ModelCheckpoint(
        dirpath=folder.path,
        filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
        save_top_k=1,  # with no monitor: the newest epoch, written over the previous one
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    return L.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=strategy_for(train),
        precision=None,  # the plugin below: Lightning would turn 16-mixed on the CPU into bf16-mixed
        max_epochs=train.max_epochs,
        callbacks=[best, last, *callbacks, progress_display()],  # best first: it is trainer.checkpoint_callback
        plugins=[AtomicCheckpointIO(), precision_plugin(train.precision, train.accelerator)],
        default_root_dir=folder.path,
        logger=False,
        enable_progress_bar=True,  # the display above: a bar on a terminal, a line per epoch in a log
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
        # cuDNN times its kernels for each new input shape once and keeps the fastest; elsewhere,
        # Lightning's default (torch's own setting)
        benchmark=True if trains_on_cuda(train.accelerator) else None,
    )


# Lightning's info lines that are advertisements or narrate its internals at every start, with no
# setting to turn them off: which devices exist (the run's params say which were used), the GPUs a
# rank sees, and the data loader it loads to count steps; its other lines (why fit stopped) stay.
# "HPU available" comes from the Habana plugin.
ROUTINE_LIGHTNING_LINES = (
    "💡 Tip:",
    "GPU available: ",
    "TPU available: ",
    "HPU available: ",
    "LOCAL_RANK: ",
    "Loading `train_dataloader` to estimate number of stepping batches",
)


def not_routine(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(ROUTINE_LIGHTNING_LINES)


def quiet_known_warnings() -> None:
    """Silence advice that does not apply here, so that real warnings stand out in job logs."""
    for message in (
        r".*when logging on epoch level in distributed setting.*",  # rank-0 figures, logged on purpose
        r"Checkpoint directory .* exists and is not empty",  # ours: it holds run.json
        r".*isinstance\(treespec, LeafSpec\)",  # inside Lightning
    ):
        warnings.filterwarnings("ignore", message=message)
    # Adding the same filter twice keeps one. Both packages are installed (MLflow's autologging
    # imports pytorch_lightning); rank_zero logs under the name of whichever was imported last.
    for package in ("lightning.pytorch", "pytorch_lightning"):
        for module in ("utilities.rank_zero", "accelerators.cuda"):
            logging.getLogger(f"{package}.{module}").addFilter(not_routine)


def train(config: Config, run_id: str | None = None, pruning: PruneSettings | None = None) -> TrainResult:
    """Train `config` into the MLflow run `run_id` (a launcher created it) or a run of its own,
    resuming an interrupted attempt; returns the final figures on every rank. With `pruning` (a grid
    point's), a training far behind its peers stops early and its run ends KILLED, tagged with the
    epoch (pruning.py)."""
    quiet_known_warnings()
    world_size = config.train.devices * config.train.num_nodes
    per_rank = per_rank_batch_size(config.train.batch_size, world_size)
    check_can_train(config)  # before any run exists
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    folder = run_folder_for(config, run_id)
    resume = first_loadable(folder.resume_candidates())
    if global_rank() == 0:
        folder.remove_unfinished_checkpoints()
        if not resume:
            folder.remove_checkpoints()
    precision = precision_for(config.train.accelerator, config.train.precision)
    with TrackedRun(config, folder, run_id, params={PRECISION_USED: precision}) as run:
        run.network_from_checkpoint = lambda path: served_network(path, Path(config.data.prepared_dir))
        check_requeue_budget(config, run)
        train_config = dataclasses.replace(config.train, precision=precision)
        return fit(config, train_config, run, resume, per_rank, pruning)


def served_network(checkpoint: Path, prepared_dir: Path) -> NormalisedInput:
    """The network in `checkpoint` as the logged model serves it: behind the prepared data's normalisation."""
    network = ResNetModule.load_from_checkpoint(checkpoint, map_location="cpu").model
    return NormalisedInput(network, *load_stats(prepared_dir))


def check_requeue_budget(config: Config, run: TrackedRun) -> None:
    """A job that SLURM keeps requeueing before it finishes an epoch (a time limit too short for
    one, a partition that preempts it at once) would requeue forever: give up after the budget."""
    stalled = run.folder.stalled_requeues(slurm_job())
    if stalled >= config.slurm.max_requeues:
        run.give_up(
            f"job {slurm_job()} was requeued {stalled} times in a row without finishing an epoch "
            f"(slurm.max_requeues={config.slurm.max_requeues}): give each job more time (slurm.time) "
            f"or make an epoch shorter"
        )


def fit(
    config: Config,
    train: TrainConfig,
    run: TrackedRun,
    resume: Path | None,
    per_rank: int,
    pruning: PruneSettings | None = None,
) -> TrainResult:
    """Fit `train` (the config's train section, its precision resolved) inside the open run; tell
    the run (and a pruned grid's study) the status the fit ended in and its final figures."""
    efficiency = EfficiencyMetrics(train.target_accuracy, train.model)
    stopper = Pruning(pruning, run.id, train.max_epochs) if pruning else None
    trainer = build_trainer(train, run.folder, [efficiency, DataCoverage(), *([stopper] if stopper else [])])
    datamodule = CIFAR10DataModule(
        config.data.prepared_dir,
        loader=config.data.loader,
        batch_size=per_rank,
        seed=config.train.seed,
        limit_train_samples=train.limit_train_samples,
    )
    module = ResNetModule.from_config(train)
    if train.compile:
        # in place: unlike torch.compile(model), nn.Module.compile keeps the state_dict keys, so a
        # checkpoint loads into a model whether or not either was compiled
        module.model.compile()
    started = time.time()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        run.status = "FINISHED"
        if stopper and stopper.pruned_at:
            run.stop_early({PRUNED_AT_EPOCH: str(stopper.pruned_at)})
    except (KeyboardInterrupt, SystemExit):
        # SLURM's SIGUSR1: Lightning saved an hpc checkpoint and requeued the job, which is
        # now being stopped; the run waits for the restarted job, SCHEDULED, not KILLED
        run.status = "SCHEDULED" if run.folder.requeued_since(started) else "KILLED"
        if run.status == "SCHEDULED" and global_rank() == 0:
            run.folder.record_requeue(slurm_job(), started)
        raise
    finally:
        result = collect_result(run.id, run.status, trainer, module, efficiency)
        run.final_metrics, run.final_step = final_metrics(result), result.epochs
        if stopper:
            stopper.tell(run.status, result.best_val_acc)
    return result


def collect_result(
    run_id, status: str, trainer: L.Trainer, module: ResNetModule, efficiency: EfficiencyMetrics
) -> TrainResult:
    def metric(name: str) -> float | None:
        value = trainer.callback_metrics.get(name)
        return float(value) if value is not None else None

    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return TrainResult(
        run_id=run_id,
        status=status,
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        val_acc=metric("val/acc"),
        best_val_acc=float(best) if best is not None else None,
        val_loss=metric("val/loss"),
        train_loss=metric("train/loss"),
        total_time_s=efficiency.total_time_s,
        time_to_target_s=efficiency.time_to_target_s,
        effective_batch_size=module.config.batch_size,
        micro_batch_size=module.micro_batch_size,
        accumulate_grad_batches=module.accumulate_grad_batches if module.micro_batch_size else None,
        oom_retries=module.oom_retries,
        probe_time_s=module.probe.probe_time_s if module.probe else None,
        step_memory_mb=module.probe.step_memory_mb if module.probe else None,
        probe_min_micro_batch_size=module.probe_spread[0] if module.probe_spread else None,
        probe_max_micro_batch_size=module.probe_spread[1] if module.probe_spread else None,
    )


def final_metrics(result: TrainResult) -> dict[str, float]:
    figures = {
        "total_time_s": result.total_time_s,
        "best_val_acc": result.best_val_acc,
        "effective_batch_size": result.effective_batch_size,
        "probe_time_s": result.probe_time_s,
        "step_memory_mb": result.step_memory_mb,
        "probe_min_micro_batch_size": result.probe_min_micro_batch_size,
        "probe_max_micro_batch_size": result.probe_max_micro_batch_size,
    }
    return {name: float(value) for name, value in figures.items() if value is not None}
