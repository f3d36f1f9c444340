"""`hnp demo`, reduced, from a non-editable install run in another folder (the shared `installed_demo` run of
tests/support/demo.py): the whole chain through the real CLI and a local Ray, what it prints, what it learns, and
that a demo killed during training, run again, continues where it stopped instead of starting over."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest
from support import demo as support

from eval.report import PAPER_TABLE5
from hnp.cli import main
from hnp.demo import DemoPaths, add_arguments, demo_stages, run
from hnp.levels import LEVELS


@pytest.mark.slow
def test_installed_demo_runs_from_another_folder_without_the_source_tree(installed_demo: dict) -> None:
    site, cwd = installed_demo["site"], installed_demo["cwd"]
    where = support.run_hnp(["--help"], support.demo_env(installed_demo["root"], site, installed_demo["ray_tmp"]),
                            cwd, timeout=300)  # 35-55 s measured at load 10-30: it imports torch
    assert where.returncode == 0 and b"demo" in where.stdout
    assert (site / "hnp" / "configs" / "tiny.yaml").is_file() and not (site / "tests").exists()
    assert list(cwd.iterdir()) == []  # everything went to --out, nothing into the working folder
    config = installed_demo["out"] / "runs" / "tiny" / "config.yaml"
    assert "test_efficientnet" in config.read_text()  # the packaged tiny config was found and used


@pytest.mark.slow
def test_demo_summary_reports_the_evaluation_and_the_folds_learned(installed_demo: dict) -> None:
    out = installed_demo["out"]
    document = json.loads((out / "reports" / "tiny" / "metrics.json").read_text())
    metrics, ceilings = document["metrics"], document["ceiling"]["targets"]
    aucs = {level: metrics[level]["roc_auc"] for level in LEVELS}
    assert all(auc is not None for auc in aucs.values()), aucs  # 30 test patients: both classes at every level
    # The planted signs are learned: a broken pairing of predictions, images and labels scores about 0.5.
    assert all(auc >= support.DEMO_TEST_AUC_FLOOR for auc in aucs.values()), aucs
    summary = installed_demo["again"].stdout.decode()  # the run that finished
    assert "hnp demo finished" in summary
    for level, auc in aucs.items():  # the model, the phantom's per-patient ceiling, the paper's Table 5
        row = rf"\| {re.escape(level)} \| {auc:.3f} \| {ceilings[level]['patient']['ceiling']:.3f} \| "
        assert re.search(row + rf"{PAPER_TABLE5[level][3]:.2f} \|", summary), level
    assert f"| mean | {sum(aucs.values()) / len(aucs):.3f} |" in summary
    for path in re.findall(r"^\s+(\S+)\s{2,}", summary.split("Open:", 1)[1], flags=re.M):
        assert Path(path).exists(), path


def _digests(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in support.FOLD_FILES}


@pytest.mark.slow
def test_interrupted_demo_continues_where_it_stopped(installed_demo: dict) -> None:
    """The demo SIGKILLed with everything it started, during training, once a fold had finished and a fold of the
    next pair had a registered checkpoint; run again, it keeps the phantom, the shards and the finished folds,
    resumes the unfinished folds from their checkpoints, and finishes with its report."""
    first, again, stopped = installed_demo["first"], installed_demo["again"], installed_demo["interrupted"]
    assert b"hnp demo finished" not in first.stdout and "── train" in first.stderr.decode()
    finished, registered = stopped["finished"], stopped["registered"]
    assert finished and any(registered.values()), stopped  # killed between two folds' ends
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    log = again.stderr.decode()
    assert "── phantom" not in log and "── train" in log and "── eval" in log
    run = installed_demo["out"] / "runs" / "tiny"
    for fold in range(support.FOLDS):
        if fold in finished:  # not retrained: its files as the interrupted run left them
            assert f"fold{fold}: already finished" in log
            assert _digests(run / f"fold{fold}") == finished[fold], fold
        else:
            assert f"fold{fold}: already finished" not in log
        if registered.get(fold):  # the epochs it had checkpointed are not trained again
            assert f"fold{fold} resumed from an earlier launch: resumed after epoch {registered[fold]} " in log
        history = pd.read_csv(run / f"fold{fold}" / "history.csv")
        assert history["epoch"].tolist() == list(range(1, support.EPOCHS + 1)), fold  # each epoch once
    assert f"all {support.FOLDS} folds finished" in log
    # the phantom and the shards are the files the first run made: the same bytes, the tars not even rewritten
    now = support.interrupted_state(installed_demo["out"])
    assert now["kept"] == stopped["kept"] and now["untouched"] == stopped["untouched"]
    assert "hnp demo finished" in again.stdout.decode()


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


def test_ctrl_c_in_a_stage_stops_the_demo_as_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Not "error: ... fix the cause": the stage's Ctrl-C (exit status 130) is the demo's, with how to go on."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.setattr("hnp.cli.main", lambda argv: 130)
    with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.WARNING, logger="hnp.demo"):
        run(parser.parse_args(["--out", str(tmp_path)]))
    assert "interrupted at `hnp phantom`: run `hnp demo` again, finished stages are kept" in caplog.text
