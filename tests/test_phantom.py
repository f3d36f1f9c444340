"""hnp phantom: determinism, the manifest contract, the `easy` preset's planted signal measured from pixels,
prevalence, errors. The `paper` preset's signs: test_phantom_signs.py; truth tables and ceiling:
test_phantom_truth.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from support.phantom_pixels import disc_height

from hnp.cli import main
from hnp.errors import HnpError
from hnp.jpeg import inspect_jpeg_file
from hnp.levels import LEVEL_COLUMNS, LEVELS, VIEWS
from hnp.schema import MAX_XRAY_MRI_DAYS, OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from phantom.anatomy import PHANTOM_VIEWS, base_prevalence, level_probabilities, sample_patient
from phantom.generate import PhantomConfig, generate, parse_size
from phantom.signs import EASY
from phantom.truth import TRUTH_FILES

SMALL = (128, 100)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "set"
    generate(PhantomConfig(out=out, patients=30, seed=7, size=SMALL, test_fraction=0.2), progress=False)
    return out


@pytest.fixture(scope="module")
def signal_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 330 full-size images with every level often positive."""
    out = tmp_path_factory.mktemp("phantom") / "signal"
    generate(PhantomConfig(out=out, patients=70, seed=11, prevalence="balanced", workers=2), progress=False)
    return out


def test_same_seed_same_bytes_whatever_the_workers(small_set: Path, tmp_path: Path) -> None:
    generate(PhantomConfig(out=tmp_path / "again", patients=30, seed=7, size=SMALL, test_fraction=0.2, workers=2),
             progress=False)
    first, second = _files(small_set), _files(tmp_path / "again")
    assert len(first) > 30 + 3
    assert first == second


def test_different_seed_different_data(small_set: Path, tmp_path: Path) -> None:
    generate(PhantomConfig(out=tmp_path / "other", patients=30, seed=8, size=SMALL, test_fraction=0.2),
             progress=False)
    first, other = _files(small_set), _files(tmp_path / "other")
    assert first["manifest.csv"] != other["manifest.csv"]
    shared = {name for name in set(first) & set(other) if name.startswith("images/")}
    assert shared and all(first[name] != other[name] for name in shared)


def test_manifest_follows_the_contract(small_set: Path) -> None:
    manifest = pd.read_parquet(small_set / "manifest.parquet")
    assert list(manifest.columns) == [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]
    assert manifest["patient_id"].str.fullmatch(r"PT\d{8}").all()
    assert manifest["image_path"].is_unique
    assert set(manifest["split"]) == {"train", "test"}
    assert manifest["view"].isin(VIEWS).all()
    assert manifest["sex"].isin(["M", "F"]).all()
    assert pd.api.types.is_integer_dtype(manifest["age"]) and manifest["age"].between(18, 90).all()
    for column in LEVEL_COLUMNS:
        assert pd.api.types.is_integer_dtype(manifest[column]) and manifest[column].isin([0, 1]).all()
    per_patient = manifest.groupby("patient_id")
    assert per_patient.size().between(1, 6).all()
    assert (per_patient["view"].nunique() == per_patient.size()).all()
    shared = ["split", "age", "sex", "study_id", "xray_date", "mri_date", *LEVEL_COLUMNS]
    assert (per_patient[shared].nunique() == 1).all().all(), "a patient's images disagree on labels or split"
    assert manifest.drop_duplicates("patient_id")["split"].eq("test").sum() == round(30 * 0.2)
    xray, mri = pd.to_datetime(manifest["xray_date"]), pd.to_datetime(manifest["mri_date"])
    assert ((mri - xray).abs() <= dt.timedelta(days=MAX_XRAY_MRI_DAYS)).all()
    csv = pd.read_csv(small_set / "manifest.csv", dtype={"xray_date": str, "mri_date": str})
    pd.testing.assert_frame_equal(csv, manifest, check_dtype=False)


def test_images_are_grayscale_jpegs_with_truth_inside(small_set: Path) -> None:
    manifest = pd.read_parquet(small_set / "manifest.parquet")
    truth = pd.read_parquet(small_set / "truth.parquet")
    assert truth["image_path"].tolist() == manifest["image_path"].tolist()
    for path in manifest["image_path"]:
        info = inspect_jpeg_file(small_set / path)
        assert (info.height, info.width, info.components) == (*SMALL, 1)
    xs, ys = truth[[f"{lv}_x" for lv in LEVELS]], truth[[f"{lv}_y" for lv in LEVELS]]
    assert ((xs > 0) & (xs < SMALL[1])).all().all() and ((ys > 0) & (ys < SMALL[0])).all().all()
    assert (np.diff(ys.to_numpy(), axis=1) > 0).all(), "discs are not ordered L1-2 .. L5-S1 from the top"
    assert (truth[[f"{lv}_half_height" for lv in LEVELS]] > 0).all().all()


