"""What every `hpcsweep` command shares: user mistakes as one line, `-h`, `--params` and `-s`.

Every command takes `--params FILE` and repeatable `-s key=value` overrides, so the same words
work here, in MLproject entry points and in grid files. A `UserError` becomes one line on
stderr and exit code 1; anything else is a bug and keeps its traceback. Apart from cli.py so that
the commands kept in their own modules (cli_grid.py) share them without importing the command group.
"""

from __future__ import annotations

import functools

import click

from hpcsweep.errors import UserError

# subcommands inherit them from the group's context
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


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
