"""What the MLflow UI reads from an experiment and a run beyond params and metrics.

- The experiment kind: the `mlflow.experimentKind` tag, `custom_model_development`, says the
  experiment trains models (MLflow's UI writes it from its kind selector; MLflow's Python package has
  no constant for it). Every experiment hpcsweep creates or logs into gets it, unless the user set a
  kind already. MLflow 3.17's UI itself opens every experiment in the mode of its own GenAI / Model
  training switch (GenAI unless changed, seen in a browser; the tag only adds "Training runs" to
  the GenAI pages), so the printed address asks for the model-training view in its URL.
- The source: `mlflow.source.name`/`type` (the Source column), set where MLflow did not.
- The dataset: the prepared folder as an MLflow dataset input with the data's digest (the Dataset
  column, and the same digest in two runs says they trained on the same data); its profile holds
  each split's image count and the validation split's size and `indices_sha256` (stats.json), so
  two runs validated on the same images can be told from the dataset's page alone.
- The run's address, printed when a run opens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Run
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE

from hpcsweep.tracking.client import absolute_uri, is_server
from hpcsweep.tracking.credentials import redact

EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
DATASET_NAME = "cifar10-prepared"
DATASET_CONTEXT = "training"
# what the prepared folder holds per split (data/prepare.py): uint8 images and int64 labels
DATASET_SCHEMA = Schema(
    [TensorSpec(np.dtype(np.uint8), (-1, 3, 32, 32), "images"), TensorSpec(np.dtype(np.int64), (-1,), "labels")]
)
UI_PORT = 5000  # `mlflow ui`'s default
MODEL_TRAINING_VIEW = "workflowType=machine_learning"  # the UI's switch, as a URL query (kept while navigating)


def experiment_kind_tags() -> dict[str, str]:
    """The tags to create an experiment with."""
    return {EXPERIMENT_KIND: MODEL_TRAINING}


def ensure_experiment_kind(client: MlflowClient, experiment_id: str) -> None:
    """Mark an existing experiment as model training, unless it has a kind already (the user's choice)."""
    if EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)


def source_tags(name: str, source_type: str) -> dict[str, str]:
    return {MLFLOW_SOURCE_NAME: name, MLFLOW_SOURCE_TYPE: source_type}


def missing_tags(run: Run, tags: dict[str, str]) -> dict[str, str]:
    """`tags` the run does not carry yet: what MLflow or a launcher wrote stays."""
    return {key: value for key, value in tags.items() if key not in run.data.tags}


class ProfiledDataset(MetaDataset):
    """A MetaDataset with a profile: MLflow's own has none, and its UI shows a dataset's profile."""

    def __init__(self, source, *, name: str, digest: str, schema: Schema, profile: dict) -> None:
        self._profile = profile
        super().__init__(source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def prepared_dataset(prepared_dir: str, digest: str) -> MetaDataset:
    """The prepared folder as an MLflow dataset: its path as the source, `digest` (tags.data_md5) as its
    digest, its splits' image counts and the validation split's identity as its profile."""
    # imported here: it imports torch, and `status` and `report` import this module
    from hpcsweep.data.stats import read_stats

    stats = read_stats(Path(prepared_dir))
    source = LocalArtifactDatasetSource(str(Path(prepared_dir).resolve()))
    profile = {"images": stats["images"], "validation": stats["validation"]}
    return ProfiledDataset(source, name=DATASET_NAME, digest=digest, schema=DATASET_SCHEMA, profile=profile)


def run_address(uri: str, run: Run) -> str:
    """One line that says where to see the run: its page on a server, else the `mlflow ui` to start."""
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?{MODEL_TRAINING_VIEW}"
    where = (
        f"{redact(uri).rstrip('/')}/{page}"
        if is_server(uri)
        else f"mlflow ui --backend-store-uri {redact(absolute_uri(uri))}, then http://127.0.0.1:{UI_PORT}/{page}"
    )
    return f"run {run.info.run_name} {run.info.run_id}: {where}"
