"""Proof, every epoch, that the ranks of a DDP training saw disjoint shards of the data.

A sharding bug under DDP is silent: every rank trains on the same samples, the loss still
falls, and the study compares a "4-GPU" run that saw a quarter of the data. This callback sums
how often each training sample was served, over all ranks, and logs `train/unique_samples` and
`train/repeated_samples` (which must be 0) per epoch, so every run carries the evidence.
"""

from __future__ import annotations

import lightning as L
import torch


class DataCoverage(L.Callback):
    """Logs how many distinct training samples the ranks served together this epoch."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        loader = trainer.train_dataloader
        if not hasattr(loader, "served_indices"):  # the torchvision path shards with a sampler
            return
        served = loader.served_indices().to(pl_module.device)
        counts = torch.zeros(len(loader.labels), device=pl_module.device)
        counts.index_add_(0, served, torch.ones(len(served), device=pl_module.device))
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        pl_module.log("train/unique_samples", float((counts > 0).sum()), rank_zero_only=True)
        pl_module.log("train/repeated_samples", float((counts > 1).sum()), rank_zero_only=True)
