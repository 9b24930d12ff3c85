"""The `hpcsweep` command: parse, load the config, call one function.

Every command takes `--params FILE` and repeatable `-s key=value` overrides, so the same words
work here, in MLproject entry points and in grid files (cli_options.py); the grid commands live
in cli_grid.py. Each command's docstring opens with one short sentence: the command list shows it
whole. Shell completion is click's: `eval "$(_HPCSWEEP_COMPLETE=bash_source hpcsweep)"`.
"""

from __future__ import annotations

from pathlib import Path

import click

from hpcsweep import process_exit
from hpcsweep.cli_grid import COMMANDS as GRID_COMMANDS
from hpcsweep.cli_options import CONTEXT_SETTINGS, Group, config_options
from hpcsweep.errors import UserError
from hpcsweep.telemetry import disable_by_default


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="hpcsweep")
def main() -> None:
    """Training-efficiency studies of ResNet on CIFAR-10, from a laptop to a SLURM cluster."""
    disable_by_default()  # before any command imports mlflow; jobs and servers inherit it


for grid_command in GRID_COMMANDS:
    main.add_command(grid_command)


def run() -> None:
    """The `hpcsweep` console script and `python -m hpcsweep`: `main`, ended without Python's
    teardown of the modules it imported (process_exit.py)."""
    process_exit.run(main)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder for the archive [data.raw_dir].")
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Import this local cifar-10-python.tar.gz instead of downloading [data.archive].",
)
@config_options
def download(config, out: Path | None, archive: Path | None) -> None:
    """Download or import the CIFAR-10 archive.

    Downloads it (md5-checked, resumable) or imports a local archive (structure-checked)."""
    from hpcsweep.data import cifar10

    out = out or Path(config.data.raw_dir)
    archive = archive or config.data.archive
    if archive:
        cifar10.import_archive(Path(archive), out)
    else:
        cifar10.download(out)


