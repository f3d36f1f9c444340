"""Shared pytest fixtures. Helpers that tests import live in `tests/support/`, not here."""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import demo
from support.manifests import write_manifest
from support.processes import kill_by_environment, run_until
from support.runs import build_trained_world


@pytest.fixture
def make_manifest(tmp_path: Path) -> Callable[..., Path]:
    """`make_manifest(**kwargs)` writes a manifest with `write_manifest` under `tmp_path/data` and returns it."""

    def make(**kwargs) -> Path:
        return write_manifest(tmp_path / "data", **kwargs)

    return make


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The briefly trained phantom run the eval tests share (`support.runs.build_trained_world`): read it, never
    write into it (copy what a test must change)."""
    return build_trained_world(tmp_path_factory.mktemp("trained-world"))


@pytest.fixture(scope="session")
def installed_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A reduced `hnp demo` of a non-editable install, run from an empty folder (`support.demo`): SIGKILLed with
    everything it started once a fold has finished and a later one has a registered checkpoint (`first`), then run
    again with the same arguments (`again`), which continues and finishes; what the demo and privacy tests check.
    `interrupted` is what the first run left (`support.demo.interrupted_state`)."""
    root = tmp_path_factory.mktemp("installed-demo")
    site = demo.install_non_editable(root)
    ray_tmp = demo.short_ray_tmp()
    env = demo.demo_env(root, site, ray_tmp)
    cwd = root / "elsewhere"
    cwd.mkdir()
    out = root / "demo"
    argv = ["demo", "--out", str(out), *demo.DEMO_ARGS]
    try:
        phantom = demo.run_hnp(["phantom", "--out", str(out / "phantom"), *demo.PHANTOM_ARGS], env, cwd, timeout=600)
        assert phantom.returncode == 0, phantom.stderr.decode()[-3000:]
        first = run_until([sys.executable, "-c", demo.HNP, *argv], env=env, cwd=cwd, logs=root / "first",
                          until=lambda: demo.interruptible(out / "runs" / "tiny"), timeout=1200)
        kill_by_environment("RAY_TMPDIR", str(ray_tmp))  # anything Ray started that outlived its parents
        assert first.returncode == -signal.SIGKILL, f"not interrupted: {first.returncode}\n" + \
            first.stderr.decode()[-3000:]
        interrupted = demo.interrupted_state(out)
        again = demo.run_hnp(argv, env, cwd, timeout=1200)
        yield {"root": root, "site": site, "out": out, "cwd": cwd, "ray_tmp": ray_tmp,
               "wandb_home": root / "wandb-home", "phantom": phantom, "first": first, "again": again,
               "interrupted": interrupted}
    finally:
        kill_by_environment("RAY_TMPDIR", str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def clinical_reports(trained_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`hnp eval` of the shared briefly trained run (`trained_world`: the `levels` task) with `--calibrate platt
    --prevalence 0.2`, Grad-CAM and the pointing game, and of an `any` run of untrained fold checkpoints on the same
    shards (`support.runs.build_run`). What the clinical report tests (calibration, operating points, compare,
    report.html) read; the reports are written here, the trained world is only read."""
    from support.runs import build_run, tiny_config

    from hnp.cli import main

    folder = tmp_path_factory.mktemp("clinical")
    shards = trained_world["shards"]
    runs = {"levels": trained_world["run"], "any": build_run(folder / "any", shards, tiny_config("any"))}
    extra = {"levels": ["--calibrate", "platt", "--prevalence", "0.2", "--gradcam-top", "3", "--truth",
                        str(trained_world["truth"])],
             "any": ["--gradcam-top", "0"]}
    reports = {}
    for task, run in runs.items():
        reports[task] = folder / f"report-{task}"
        argv = ["eval", "--run", str(run), "--shards", str(shards), "--out", str(reports[task]), "--bootstrap", "50",
                "--no-wandb", *extra[task]]
        assert main(argv) == 0
    return {**reports, "shards": shards, "levels_run": runs["levels"], "any_run": runs["any"]}