def test_pixels_carry_the_planted_signal_at_its_own_disc(signal_set: Path) -> None:
    """`easy`: every herniated disc is narrowed in every view, clearly more than age narrows the others."""
    manifest = pd.read_parquet(signal_set / "manifest.parquet")
    truth = pd.read_parquet(signal_set / "truth.parquet").to_dict("records")
    heights = np.array([[disc_height(cv2.imread(str(signal_set / row.image_path), cv2.IMREAD_GRAYSCALE), truth[i],
                                     level) for level in LEVELS] for i, row in enumerate(manifest.itertuples())])
    labels = manifest[list(LEVEL_COLUMNS)].to_numpy()
    assert len(manifest) >= 250 and (labels.sum(axis=0) >= 30).all()
    auc = np.array([[roc_auc_score(labels[:, j], -heights[:, k]) for j in range(5)] for k in range(5)])
    own = np.diag(auc)
    assert (own > 0.95).all(), f"per-level AUC of measured disc height: {own.round(3)}"
    assert roc_auc_score(labels.ravel(), -heights.ravel()) > 0.95
    cross = auc[~np.eye(5, dtype=bool)].reshape(5, 4)
    assert (own[:, None] - cross > 0.2).all(), f"signal leaks to other levels: {auc.round(2)}"
    # the confounder: among healthy discs, older patients have lower ones
    age_effect = [spearmanr(manifest["age"][labels[:, k] == 0], heights[labels[:, k] == 0, k])[0] for k in range(5)]
    assert np.mean(age_effect) < -0.1, f"age vs healthy disc height: {np.round(age_effect, 2)}"


@pytest.mark.parametrize("mode", ["paper", "balanced"])
def test_prevalence_follows_the_mode(mode: str) -> None:
    rng = np.random.default_rng(3)
    base = base_prevalence(mode)
    patients = [sample_patient(rng, base, EASY) for _ in range(4000)]
    labels = np.array([p.labels for p in patients])
    ages = np.array([p.age for p in patients])
    observed = labels.mean(axis=0)
    # tolerance: 4 binomial standard errors plus 1 point for the age distribution's discreteness
    tolerance = 4 * np.sqrt(base * (1 - base) / len(patients)) + 0.01
    assert (np.abs(observed - base) < tolerance).all(), f"{mode}: observed {observed.round(3)} vs {base}"
    assert ages.min() >= 18 and ages.max() <= 90
    assert ages[labels[:, 3] == 1].mean() > ages[labels[:, 3] == 0].mean() + 3, "age does not drive prevalence"
    assert (level_probabilities(80, base) > level_probabilities(25, base)).all()
    counts = np.bincount([len(p.views) for p in patients], minlength=7)[1:]
    assert (counts > 0).all() and 4.5 < np.average(np.arange(1, 7), weights=counts) < 5.5
    assert {v for p in patients for v in p.views} == set(PHANTOM_VIEWS)


@pytest.mark.parametrize("text", ["512", "512x", "ax400", "512x400x3", "-1x400", ""])
def test_bad_size_is_an_error(text: str) -> None:
    with pytest.raises(HnpError, match="HxW"):
        parse_size(text)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"patients": 0}, "--patients must be at least 1"),
        ({"test_fraction": 1.0}, r"--test-fraction must be in \[0, 1\)"),
        ({"test_fraction": -0.1}, r"--test-fraction must be in \[0, 1\)"),
        ({"workers": 0}, "--workers must be at least 1"),
        ({"seed": -1}, "--seed must be a non-negative integer"),
        ({"size": (40, 30)}, "--size 40x30 is too small"),
        ({"prevalence": "rare"}, "unknown prevalence mode 'rare'"),
        ({"difficulty": "hard"}, "unknown difficulty 'hard': choose one of easy, paper, instability"),
    ],
)
def test_bad_arguments_are_errors(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(HnpError, match=message):
        PhantomConfig(out=tmp_path / "x", **{"patients": 2, **changes})


def test_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(HnpError, match="not an empty folder"):
        generate(PhantomConfig(out=tmp_path, patients=1, size=SMALL), progress=False)
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_cli_writes_a_set_and_reports_errors_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["phantom", "--out", str(tmp_path / "cli"), "--patients", "3", "--size", "96x80", "--seed", "1",
                 "--difficulty", "paper"]) == 0
    written = {p.name for p in (tmp_path / "cli").iterdir()}
    assert {"manifest.parquet", "manifest.csv", "ceiling.json", *TRUTH_FILES.values()} <= written
    assert main(["phantom", "--out", str(tmp_path / "bad"), "--patients", "3", "--size", "96by80"]) == 2
    assert "--size must look like HxW" in capsys.readouterr().err
