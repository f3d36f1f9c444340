"""`hnp demo`, reduced: the whole chain on a few phantom patients, through the real CLI and a local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hnp.cli import main
from hnp.levels import LEVELS


@pytest.mark.slow
def test_reduced_demo_runs_end_to_end_and_reports_aucs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--patients", "80", "--workers", "2", "--gradcam-top", "4",
            "--set", "train.epochs=1", "--set", "data.image_size=64", "--set", "wandb.mode=off"]

    assert main(argv) == 0

    metrics = json.loads((out / "reports" / "tiny" / "metrics.json").read_text())
    aucs = [metrics["metrics"][level]["roc_auc"] for level in LEVELS]
    assert all(auc is None or 0.0 <= auc <= 1.0 for auc in aucs)
    assert sum(auc is not None for auc in aucs) >= 3, aucs
    assert (out / "reports" / "tiny" / "report.md").read_text().startswith("# Evaluation")
    summary = capsys.readouterr().out
    assert "hnp demo finished" in summary and "| mean |" in summary
    assert all(f"| {level} |" in summary for level in LEVELS)
    for fold in range(4):
        assert (out / "runs" / "tiny" / f"fold{fold}" / "best.pt").is_file()


def test_demo_refuses_too_few_patients(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--patients", "3"]) == 2
    assert "--patients 3: a 4-fold demo needs at least 8 patients" in capsys.readouterr().err
