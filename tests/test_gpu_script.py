"""benchmarks/gpu.sh on a machine without a GPU: one line that says so, a failing exit, at once.

The script installs packages and runs minutes of tests and benchmarks on a lent GPU machine; run by
mistake anywhere else it must stop before touching anything, and say why in a line a person or a
CI log can read.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from helpers.project import ROOT


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="an NVIDIA driver is here: it would run")
def test_without_a_gpu_the_script_says_so_in_one_line_and_fails_at_once(tmp_path):
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu.sh")],
        cwd=tmp_path,
        # a python that does nothing: should the check ever let the script through, it installs nothing
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "OUT": str(tmp_path / "out"), "PYTHON": "false"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert (done.stdout + done.stderr).splitlines() == [done.stderr.rstrip("\n")]
    assert done.stderr.startswith("no CUDA GPU: ")
    assert time.monotonic() - started < 5
    assert not (tmp_path / "out").exists()  # nothing written, nothing installed
