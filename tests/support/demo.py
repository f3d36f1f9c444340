"""One reduced `hnp demo`, run the way a user runs an installed copy: the project is installed non-editable
(`pip install --no-deps --target`, no source tree on the path), and the demo runs in a subprocess from an empty
folder elsewhere, with W&B at its default (offline) and private W&B and Ray folders. The demo and privacy tests
share this one run (a session fixture in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HNP = "import sys; from hnp.cli import main; sys.exit(main(sys.argv[1:]))"
# Small enough for CI, large enough that the folds learn. The phantom is made first with a larger test share
# than the demo's own (the demo keeps a phantom it finds), so that every level has test patients of both classes.
PATIENTS = 100
PHANTOM_ARGS = ("--patients", str(PATIENTS), "--seed", "0", "--prevalence", "balanced", "--test-fraction", "0.3",
                "--workers", "2")
DEMO_ARGS = ("--patients", str(PATIENTS), "--workers", "2", "--gradcam-top", "4", "--set", "train.epochs=2",
             "--set", "data.image_size=64")
_NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "demo", "runs",
                                      "reports", "shards", "wandb")


def install_non_editable(work: Path) -> Path:
    """Build the project's wheel from a copy of this checkout (the build writes build/ and *.egg-info beside the
    sources) and install its packages, only them, into `work/site`; returns that folder."""
    source = work / "source"
    shutil.copytree(REPO, source, ignore=_NOT_SHIPPED)
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, capture_output=True, timeout=600)
    shutil.rmtree(source)
    return site


def demo_env(root: Path, site: Path, ray_tmp: Path) -> dict[str, str]:
    """The demo's environment: the installed copy first on the path, W&B's and Ray's folders inside `root`."""
    wandb_home = root / "wandb-home"
    env = {**os.environ, "WANDB_DIR": str(wandb_home / "dir"), "WANDB_CACHE_DIR": str(wandb_home / "cache"),
           "WANDB_CONFIG_DIR": str(wandb_home / "config"), "WANDB_DATA_DIR": str(wandb_home / "data"),
           "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(site)}
    env.pop("WANDB_MODE", None)  # the default is what is under test
    env.pop("RAY_ADDRESS", None)
    for sub in ("dir", "cache", "config", "data"):
        (wandb_home / sub).mkdir(parents=True, exist_ok=True)
    return env


def run_hnp(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[bytes]:
    """`hnp ARGV` in a subprocess (the installed copy, through `env`'s PYTHONPATH), from `cwd`."""
    return subprocess.run([sys.executable, "-c", HNP, *argv], cwd=cwd, env=env, capture_output=True,
                          timeout=timeout, check=False)


def short_ray_tmp() -> Path:
    # Ray puts a unix socket under its temp dir: keep the path short (sockets are limited to 107 bytes).
    return Path(tempfile.mkdtemp(prefix="hnpray", dir="/tmp"))