@main.command()
@click.option(
    "--raw", type=click.Path(file_okay=False, path_type=Path), help="Folder holding the archive [data.raw_dir]."
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder [data.prepared_dir].")
@config_options
def prepare(config, raw: Path | None, out: Path | None) -> None:
    """Turn the archive into tensors for training.

    Validates the archive, holds out data.val_size training images for validation and writes
    uint8 tensors plus per-channel stats."""
    from hpcsweep.data.prepare import prepare as prepare_data

    prepare_data(raw or Path(config.data.raw_dir), out or Path(config.data.prepared_dir), config.data.val_size)


@main.command()
@click.option(
    "--metrics-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the final figures as JSON here (the DVC train stage's metrics file).",
)
@config_options
def train(config, metrics_out: Path | None) -> None:
    """Train one ResNet on CIFAR-10 into MLflow.

    Trains on the prepared data into one MLflow run (resumes an interrupted one)."""
    import os

    from hpcsweep.ranks import global_rank
    from hpcsweep.training.preflight import check_can_train

    check_can_train(config)  # in seconds: before Lightning and MLflow are imported
    from hpcsweep.training.train import train as run_training

    # `mlflow run` creates the run and hands its id over in the environment
    result = run_training(config, run_id=os.environ.get("MLFLOW_RUN_ID"))
    if global_rank() == 0:
        if metrics_out:
            result.write_json(metrics_out)
        click.echo(
            f"run {result.run_id} {result.status}: val/acc {result.val_acc:.4f} after {result.epochs} epochs, "
            f"{result.total_time_s:.1f} s"
        )


@main.command()
@config_options
def doctor(config) -> None:
    """Check that a training can run here.

    Versions, GPUs, Slurm, tracking server, prepared data; exit 1 on anything that would fail a training."""
    from hpcsweep.hardware.doctor import diagnose

    diagnosis = diagnose(config)
    for line in diagnosis.lines():
        click.echo(line)
    if diagnosis.problems:
        raise click.exceptions.Exit(1)


@main.command()
@click.option("--experiment", help="Report on every run of this MLflow experiment [tracking.experiment].")
@click.option("--grid", "grid_name", help="Report on the runs of grid NAME (tag grid=NAME), in any experiment.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("reports"),
    show_default=True,
    help="Folder to write: a new or empty one, or an earlier report (replaced whole, never half-written).",
)
@click.option(
    "--target-accuracy",
    type=click.FloatRange(0, 1, min_open=True),
    help="Time each run to this val/acc from its history instead of its own target_accuracy.",
)
@config_options
def report(config, experiment: str | None, grid_name: str | None, out: Path, target_accuracy: float | None) -> None:
    """Compare runs: which configurations win.

    Table, Pareto front, plots and a recommendation from the runs of an experiment or a grid."""
    from hpcsweep.report.build import build_report, check_out_dir
    from hpcsweep.tracking.client import tracking_client

    check_out_dir(out)  # before the store is opened: a bad --out creates nothing
    if not experiment and not grid_name:
        experiment = config.tracking.experiment
    folder = build_report(
        tracking_client(config), out, experiment=experiment, grid=grid_name, target_accuracy=target_accuracy
    )
    click.echo((folder / "summary.md").read_text().rstrip())
    click.echo(f"written: {folder}/index.html (and table.csv, summary.json, ...)")


@main.command()
@click.option(
    "--backend-store-uri",
    help="Database for runs and metrics [tracking.backend_store_uri]; its password from PGPASSWORD.",
)
@click.option(
    "--artifacts-destination",
    help="Where artifacts go, e.g. s3://BUCKET/PREFIX "
    "[tracking.artifacts_destination]; S3 keys from AWS_*, endpoint from MLFLOW_S3_ENDPOINT_URL.",
)
@click.option("--host", help="Address to listen on [tracking.host].")
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on [tracking.port].")
@click.option("--workers", type=click.IntRange(min=1), help="Server worker processes [tracking.workers].")
@click.option(
    "--db-connections",
    type=click.IntRange(min=1),
    help="Connections to the database over all workers [tracking.db_connections]; "
    "several servers on one database share its limit.",
)
@click.option(
    "--serve-artifacts/--no-serve-artifacts",
    default=None,
    help="Clients upload artifacts through the server, or straight to the destination with their own "
    "AWS_* keys and MLFLOW_S3_ENDPOINT_URL [tracking.serve_artifacts].",
)
@click.option(
    "--allowed-hosts", help="Host headers to accept, e.g. the node's name (default: localhost and private IPs)."
)
@click.option("--auth", is_flag=True, help="MLflow basic auth: the admin password from MLFLOW_AUTH_ADMIN_PASSWORD.")
@click.option(
    "--insecure", is_flag=True, help="Serve beyond loopback without --auth: anyone who reaches it may change runs."
)
@click.option(
    "--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this PEM certificate (chain)."
)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="The certificate's PEM private key.")
@config_options
def server(
    config,
    backend_store_uri,
    artifacts_destination,
    host,
    port,
    workers,
    db_connections,
    serve_artifacts,
    allowed_hosts,
    auth,
    insecure,
    tls_cert,
    tls_key,
) -> None:
    """Run the shared MLflow tracking server.

    Checks the database, the bucket and the port first."""
    from hpcsweep.tracking.server import ServerOptions, check_no_password, serve

    if backend_store_uri:
        check_no_password("--backend-store-uri", backend_store_uri)
    tracking = config.tracking
    serve(
        ServerOptions(
            backend_store_uri=backend_store_uri or tracking.backend_store_uri,
            artifacts_destination=artifacts_destination or tracking.artifacts_destination,
            host=host or tracking.host,
            port=port or tracking.port,
            workers=workers or tracking.workers,
            auth=auth,
            db_connections=db_connections or tracking.db_connections,
            allowed_hosts=allowed_hosts,
            insecure=insecure,
            tls_cert=tls_cert,
            tls_key=tls_key,
            serve_artifacts=tracking.serve_artifacts if serve_artifacts is None else serve_artifacts,
        )
    )


@main.command()
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option(
    "--tracking-uri",
    help="Send to this server [tracking.uri, else the server each spool was written for].",
)
@config_options
def sync(config, path: Path | None, tracking_uri: str | None) -> None:
    """Send what trainings could not log yet.

    Sends what trainings spooled while the server was away (spools under PATH
    [tracking.checkpoint_dir]); what the server already has is never sent again."""
    from hpcsweep.tracking.client import configured_server
    from hpcsweep.tracking.sync import sync_failure, sync_spools

    outcomes = sync_spools(path or Path(config.tracking.checkpoint_dir), tracking_uri or configured_server(config))
    for outcome in outcomes:
        click.echo(outcome.line())
    failure = sync_failure(outcomes)
    if failure:
        raise UserError(failure)
