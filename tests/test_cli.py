"""The `hpcsweep` command as a user meets it: `-h`, help for every option, a command list that
reads whole, shell completion as the README documents it, and a `cancel` that asks first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import mlflow
import pytest
from click.testing import CliRunner, Result

from hpcsweep.cli import main

COMMANDS = sorted(main.commands)
SHORT_HELP_LIMIT = 45  # click's own default: the command list shows this much on any terminal of 60 columns


def all_commands() -> list[click.Command]:
    return [main, *main.commands.values()]


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_h_is_help_for_the_group_and_every_command(name):
    arguments = [name, "-h"] if name else ["-h"]
    done = CliRunner().invoke(main, arguments)
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"Usage: {' '.join(['main', *arguments[:-1]])} ")
    assert "-h, --help" in done.output


def test_every_option_of_every_command_says_what_it_does():
    silent = [
        f"{command.name} {param.opts[0]}"
        for command in all_commands()
        for param in command.get_params(click.Context(command))
        if isinstance(param, click.Option) and not param.help
    ]
    assert silent == []


def test_the_command_list_shows_each_commands_help_whole():
    for command in main.commands.values():
        short = command.get_short_help_str(SHORT_HELP_LIMIT)
        assert short.endswith(".") and not short.endswith("..."), f"{command.name}: {short!r}"
    listed = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["--help"]).output.partition("Commands:")[2]
    rows = [line.split(maxsplit=1) for line in listed.strip().splitlines()]
    assert [name for name, _ in rows] == [name for name in COMMANDS if not main.commands[name].hidden]
    assert all(help.endswith(".") and not help.endswith("...") for _, help in rows), listed


def test_the_documented_bash_completion_completes_commands_and_options():
    """README: eval "$(_HPCSWEEP_COMPLETE=bash_source hpcsweep)" in ~/.bashrc."""
    script = """
        eval "$(_HPCSWEEP_COMPLETE=bash_source hpcsweep)"
        complete -p hpcsweep
        # what bash does on TAB after the words given: the last one is the word being completed
        complete_words() { COMPREPLY=(); COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _hpcsweep_completion "$1"; }
        complete_words hpcsweep sta && echo "commands: ${COMPREPLY[*]}"
        complete_words hpcsweep cancel --y && echo "options: ${COMPREPLY[*]}"
    """
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": path})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "complete -o nosort -F _hpcsweep_completion hpcsweep",
        "commands: status",
        "options: --yes",
    ]


def scheduled_grid(uri: str, name: str, points: int) -> list[str]:
    """A grid's point runs as a launch leaves them before its jobs start: SCHEDULED."""
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment(name)
    run_ids = []
    for index in range(points):
        tags = {"grid": name, "hpcsweep.role": "point", "config_hash": f"hash{index}", "point": f"seed={index}"}
        run = client.create_run(experiment, tags=tags)
        client.update_run(run.info.run_id, status="SCHEDULED")
        run_ids.append(run.info.run_id)
    return run_ids


def cancel(project: Path, uri: str, name: str, *options: str, answer: str = "") -> Result:
    """`hpcsweep cancel` with `answer` on stdin; none: stdin is closed at once, as in a batch job."""
    arguments = ["cancel", name, *options, "--params", str(project / "params.yaml"), "-s", f"tracking.uri={uri}"]
    return CliRunner().invoke(main, arguments, input=answer)


def statuses(uri: str, run_ids: list[str]) -> set[str]:
    return {mlflow.MlflowClient(uri).get_run(run_id).info.status for run_id in run_ids}


@pytest.mark.slow  # an MLflow store of its own
def test_cancel_says_what_it_stops_and_asks_first_unless_yes(project):
    uri, name = f"sqlite:///{project / 'mlflow.db'}", "asked"
    run_ids = scheduled_grid(uri, name, 2)
    plan = f"grid {name}: mark 2 runs KILLED (2 SCHEDULED)"

    declined = cancel(project, uri, name, answer="n\n")
    assert declined.exit_code == 1
    assert declined.stdout == f"{plan}\nCancel them? [y/N]: n\nnothing cancelled\n"
    unanswered = cancel(project, uri, name)
    assert unanswered.exit_code == 1
    assert unanswered.stderr.endswith("Error: no answer, nothing cancelled; pass --yes to cancel without asking\n")
    assert statuses(uri, run_ids) == {"SCHEDULED"}

    accepted = cancel(project, uri, name, answer="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout.endswith(f"{name}: cancelled; 2 runs marked KILLED\n")
    assert statuses(uri, run_ids) == {"KILLED"}

    again = scheduled_grid(uri, "unasked", 1)
    done = cancel(project, uri, "unasked", "--yes")
    assert done.exit_code == 0 and "Cancel them?" not in done.stdout
    assert statuses(uri, again) == {"KILLED"}
