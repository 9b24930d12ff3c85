"""The grid commands of `hpcsweep`: `grid`, `status`, `cancel` and the job side's `run-point`.

Apart from cli.py to keep each command module short to read; cli.py adds them to the `hpcsweep`
group. Like every command, each parses, loads the config and calls one function.
"""

from __future__ import annotations

from pathlib import Path

import click

from hpcsweep.cli_options import config_options, params_option
from hpcsweep.errors import UserError


@click.command()
@click.argument("gridfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--executor",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="Where points run: one after another here (local), or as SLURM job arrays (slurm).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Write job scripts and point files, print where and the estimated device-hours; submit and create nothing.",
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
@click.option("-y", "--yes", is_flag=True, help="Allow grids over 1000 points.")
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
    """Run every point of a grid, here or on SLURM.

    Every point of GRIDFILE runs here (local) or as SLURM job arrays, into one MLflow experiment.
    --dry-run also estimates the grid's device-hours from earlier finished runs on the tracking store."""
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
    if dry_run:
        print_cost(loaded.points)


def print_cost(points) -> None:
    """The grid's estimated device-hours, from earlier runs on the store its points log to."""
    from hpcsweep.grid.cost import grid_cost
    from hpcsweep.tracking.client import store_uri

    for line in grid_cost([point.config for point in points], store_uri(points[0].config)):
        click.echo(line)


@click.command()
@click.argument("gridname")
@config_options
def status(config, gridname: str) -> None:
    """Show each point's MLflow and SLURM state.

    One row per point of grid GRIDNAME: MLflow status, SLURM state, last val/acc, and the log of a
    task that did not finish."""
    from hpcsweep.grid.status import status_rows, summary
    from hpcsweep.tracking.client import store_uri

    rows = status_rows(store_uri(config), gridname)
    click.echo(f"{'run':<10} {'slurm':<14} {'val/acc':>7}  {'run id':<32}  point")
    for row in rows:
        click.echo(row.line())
    click.echo(summary(rows))


@click.command()
@click.argument("gridname")
@click.option("-y", "--yes", is_flag=True, help="Cancel without asking.")
@config_options
def cancel(config, gridname: str, yes: bool) -> None:
    """Cancel a grid's jobs; mark its runs KILLED.

    Says which job arrays of grid GRIDNAME it will scancel and how many scheduled and running runs
    it will mark KILLED, and asks first, unless --yes."""
    from hpcsweep.grid.status import cancel as cancel_runs
    from hpcsweep.grid.status import planned_cancellation
    from hpcsweep.tracking.client import store_uri

    uri = store_uri(config)
    cancellation = planned_cancellation(uri, gridname)
    if not cancellation.runs:
        click.echo(f"{gridname}: nothing to cancel, no run is scheduled or running")
        return
    click.echo(cancellation.description())
    if not yes and not confirmed("Cancel them?"):
        click.echo("nothing cancelled")
        raise click.exceptions.Exit(1)
    cancel_runs(uri, cancellation)
    click.echo(f"{gridname}: cancelled; {len(cancellation.runs)} runs marked KILLED")


def confirmed(question: str) -> bool:
    """The user's answer; no answer at all (stdin closed, as in a batch job) cancels nothing."""
    try:
        return click.confirm(question)
    except click.Abort:
        raise UserError("no answer, nothing cancelled; pass --yes to cancel without asking") from None


@click.command("run-point", hidden=True)
@click.argument("points_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("index", type=int)
def run_point(points_file: Path, index: int) -> None:
    """Train one point of a launch: a job's task.

    Trains entry INDEX of a launch's points file into its pre-created run."""
    from hpcsweep.grid.task import run_point as run_grid_point

    run_grid_point(points_file, index)


COMMANDS = (grid, status, cancel, run_point)
