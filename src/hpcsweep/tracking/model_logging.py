"""The best checkpoint of a finished training as an MLflow model: `runs:/<run id>/model` loads it,
and the registry can take it.

Logged in MLflow's safe `pt2` format (torch.export: a graph and weights, no pickled code), so it
loads without hpcsweep installed; its signature is float32 RGB images N x 3 x 32 x 32 with values
in [0, 1] (as torchvision's ToTensor gives them) to 10 logits: the model normalises them itself,
with the prepared data's mean and std (models/normalised.py). The input example has
two images because torch.export fixes a dimension of size 1: with two, the batch stays free.

Logged after the run's spool was flushed, straight to the store, and only if the store answers
then: MLflow 3 creates a LoggedModel through REST calls of its own (create, link to the run,
upload into the model's own artifact location) that the spool does not carry, and each would
wait out minutes of MLflow's retries against a server that is away. A model that could not be
logged costs a warning, never the finished training: the checkpoints stay the run's artifacts.
It takes seconds on a CPU, most of it torch.export's (resnet20, on a shared 2-core machine: 2-3 s
once torch.export is warm, 10-20 s for the first export in a process).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import mlflow
import torch
from mlflow.entities import LoggedModel, Run
from mlflow.models import ModelSignature, infer_signature

from hpcsweep.errors import UserError
from hpcsweep.tracking.client import check_tracking_server
from hpcsweep.tracking.credentials import redact, redact_text

MODEL_NAME = "model"  # runs:/<run id>/model
EXAMPLE_SHAPE = (2, 3, 32, 32)

log = logging.getLogger(__name__)


def new_logged_model(run: Run) -> LoggedModel:
    """The LoggedModel to log into, in the run's experiment: log_model with only a run id, and no
    active run (the run has ended), would create it in the default experiment instead."""
    return mlflow.initialize_logged_model(
        name=MODEL_NAME, source_run_id=run.info.run_id, params=run.data.params, experiment_id=run.info.experiment_id
    )


def log_best_model(
    uri: str, run_id: str, checkpoint: Path, network_from: Callable[[Path], torch.nn.Module], step: int
) -> None:
    """Log the network in `checkpoint` (built by `network_from`) as the run's model, linked to the
    run's metrics at `step`; warn and return if it cannot be. `uri` is the store MLflow logs to now."""
    if not checkpoint.is_file():
        log.warning("no model logged for run %s: %s is not there", run_id, checkpoint)
        return
    try:
        check_tracking_server(uri)
    except UserError as away:
        log.warning("no model logged for run %s: %s (the checkpoints are its artifacts)", run_id, away)
        return
    network = network_from(checkpoint).float().eval()
    example = torch.rand(EXAMPLE_SHAPE)
    with torch.no_grad():
        signature = infer_signature(example.numpy(), network(example).numpy())
    try:
        model = new_logged_model(mlflow.MlflowClient(uri).get_run(run_id))
        with warnings.catch_warnings():
            # torch.export on weights it just loaded on the CPU: "may cause issues when your weights
            # are not on CPU", which they are
            warnings.filterwarnings("ignore", message="No complete tensor found")
            log_model(network, model, run_id, example, signature, step)
    except Exception as error:  # any: the training finished, and its checkpoints are logged anyway
        log.warning(
            "no model logged for run %s into %s (%s: %s)",
            run_id,
            redact(uri),
            type(error).__name__,
            redact_text(str(error)),
        )


def log_model(
    network: torch.nn.Module,
    model: LoggedModel,
    run_id: str,
    example: torch.Tensor,
    signature: ModelSignature,
    step: int,
) -> None:
    mlflow.pytorch.log_model(
        network,
        name=MODEL_NAME,
        model_id=model.model_id,
        run_id=run_id,
        signature=signature,
        input_example=example.numpy(),
        serialization_format="pt2",
        pip_requirements=mlflow.pytorch.get_default_pip_requirements(),  # inferring them loads the model again
        step=step,
    )
