"""The MLflow plugin entry points of hpcsweep (pyproject.toml names these functions).

MLflow loads its `mlflow.tracking_store` and `mlflow.artifact_repository` entry points while
`mlflow` itself is being imported, so this module imports nothing from MLflow at load time; the
builders import `store.py` only when MLflow first asks for a `spool+` store or repository.
"""


def spooling_store(store_uri: str, artifact_uri: str | None = None, **_):
    from hpcsweep.tracking.store import SpoolingStore

    return SpoolingStore(store_uri)


def spooling_artifact_repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    from hpcsweep.tracking.store import SpoolingArtifactRepository

    return SpoolingArtifactRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
