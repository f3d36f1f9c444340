"""`hnp eval` and `hnp predict` over the shared briefly trained run of the phantom (conftest.py's `trained_world`):
every contract file, each image once with its shard labels, test AUCs that carry the planted signal, bagging that
matches the per-fold columns, predict that agrees with eval, and clear errors."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from support.runs import TRAINED_SIZE, TRAINED_TEST_AUC_FLOOR, build_run, tiny_config
from support.wandb_files import completed_run_records

from eval.run_eval import REPORT_FILES, REPORT_FOLDERS
from hnp.cli import main
from hnp.config import load_config
from hnp.levels import LEVELS
from hnp.predictions import label_column, pred_column, prob_column
from phantom.ceiling import ceiling_auc, read_ceiling

CONTRACT_FILES = ("predictions_images.parquet", "predictions_patients.parquet", "metrics.json", "metrics.csv",
                  "report.md", "roc.png", "gradcam/index.csv")


@pytest.fixture(scope="module")
def world(trained_world: dict[str, Path]) -> dict[str, Path]:
    return trained_world


@pytest.fixture(scope="module")
def report(world: dict[str, Path]) -> Path:
    out = world["folder"] / "report"
    code = main(["eval", "--run", str(world["run"]), "--shards", str(world["shards"]), "--out", str(out),
                 "--gradcam-top", "3", "--bootstrap", "50", "--truth", str(world["truth"]), "--no-wandb"])
    assert code == 0
    return out


def test_eval_writes_every_contract_file(report: Path) -> None:
    for name in CONTRACT_FILES:
        assert (report / name).is_file(), name
    # and nothing else: what a rerun removes of an earlier report (clear_earlier_report) must be all of it
    assert {path.name for path in report.iterdir()} <= set(REPORT_FILES) | set(REPORT_FOLDERS)
    assert (report / "roc.png").read_bytes().startswith(b"\x89PNG")
    text = (report / "report.md").read_text()
    for heading in ("paper Table 5 layout", "Cross-validation (out-of-fold, image level; paper Table 3 layout)",
                    "Grad-CAM", "Pointing game"):
        assert heading in text
    images = len(pd.read_parquet(report / "predictions_images.parquet"))
    assert f"\n{images} test images of " in text
    assert "| L4-5 |" in text and "0.41 | 0.47 | 0.43 | 0.67 |" in text


def test_a_rerun_replaces_the_earlier_report_whole(report: Path, world: dict[str, Path], tmp_path: Path) -> None:
    """Evaluated again without Grad-CAM, into the folder of a report with it: no earlier overlay, explanation or
    gallery is left to pass for one of the new report."""
    out = shutil.copytree(report, tmp_path / "report")
    assert main(["eval", "--run", str(world["run"]), "--shards", str(world["shards"]), "--out", str(out),
                 "--gradcam-top", "0", "--bootstrap", "50", "--no-wandb"]) == 0
    assert not (out / "gradcam").exists() and not (out / "explanations").exists()
    assert not (out / "explanations.json").exists()
    assert "Grad-CAM" not in (out / "report.md").read_text()
    assert "Grad-CAM gallery" not in (out / "report.html").read_text()
    assert json.loads((out / "metrics.json").read_text())["ceiling"] is None  # the new report's: no --truth


def test_every_test_image_is_predicted_once_by_every_fold(report: Path, world: dict[str, Path]) -> None:
    images = pd.read_parquet(report / "predictions_images.parquet")
    record = json.loads((world["shards"] / "dataset.json").read_text())["splits"]["test"]
    assert len(images) == record["samples"] and images["key"].is_unique
    assert images["patient"].nunique() == record["patients"]
    for level in LEVELS:
        folds = images[[prob_column(level, k) for k in range(4)]]
        assert np.allclose(images[prob_column(level)], folds.mean(axis=1))
        assert folds.nunique(axis=1).gt(1).all()  # four different models, four different answers


def _shard_labels(shards: Path, split: str) -> dict[str, list[int]]:
    """key -> the 5 level labels and any of every sample of a split, read from the `.lbl` members with tarfile."""
    labels = {}
    for tar in sorted((shards / split).glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".lbl"):
                    vector = np.frombuffer(archive.extractfile(member).read(), "<f4")
                    labels[member.name[:-4]] = [int(v) for v in vector[:6]]
    return labels


def test_every_image_carries_its_shard_labels_and_the_test_aucs_carry_the_signal(report: Path,
                                                                                  world: dict[str, Path]) -> None:
    images = pd.read_parquet(report / "predictions_images.parquet").set_index("key")
    shard = _shard_labels(world["shards"], "test")
    assert sorted(images.index) == sorted(shard)
    columns = [label_column(target) for target in (*LEVELS, "any")]
    assert {key: images.loc[key, columns].astype(int).tolist() for key in shard} == shard
    # Trained on the phantom's planted signal, every level separates the test patients (support/runs.py states
    # what the run reaches); predictions paired with the wrong images or labels would score about 0.5.
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    aucs = {target: metrics[target]["roc_auc"] for target in (*LEVELS, "any")}
    assert min(aucs.values()) >= TRAINED_TEST_AUC_FLOOR, aucs


def test_patients_are_image_means_and_decisions_follow_thresholds(report: Path) -> None:
    images = pd.read_parquet(report / "predictions_images.parquet")
    patients = pd.read_parquet(report / "predictions_patients.parquet").set_index("patient")
    metrics = json.loads((report / "metrics.json").read_text())
    assert list(metrics["metrics"]) == [*LEVELS, "any"] and metrics["n_patients"] == len(patients)
    means = images.groupby("patient")[[prob_column(level) for level in LEVELS]].mean()
    assert np.allclose(patients.loc[means.index, means.columns], means)
    for name in LEVELS:
        threshold = metrics["metrics"][name]["threshold"]
        per_fold = [metrics["thresholds_per_fold"][k][name] for k in metrics["thresholds_per_fold"]]
        given = [value for value in per_fold if value is not None]  # null: that fold had one class only
        assert threshold == pytest.approx(np.mean(given) if given else 0.5)
        assert (patients[pred_column(name)] == (patients[prob_column(name)] >= threshold)).all()
        assert metrics["metrics"][name]["n_pos"] == patients[label_column(name)].sum()
        assert type(metrics["metrics"][name]["n_pos"]) is int and type(metrics["metrics"][name]["n"]) is int
    csv = pd.read_csv(report / "metrics.csv", index_col="target")
    assert csv.loc["L5-S1", "roc_auc"] == pytest.approx(metrics["metrics"]["L5-S1"]["roc_auc"], rel=1e-5)


def test_gradcam_index_and_heatmaps(report: Path) -> None:
    index = pd.read_csv(report / "gradcam" / "index.csv")
    assert index.columns.tolist() == ["key", "patient", "level", "rank", "probability", "label", "file", "heatmap"]
    assert index.groupby("level").size().to_dict() == dict.fromkeys(LEVELS, 3)
    images = pd.read_parquet(report / "predictions_images.parquet").set_index("key")
    for row in index.itertuples():
        heat = np.load(report / "gradcam" / row.heatmap)
        assert heat.dtype == np.float32 and heat.shape == TRAINED_SIZE  # the phantom's image size
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
        assert cv2.imread(str(report / "gradcam" / row.file)).shape == (*TRAINED_SIZE, 3)
        assert row.probability == pytest.approx(images.loc[row.key, prob_column(row.level)])
        assert row.patient == images.loc[row.key, "patient"]
    top = index[index.level == "L4-5"]["probability"]
    assert top.is_monotonic_decreasing
    assert top.iloc[-1] >= images["prob_L4-5"].drop(index[index.level == "L4-5"]["key"]).max()


def test_no_raw_patient_id_in_any_output(report: Path, world: dict[str, Path]) -> None:
    raw_ids = pd.read_parquet(world["phantom"] / "manifest.parquet")["patient_id"].unique()
    blob = b"".join(path.read_bytes() for path in report.rglob("*") if path.is_file() and path.suffix != ".npy")
    assert not [pid for pid in raw_ids if pid.encode() in blob]


def test_explanations_name_their_method_and_run_their_checks(report: Path) -> None:
    """The default maps (hirescam at the auto layer: blocks.1 at this run's 64 px) are named in the report and in
    explanations.json, with the deletion and randomization checks per level; the pointing games ran on the truth."""
    text = (report / "report.md").read_text()
    assert "**hirescam at blocks.1**" in text and "Faithfulness and randomization checks" in text
    found = json.loads((report / "explanations.json").read_text())
    assert found["maps"] == "hirescam at blocks.1" and found["top"] == 3
    assert set(found["deletion"]["levels"]) == set(LEVELS) and found["deletion"]["overall"]["n"] == 15
    assert set(found["sanity"]["levels"]) == set(LEVELS)
    assert found["pointing"] is not None and set(found["pointing"]["levels"]) == set(LEVELS)
    for level, figure in found["figures"].items():
        assert (report / figure).read_bytes().startswith(b"\x89PNG"), level


def test_eval_with_truth_reports_the_model_beside_the_phantoms_ceiling(report: Path, world: dict[str, Path]) -> None:
    metrics = json.loads((report / "metrics.json").read_text())
    ceiling = read_ceiling(world["phantom"] / "ceiling.json")
    block = metrics["ceiling"]
    assert list(block["targets"]) == [*LEVELS, "any"]
    for target, scopes in block["targets"].items():
        for scope in ("image", "patient"):
            assert scopes[scope]["ceiling"] == ceiling_auc(ceiling, target, scope, "test"), (target, scope)
            assert scopes[scope]["n_model"] == scopes[scope]["n_ceiling"], (target, scope)
        per_patient = metrics["metrics"][target]["roc_auc"]
        assert scopes["patient"]["model"] == (None if per_patient is None else pytest.approx(per_patient)), target
    assert "## Phantom ceiling" in (report / "report.md").read_text()



def test_predict_agrees_with_eval_for_a_test_patient(report: Path, world: dict[str, Path],
                                                     capsys: pytest.CaptureFixture) -> None:
    images = pd.read_parquet(report / "predictions_images.parquet")
    patients = pd.read_parquet(report / "predictions_patients.parquet").set_index("patient")
    patient = images["patient"].iloc[0]
    manifest = pd.read_parquet(world["phantom"] / "manifest.parquet")
    rows = [int(key[1:]) for key in images.loc[images.patient == patient, "key"]]
    paths = [str(world["phantom"] / manifest.loc[row, "image_path"]) for row in rows]
    capsys.readouterr()
    assert main(["predict", "--run", str(world["run"]), *paths, "--age", "50"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert "L4-5" in out.err and "probability" in out.err
    assert result["n_images"] == len(paths) and result["age"] == 50
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    for name in LEVELS:
        assert result["targets"][name]["probability"] == pytest.approx(patients.loc[patient, prob_column(name)],
                                                                       abs=1e-5)
        assert result["targets"][name]["threshold"] == pytest.approx(metrics[name]["threshold"])
        assert result["targets"][name]["hnp"] == bool(patients.loc[patient, pred_column(name)])


def test_predict_writes_gradcam(world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = next((world["phantom"] / "images").glob("*.jpg"))
    assert main(["predict", "--run", str(world["run"]), str(image), "--gradcam", str(tmp_path / "cam")]) == 0
    index = pd.read_csv(tmp_path / "cam" / "index.csv")
    assert sorted(index["level"]) == sorted(LEVELS)
    assert np.load(tmp_path / "cam" / index["heatmap"].iloc[0]).shape == cv2.imread(str(image), 0).shape


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "undecodable image: not a JPEG: a PNG file"),
        (b"", "undecodable image: empty file"),
        (None, "file not found"),
    ],
)
def test_predict_names_a_bad_file(world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                  content: bytes | None, reason: str) -> None:
    bad = tmp_path / "scan.jpg"
    if content is not None:
        bad.write_bytes(content)
    good = next((world["phantom"] / "images").glob("*.jpg"))
    assert main(["predict", "--run", str(world["run"]), str(good), str(bad)]) == 2
    assert f"{bad}: {reason}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "median"], "--threshold 'median'"),
        (["--run", "{folder}"], "no fold*/ folders"),
        (["--shards", "{folder}"], "dataset.json: not found"),
    ],
)
def test_eval_errors_are_clear(world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                               args: list[str], message: str) -> None:
    base = {"--run": str(world["run"]), "--shards": str(world["shards"]), "--out": str(tmp_path / "r")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value.format(folder=tmp_path)
    argv = ["eval", *[item for pair in base.items() for item in pair], "--gradcam-top", "0", "--no-wandb"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_threshold_rules_change_only_the_decisions(world: dict[str, Path], report: Path, tmp_path: Path) -> None:
    out = tmp_path / "fixed"
    argv = ["eval", "--run", str(world["run"]), "--shards", str(world["shards"]), "--out", str(out),
            "--threshold", "fixed:0.5", "--gradcam-top", "0", "--bootstrap", "0", "--no-wandb"]
    assert main(argv) == 0
    fixed = json.loads((out / "metrics.json").read_text())["metrics"]
    default = json.loads((report / "metrics.json").read_text())["metrics"]
    assert {row["threshold"] for row in fixed.values()} == {0.5}
    assert all(fixed[n]["roc_auc"] == pytest.approx(default[n]["roc_auc"], nan_ok=True) for n in LEVELS)
    assert not (out / "gradcam").exists()


@pytest.mark.slow
def test_dali_loader_predicts_every_image_once_like_the_torch_loader(world: dict[str, Path], report: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "dali"
    argv = ["eval", "--run", str(world["run"]), "--shards", str(world["shards"]), "--out", str(out),
            "--loader", "dali", "--gradcam-top", "0", "--bootstrap", "0", "--no-wandb"]
    assert main(argv) == 0
    dali = pd.read_parquet(out / "predictions_images.parquet").set_index("key")
    torch_loader = pd.read_parquet(report / "predictions_images.parquet").set_index("key")
    assert dali.index.is_unique and sorted(dali.index) == sorted(torch_loader.index)
    columns = [prob_column(level, k) for k in range(4) for level in LEVELS]
    # The two loaders' resizes agree within a few gray levels, so each image's predictions nearly agree: far closer
    # than two different images' predictions are (a loader that fed a key another image's pixels would not be).
    difference = (dali.loc[torch_loader.index, columns] - torch_loader[columns]).abs().max()
    spread = torch_loader[columns].std()
    assert (difference < 0.1 * spread).all(), pd.DataFrame({"difference": difference, "spread": spread})


def test_test_metrics_go_to_the_experiment_wandb_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eval.run_eval import log_metrics_to_wandb

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config("tiny", ["name=wbeval"])
    table = pd.DataFrame({"roc_auc": [0.7, 0.8], "f1": [0.4, float("nan")]}, index=pd.Index(["L4-5", "any"]))
    log_metrics_to_wandb(cfg, table, tmp_path)
    records = completed_run_records(tmp_path)
    run = next(record.run for record in records if record.HasField("run"))
    assert (run.run_group, run.display_name) == ("wbeval", "wbeval-eval")
    keys = {item.key or "/".join(item.nested_key) for record in records if record.HasField("history")
            for item in record.history.item}
    assert {"test/roc_auc/L4-5", "test/roc_auc/any", "test/f1/L4-5"} <= keys
    assert "test/f1/any" not in keys  # NaN metrics are left out
    log_metrics_to_wandb(load_config("tiny", ["wandb.mode='off'"]), table, tmp_path / "off")
    assert not (tmp_path / "off").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["any", "levels_age"])
def test_eval_and_predict_for_the_other_tasks(world: dict[str, Path], tmp_path: Path, task: str,
                                              capsys: pytest.CaptureFixture) -> None:
    run = build_run(tmp_path, world["shards"], tiny_config(task=task))
    out = tmp_path / "report"
    argv = ["eval", "--run", str(run), "--shards", str(world["shards"]), "--out", str(out), "--gradcam-top", "2",
            "--bootstrap", "20", "--no-wandb"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    expected = ["any"] if task == "any" else [*LEVELS, "any"]
    assert metrics["task"] == task and list(metrics["metrics"]) == expected
    assert ("paper Table 2 layout" if task == "any" else "paper Table 4 layout") in (out / "report.md").read_text()
    index = pd.read_csv(out / "gradcam" / "index.csv")
    assert sorted(index["level"].unique()) == sorted(expected if task == "any" else LEVELS)
    image = next((world["phantom"] / "images").glob("*.jpg"))
    capsys.readouterr()
    assert main(["predict", "--run", str(run), str(image), "--age", "40"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["targets"]) == expected
    assert (result["predicted_age"] is None) == (task == "any")


@pytest.mark.slow
def test_youden_oof_thresholds_come_from_patient_level_validation_scores(world: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "oof"
    argv = ["eval", "--run", str(world["run"]), "--shards", str(world["shards"]), "--out", str(out),
            "--threshold", "youden-oof", "--gradcam-top", "0", "--bootstrap", "0", "--no-wandb"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    patients = {}
    for tar in world["shards"].glob("fold*/*.tar"):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".json"):
                    patients[member.name[:-5]] = json.load(archive.extractfile(member))["patient"]
    oof = pd.concat(pd.read_parquet(p) for p in world["run"].glob("fold*/val_predictions.parquet"))
    per_patient = oof.assign(patient=oof["key"].map(patients)).groupby("patient").mean(numeric_only=True)
    labels = per_patient[[label_column(name) for name in LEVELS]].gt(0)  # a patient is positive at any image's read
    for name in LEVELS:
        # Youden's J at the chosen cut-off is the best J of any cut-off between the patients' pooled OOF scores
        scores, positive = per_patient[prob_column(name)].to_numpy(), labels[label_column(name)].to_numpy()

        def youden_j(cut: float, scores: np.ndarray = scores, positive: np.ndarray = positive) -> float:
            called = scores >= cut
            return called[positive].mean() - called[~positive].mean()

        threshold = metrics[name]["threshold"]
        assert youden_j(threshold) == pytest.approx(max(youden_j(cut) for cut in scores)), name
        assert youden_j(threshold) > 0.4, name  # the trained run's folds separate their held-out patients


def test_predict_needs_only_the_checkpoints(world: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    """A run copied without its val_predictions still predicts; the derived "any" then uses the 0.5 fallback."""
    for best in world["run"].glob("fold*/best.pt"):
        (tmp_path / best.parent.name).mkdir()
        (tmp_path / best.parent.name / "best.pt").write_bytes(best.read_bytes())
    image = next((world["phantom"] / "images").glob("*.jpg"))
    capsys.readouterr()
    assert main(["predict", "--run", str(tmp_path), str(image)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["targets"]["any"]["threshold"] == 0.5
    assert result["targets"]["L4-5"]["threshold"] != 0.5


def test_eval_refuses_shards_the_run_did_not_train_on(world: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from sharding.build import ShardOptions, shard_manifest

    other = tmp_path / "other"
    shard_manifest(ShardOptions(manifest=world["phantom"] / "manifest.parquet", out=other, seed=1, progress=False))
    argv = ["eval", "--run", str(world["run"]), "--shards", str(other), "--out", str(tmp_path / "r"),
            "--gradcam-top", "0", "--no-wandb"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    trained = torch.load(world["run"] / "fold0" / "best.pt", weights_only=True)["dataset"]
    assert f"the run trained on shards {trained}, but {other / 'dataset.json'} is " in err
    assert not (tmp_path / "r" / "metrics.json").exists()
