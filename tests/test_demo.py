"""`hnp demo`, reduced, from a non-editable install run in another folder (the shared `installed_demo` run of
tests/support/demo.py): the whole chain through the real CLI and a local Ray, what it prints, what it learns, and
that running it again continues where it stopped instead of starting over."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from support import demo as support

from eval.report import PAPER_TABLE5
from hnp.cli import main
from hnp.demo import DemoPaths, add_arguments, demo_stages
from hnp.levels import LEVELS


@pytest.mark.slow
def test_installed_demo_runs_from_another_folder_without_the_source_tree(installed_demo: dict) -> None:
    site, cwd = installed_demo["site"], installed_demo["cwd"]
    where = support.run_hnp(["--help"], support.demo_env(installed_demo["root"], site, installed_demo["ray_tmp"]),
                            cwd, timeout=60)
    assert where.returncode == 0 and b"demo" in where.stdout
    assert (site / "hnp" / "configs" / "tiny.yaml").is_file() and not (site / "tests").exists()
    assert list(cwd.iterdir()) == []  # everything went to --out, nothing into the working folder
    config = installed_demo["out"] / "runs" / "tiny" / "config.yaml"
    assert "test_efficientnet" in config.read_text()  # the packaged tiny config was found and used


@pytest.mark.slow
def test_demo_summary_reports_the_evaluation(installed_demo: dict) -> None:
    out = installed_demo["out"]
    document = json.loads((out / "reports" / "tiny" / "metrics.json").read_text())
    metrics, ceilings = document["metrics"], document["ceiling"]["targets"]
    aucs = {level: metrics[level]["roc_auc"] for level in LEVELS}
    assert all(auc is not None for auc in aucs.values()), aucs  # 30 test patients: both classes at every level
    summary = installed_demo["first"].stdout.decode()
    assert "hnp demo finished" in summary
    for level, auc in aucs.items():  # the model, the phantom's per-patient ceiling, the paper's Table 5
        row = rf"\| {re.escape(level)} \| {auc:.3f} \| {ceilings[level]['patient']['ceiling']:.3f} \| "
        assert re.search(row + rf"{PAPER_TABLE5[level][3]:.2f} \|", summary), level
    assert f"| mean | {sum(aucs.values()) / len(aucs):.3f} |" in summary
    for path in re.findall(r"^\s+(\S+)\s{2,}", summary.split("Open:", 1)[1], flags=re.M):
        assert Path(path).exists(), path


@pytest.mark.slow
def test_demo_run_again_continues_where_it_stopped(installed_demo: dict) -> None:
    again = installed_demo["again"]
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    log = again.stderr.decode()
    assert "── phantom" not in log  # the phantom it found is kept
    assert all(f"fold{k}: already finished" in log for k in range(4))
    assert "all 4 folds finished" in log
    # the same folds evaluated again give the same report
    final = (installed_demo["out"] / "reports" / "tiny" / "metrics.json").read_text()
    assert json.loads(final)["metrics"] == json.loads(installed_demo["first_metrics"])["metrics"]


def test_demo_refuses_too_few_patients(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--patients", "3"]) == 2
    assert "--patients 3: a 4-fold demo needs at least 8 patients" in capsys.readouterr().err


@pytest.mark.parametrize(("given", "difficulty"), [([], "easy"), (["--difficulty", "paper"], "paper")])
def test_demo_asks_the_phantom_for_its_difficulty(tmp_path: Path, given: list[str], difficulty: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    stages = dict(demo_stages(parser.parse_args(["--out", str(tmp_path), *given]), DemoPaths(tmp_path)))
    phantom = stages["phantom"]
    assert phantom[phantom.index("--difficulty") + 1] == difficulty
