"""Which params file a command reads, and its defaults fitted to where and how long a command runs.

params.yaml's defaults are written for one place and one run: the project root, and its own
max_epochs. Commands also start in a subfolder or a job's folder, and for a single epoch; this
module is what lets the file's defaults serve them, without touching a value the user set.

Which file: `--params FILE`, else `$HPCSWEEP_PARAMS`, else the nearest params.yaml in the working
folder or a folder above it, as git and DVC find their root: the search stops after a folder
holding `.git` or `.dvc`, the project's boundary, so another project's file is never used. A file
not in the working folder is named in one line on stderr.

Relative paths in the file (`data.*`, `tracking.checkpoint_dir`, `tracking.secrets_file`, a
relative SQLite `tracking.uri`, and the default SQLite store `mlflow.db` when neither
`tracking.uri` nor MLFLOW_TRACKING_URI names one) mean paths beside the file, so every folder of
a project reads and writes the same data, checkpoints and runs. In the file's own folder they are
left as written, as DVC stages and every earlier run saw them.

`dvc exp run --temp` and `--queue` run the pipeline in a copy of the project under
`.dvc/tmp/exps/`, deleted afterwards. There, DVC's own outputs (`data.raw_dir`,
`data.prepared_dir`) stay in the copy, where DVC collects them, but what lives outside DVC (the
archive to import, the MLflow store, checkpoints, the secrets file) means the project's own: the
copy's runs land in the project's mlflow.db. DVC names the project in DVC_ROOT for every stage.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcsweep.errors import UserError

if TYPE_CHECKING:
    from hpcsweep.config import TrainConfig

PARAMS_NAME = "params.yaml"
PARAMS_VARIABLE = "HPCSWEEP_PARAMS"
BOUNDARIES = (".git", ".dvc")
# The store when neither tracking.uri nor MLFLOW_TRACKING_URI names one (tracking/client.py)
DEFAULT_URI = "sqlite:///mlflow.db"
SQLITE_PREFIX = "sqlite:///"
PATH_KEYS = {"data": ("archive", "raw_dir", "prepared_dir"), "tracking": ("checkpoint_dir", "secrets_file")}
# The paths a DVC experiment's copy shares with its project (the module docstring says why)
PROJECT_PATH_KEYS = {"data.archive", "tracking.checkpoint_dir", "tracking.secrets_file"}
# Where `dvc exp run --temp/--queue` copies the project (dvc/repo/experiments/executor/local.py)
DVC_EXPERIMENT_COPIES = Path(".dvc", "tmp", "exps")

log = logging.getLogger(__name__)


@functools.cache
def notice_once(message: str) -> None:
    """A notice line on stderr, once per process: a grid reads the same defaults once per point."""
    log.warning(message)


def find_params(explicit: str | Path | None) -> Path:
    """`--params`, else $HPCSWEEP_PARAMS, else the nearest params.yaml within the project.

    When the search finds nothing it returns ./params.yaml, for read_params_file's "not found" line.
    """
    if explicit is not None:
        return Path(explicit)
    named = os.environ.get(PARAMS_VARIABLE)
    if named:
        if not Path(named).is_file():
            raise UserError(f"{PARAMS_VARIABLE}={named}: params file not found; point it at a params.yaml or unset it")
        return name_if_elsewhere(Path(named))
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / PARAMS_NAME).is_file():
            # Found here, the path stays relative: errors read "params.yaml: ..." as they always did
            return Path(PARAMS_NAME) if folder == here else name_if_elsewhere(folder / PARAMS_NAME)
        if any((folder / boundary).exists() for boundary in BOUNDARIES):
            break
    return Path(PARAMS_NAME)


def name_if_elsewhere(path: Path) -> Path:
    if path.resolve().parent != Path.cwd().resolve():
        notice_once(f"using params file {path.resolve()}")
    return path


def beside_the_file(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`raw` (a params mapping, not modified) with its relative paths made absolute against `folder`,
    or against the project's folder for the paths a DVC experiment's copy shares with it."""
    folder, here = folder.resolve(), Path.cwd().resolve()
    project = project_folder(folder)
    if folder == project == here:
        return raw
    fitted = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for section, keys in PATH_KEYS.items():
        values = fitted.get(section)
        for key in keys if isinstance(values, dict) else ():
            base = project if f"{section}.{key}" in PROJECT_PATH_KEYS else folder
            # An empty or non-string value stays as it is, for validation to name it; ~ is the home folder
            if base != here and isinstance(values.get(key), str) and values[key].strip() and values[key][0] != "~":
                values[key] = str(base / values[key])
    tracking = fitted.get("tracking")
    if isinstance(tracking, dict) and project != here:
        # tracking.uri wins over MLFLOW_TRACKING_URI, so the default is filled in only when neither is set
        uri = tracking.get("uri") or (None if os.environ.get("MLFLOW_TRACKING_URI") else DEFAULT_URI)
        if isinstance(uri, str):
            tracking["uri"] = sqlite_beside(uri, project)
    return fitted


def project_folder(folder: Path) -> Path:
    """`folder` (resolved), or in a DVC experiment's copy of the project the folder it is a copy of."""
    dvc_root = os.environ.get("DVC_ROOT")
    if not dvc_root or not folder.is_relative_to(Path(dvc_root).resolve() / DVC_EXPERIMENT_COPIES):
        return folder
    # The copy's DVC root (its .dvc folder) stands for DVC_ROOT; below it the two trees are the same
    copy_root = next((parent for parent in (folder, *folder.parents) if (parent / ".dvc").is_dir()), None)
    return Path(dvc_root).resolve() / folder.relative_to(copy_root) if copy_root else folder


def sqlite_beside(uri: str, folder: Path) -> str:
    """A relative SQLite URI made absolute against `folder`; any other URI as it is."""
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
        return SQLITE_PREFIX + str((folder / uri.removeprefix(SQLITE_PREFIX)).resolve())
    return uri


def fit_warmup(train: TrainConfig, overridden: Collection[str]) -> TrainConfig:
    """The params file's warm-up, halved to the run's length when the run is too short for it.

    Refusing it would refuse the quickest run a user types (`-s max_epochs=1`) over a default they
    never set. Half the run is the file's own proportion (1 of 2 epochs) and leaves the decay at
    least as long as the warm-up. A warm-up set on purpose (-s, a grid's base or point) is kept,
    for check_train_consistency to refuse if it cannot fit.
    """
    if "train.warmup_epochs" in overridden or train.warmup_epochs < train.max_epochs:
        return train
    fitted = train.max_epochs / 2
    notice_once(
        f"train.warmup_epochs={train.warmup_epochs} from the params file does not fit max_epochs={train.max_epochs}: "
        f"using warmup_epochs={fitted}, half the run (set warmup_epochs to choose)"
    )
    return dataclasses.replace(train, warmup_epochs=fitted)
