"""Usage telemetry off by default in every process hpcsweep starts or writes a job script for.

MLflow's telemetry client reports to a host outside the cluster from every process that imports
mlflow: unwanted on an HPC network, useless offline, and once the cause of a failed request under
load (threads racing to unset `_MLFLOW_TELEMETRY_SESSION_ID`). The CLI, the tracking server's
environment and the rendered SLURM job script all take the one list below, and each keeps a value
the user set.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# What MLflow 3 reads in mlflow.telemetry.utils.is_telemetry_disabled; DO_NOT_TRACK is the
# cross-tool convention, so other tools in the same jobs honour it too. MLflow decides at
# `import mlflow` whether to start its client (each event checks again), so these must be set
# before mlflow is imported: the CLI sets them before any command imports it.
DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def disable_by_default(environ: MutableMapping[str, str] = os.environ) -> None:
    for name, value in DEFAULTS.items():
        environ.setdefault(name, value)


def shell_defaults() -> list[str]:
    """The same defaults as bash lines; a value already in the job's environment stays."""
    return [f'export {name}="${{{name}:-{value}}}"' for name, value in DEFAULTS.items()]
