"""`python -m hpcsweep`: the same as the `hpcsweep` console script (used by MLproject commands)."""

from hpcsweep.cli import run

run()
