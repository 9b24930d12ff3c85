"""The `hpcsweep` command: parse, load the config, call one function.

Every command takes `--params FILE` and repeatable `-s key=value` overrides, so the same words
work here, in MLproject entry points and in grid files. A `UserError` becomes one line on
stderr and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from hpcsweep.errors import UserError
from hpcsweep.telemetry import disable_by_default


class Group(click.Group):
    """A click group that reports user mistakes as one line, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise click.ClickException(str(error)) from None


# One option for every command, the grid's included, so that all of them find the same file
params_option = click.option(
    "--params",
    type=click.Path(dir_okay=False),
    help="Params file [$HPCSWEEP_PARAMS, else params.yaml here or in a folder above, within the project].",
)


def config_options(command):
    """Add --params and -s/--set to a command and hand it the loaded `Config` as `config`."""

    @params_option
    @click.option(
        "-s",
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a key: bare keys are train keys (-s optimizer=adam), dotted keys any section.",
    )
    @functools.wraps(command)
    def wrapper(params: str | None, overrides: tuple[str, ...], **kwargs):
        from hpcsweep.config import load_config
        from hpcsweep.tracking.credentials import load_secrets

        config = load_config(params, overrides)
        load_secrets(config.tracking.secrets_file)
        return command(config=config, **kwargs)

    return wrapper


@click.group(cls=Group)
@click.version_option(package_name="hpcsweep")
def main() -> None:
    """Training-efficiency studies of ResNet on CIFAR-10, from a laptop to a SLURM cluster."""
    disable_by_default()  # before any command imports mlflow; jobs and servers inherit it


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder for the archive [data.raw_dir].")
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Import this local cifar-10-python.tar.gz instead of downloading [data.archive].",
)
@config_options
def download(config, out: Path | None, archive: Path | None) -> None:
    """Download CIFAR-10 (md5-checked, resumable) or import a local archive (structure-checked)."""
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
    """Validate the archive and write uint8 tensors plus per-channel stats."""
    from hpcsweep.data.prepare import prepare as prepare_data

    prepare_data(raw or Path(config.data.raw_dir), out or Path(config.data.prepared_dir))


@main.command()
@click.option(
    "--metrics-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the final figures as JSON here (the DVC train stage's metrics file).",
)
@config_options
def train(config, metrics_out: Path | None) -> None:
    """Train a ResNet on the prepared CIFAR-10 into one MLflow run (resumes an interrupted one)."""
    import os

    from hpcsweep.ranks import global_rank
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
    """Versions, GPUs, Slurm, tracking server, prepared data; exit 1 on anything that would fail a training."""
    from hpcsweep.hardware.doctor import diagnose

    diagnosis = diagnose(config)
    for line in diagnosis.lines():
        click.echo(line)
    if diagnosis.problems:
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("gridfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--executor", type=click.Choice(["local", "slurm"]), default="local", show_default=True)
@click.option(
    "--dry-run", is_flag=True, help="Write job scripts and point files, print where; submit and create nothing."
)
@click.option(
    "--max-parallel", type=click.IntRange(min=1), help="At most N tasks of an array at once [slurm.max_parallel]."
)
@click.option("--experiment", help="MLflow experiment [the grid file's experiment].")
@click.option(
    "--template",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A site's job-script template with ${directives}, ${setup}, ${command}.",
)
@click.option("--rerun", is_flag=True, help="Run every point again, even those with a finished run.")
@click.option("--yes", is_flag=True, help="Allow grids over 1000 points.")
@params_option
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key in every point.")
def grid(
    gridfile: Path,
    executor: str,
    dry_run: bool,
    max_parallel: int | None,
    experiment: str | None,
    template: Path | None,
    rerun: bool,
    yes: bool,
    params: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Run every point of GRIDFILE here (local) or as SLURM job arrays, into one MLflow experiment."""
    import shlex
    import sys

    from hpcsweep.config import parse_overrides
    from hpcsweep.grid.executors import EXECUTORS
    from hpcsweep.grid.executors.base import ExecutorSettings
    from hpcsweep.grid.launch import LaunchOptions, launch
    from hpcsweep.grid.spec import MAX_POINTS_WITHOUT_YES, load_grid
    from hpcsweep.params_file import find_params
    from hpcsweep.tracking.credentials import load_secrets

    size_limit = None if yes else MAX_POINTS_WITHOUT_YES  # counted from the axes, before any point is built
    loaded = load_grid(gridfile, find_params(params), parse_overrides(overrides), experiment, max_points=size_limit)
    from_file = load_secrets(loaded.points[0].config.tracking.secrets_file)
    settings = ExecutorSettings(
        template=template.read_text() if template else None, max_parallel=max_parallel, secrets_from_file=from_file
    )
    options = LaunchOptions(
        executor=EXECUTORS[executor](settings),
        dry_run=dry_run,
        rerun=rerun,
        command=shlex.join(["hpcsweep", *sys.argv[1:]]),
    )
    launch(loaded, options)


@main.command()
@click.argument("gridname")
@config_options
def status(config, gridname: str) -> None:
    """One row per point of grid GRIDNAME: MLflow status, SLURM state, last val/acc."""
    from hpcsweep.grid.status import status_rows, summary
    from hpcsweep.tracking.client import tracking_client

    rows = status_rows(tracking_client(config), gridname)
    click.echo(f"{'run':<10} {'slurm':<14} {'val/acc':>7}  {'run id':<32}  point")
    for row in rows:
        click.echo(row.line())
    click.echo(summary(rows))


@main.command()
@click.argument("gridname")
@config_options
def cancel(config, gridname: str) -> None:
    """scancel the job arrays of grid GRIDNAME and mark its scheduled and running runs KILLED."""
    from hpcsweep.grid.status import cancel_grid
    from hpcsweep.tracking.client import tracking_client

    killed = cancel_grid(tracking_client(config), gridname)
    click.echo(f"{gridname}: cancelled; {len(killed)} runs marked KILLED")


@main.command("run-point", hidden=True)
@click.argument("points_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("index", type=int)
def run_point(points_file: Path, index: int) -> None:
    """Train entry INDEX of a launch's points file into its pre-created run (what each job task runs)."""
    from hpcsweep.grid.task import run_point as run_grid_point

    run_grid_point(points_file, index)


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
    """Table, Pareto front, plots and a recommendation from the runs of an experiment or a grid."""
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
@click.option("--port", type=click.IntRange(1, 65535), help="[tracking.port]")
@click.option("--workers", type=click.IntRange(min=1), help="Server worker processes [tracking.workers].")
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
    allowed_hosts,
    auth,
    insecure,
    tls_cert,
    tls_key,
) -> None:
    """Check the database, the bucket and the port, then run the shared MLflow tracking server."""
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
            db_connections=tracking.db_connections,
            allowed_hosts=allowed_hosts,
            insecure=insecure,
            tls_cert=tls_cert,
            tls_key=tls_key,
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
    """Send what trainings could not log while the server was away (spools under PATH
    [tracking.checkpoint_dir]); what the server already has is never sent again."""
    from hpcsweep.tracking.client import configured_server
    from hpcsweep.tracking.sync import sync_failure, sync_spools

    outcomes = sync_spools(path or Path(config.tracking.checkpoint_dir), tracking_uri or configured_server(config))
    for outcome in outcomes:
        click.echo(outcome.line())
    failure = sync_failure(outcomes)
    if failure:
        raise UserError(failure)
