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


class Group(click.Group):
    """A click group that reports user mistakes as one line, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise click.ClickException(str(error)) from None


def config_options(command):
    """Add --params and -s/--set to a command and hand it the loaded `Config` as `config`."""

    @click.option("--params", "params", default="params.yaml", show_default=True, type=click.Path(dir_okay=False),
                  help="Params file to read instead of ./params.yaml.")
    @click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a key: bare keys are train keys (-s optimizer=adam), dotted keys any section.")
    @functools.wraps(command)
    def wrapper(params: str, overrides: tuple[str, ...], **kwargs):
        from hpcsweep.config import load_config

        return command(config=load_config(params, overrides), **kwargs)

    return wrapper


@click.group(cls=Group)
@click.version_option(package_name="hpcsweep")
def main() -> None:
    """Training-efficiency studies of ResNet on CIFAR-10, from a laptop to a SLURM cluster."""


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder for the archive [data.raw_dir].")
@click.option("--archive", type=click.Path(dir_okay=False, path_type=Path),
              help="Import this local cifar-10-python.tar.gz instead of downloading [data.archive].")
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
@click.option("--raw", type=click.Path(file_okay=False, path_type=Path), help="Folder holding the archive [data.raw_dir].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output folder [data.prepared_dir].")
@config_options
def prepare(config, raw: Path | None, out: Path | None) -> None:
    """Validate the archive and write uint8 tensors plus per-channel stats."""
    from hpcsweep.data.prepare import prepare as prepare_data

    prepare_data(raw or Path(config.data.raw_dir), out or Path(config.data.prepared_dir))


@main.command()
@click.option("--metrics-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the final figures as JSON here (the DVC train stage's metrics file).")
@config_options
def train(config, metrics_out: Path | None) -> None:
    """Train a ResNet on the prepared CIFAR-10 into one MLflow run (resumes an interrupted one)."""
    from hpcsweep.tracking import global_rank
    from hpcsweep.train import train as run_training

    result = run_training(config)
    if global_rank() == 0:
        if metrics_out:
            result.write_json(metrics_out)
        click.echo(f"run {result.run_id} {result.status}: val/acc {result.val_acc:.4f} after {result.epochs} epochs, "
                   f"{result.total_time_s:.1f} s")
