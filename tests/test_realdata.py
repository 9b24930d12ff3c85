"""The real CIFAR-10 (public JPEG copy in ../shared/data), imported and prepared end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

PUBLISHED_MEAN = (0.4914, 0.4822, 0.4465)
PUBLISHED_STD = (0.2470, 0.2435, 0.2616)


def test_import_and_prepare_the_real_archive(real_archive, project):
    for command in (["download", "--archive", str(real_archive)], ["prepare"]):
        done = subprocess.run([sys.executable, "-m", "hpcsweep", *command], cwd=project, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    stats = json.loads((project / "data/prepared/stats.json").read_text())
    assert stats["images"] == {"train": 50_000, "test": 10_000}
    assert stats["mean"] == pytest.approx(PUBLISHED_MEAN, abs=0.01)
    assert stats["std"] == pytest.approx(PUBLISHED_STD, abs=0.01)
