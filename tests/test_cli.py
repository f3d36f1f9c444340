"""The `hnp` command line itself: its help comes quickly, without the heavy libraries the commands use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pytorch_grad_cam", "ray", "nvidia.dali", "timm", "pydicom")


def test_building_every_commands_parser_imports_none_of_the_heavy_libraries() -> None:
    # `hnp --help` took 14.6 s (5.3 CPU s) on a loaded 2-core machine when eval's parser imported torch through
    # eval.gradcam; a command imports what it needs when it runs
    probe = ("import sys; from hnp.cli import build_parser; build_parser(); "
             f"print([m for m in {HEAVY!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
