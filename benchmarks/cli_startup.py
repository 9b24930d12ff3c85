"""How long `hpcsweep` takes to answer before any real work: `--help`, a mistyped `-s` key, and a
training where nothing was prepared.

The first two should answer in well under half a second: they read no data and build no model, so
any time above the interpreter's start-up is an import that the command does not need (torch alone
costs seconds). The third needs torch to check the prepared data, and nothing else: its refusal
comes before Lightning and MLflow are imported (training/preflight.py), and the process ends
without Python's teardown of torch (process_exit.py). Each command runs as its own process,
`python -m hpcsweep ...`, from a temporary folder holding a copy of the project's params.yaml,
and the median of several runs is printed. The hpcsweep that is imported is the one Python
finds, so a PYTHONPATH pointing at another checkout's `src` measures that checkout instead.

    python benchmarks/cli_startup.py [RUNS]     # RUNS defaults to 7
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = 7
# The bare interpreter is the floor no command can go below.
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "hpcsweep --help": ["-m", "hpcsweep", "--help"],
    "hpcsweep status x -s bogus_key=1": ["-m", "hpcsweep", "status", "x", "-s", "bogus_key=1"],
    "hpcsweep train (nothing prepared)": ["-m", "hpcsweep", "train"],
}


def wall_time_s(arguments: list[str], folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *arguments], cwd=folder, capture_output=True, check=False)
    return time.perf_counter() - started


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RUNS
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(ROOT / "params.yaml", folder)
        for label, arguments in COMMANDS.items():
            times = [wall_time_s(arguments, Path(folder)) for _ in range(runs)]
            print(f"{label}: median {statistics.median(times):.3f} s over {runs} runs (min {min(times):.3f} s)")


if __name__ == "__main__":
    main()
