"""The model's test AUC beside the phantom's ceiling (`phantom.ceiling.beside_ceiling`, used by `hnp eval --truth`):
every figure is read for its own target, scope and the test split, and a missing ceiling.json is said so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from hnp.levels import LEVELS
from phantom.ceiling import (
    CEILING_FORMAT,
    CEILING_SPLITS,
    CEILING_VERSION,
    SCOPES,
    TARGETS,
    beside_ceiling,
    ceiling_lines,
    ceiling_markdown,
    film_mean,
    read_ceiling,
    write_ceiling,
)


def distinct_document() -> dict:
    """A ceiling document whose every split x scope x target holds its own AUC (and count), so a figure read from
    the wrong place cannot match."""
    splits, value = {}, 0.5
    for split in CEILING_SPLITS:
        splits[split] = {}
        for scope in SCOPES:
            splits[split][scope] = {}
            for target in TARGETS:
                value += 0.004
                splits[split][scope][target] = {"auc": round(value, 3), "n": 40 if scope == "image" else 12,
                                                "n_pos": 5}
    return {"format": CEILING_FORMAT, "version": CEILING_VERSION, "difficulty": "paper", "prevalence": "paper",
            "splits": splits}


def prediction_frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """40 test images of 12 patients with labels and noisy probabilities; patients are their images' means."""
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(12), [4, 3, 3, 4, 3, 3, 4, 3, 3, 4, 3, 3])
    labels = rng.integers(0, 2, (12, len(TARGETS) - 1))
    images = pd.DataFrame({"patient": patient})
    for k, level in enumerate(TARGETS[:-1]):
        images[f"label_{level}"] = labels[patient, k]
        images[f"prob_{level}"] = np.clip(0.3 * labels[patient, k] + rng.uniform(0, 0.8, len(patient)), 0, 1)
    levels = list(TARGETS[:-1])
    images["label_any"] = images[[f"label_{lv}" for lv in levels]].max(axis=1)
    images["prob_any"] = images[[f"prob_{lv}" for lv in levels]].max(axis=1)
    patients = images.groupby("patient").mean().reset_index()
    patients["label_any"] = patients[[f"label_{lv}" for lv in levels]].max(axis=1)
    patients["prob_any"] = patients[[f"prob_{lv}" for lv in levels]].max(axis=1)
    return images, patients


@pytest.fixture()
def truth_path(tmp_path: Path) -> Path:
    write_ceiling(tmp_path / "ceiling.json", distinct_document())
    return tmp_path / "truth.parquet"  # only its folder is used


def test_every_figure_comes_from_its_target_scope_and_the_test_split(truth_path: Path) -> None:
    images, patients = prediction_frames()
    block = beside_ceiling(truth_path, images, patients)
    document = read_ceiling(truth_path.parent / "ceiling.json")
    assert list(block["targets"]) == list(TARGETS) and block["split"] == "test"
    for target in TARGETS:
        for scope, frame in (("image", images), ("patient", patients)):
            figures = block["targets"][target][scope]
            assert figures["ceiling"] == document["splits"]["test"][scope][target]["auc"], (target, scope)
            assert figures["n_ceiling"] == document["splits"]["test"][scope][target]["n"]
            model = roc_auc_score(frame[f"label_{target}"], frame[f"prob_{target}"])
            assert figures["model"] == pytest.approx(model), (target, scope)
            assert figures["n_model"] == len(frame)
        assert block["targets"][target]["patient"]["film_mean_ceiling"] == \
            document["splits"]["test"]["film_mean"][target]["auc"], target
    per_image, per_patient = (block["targets"]["L4-5"][s]["model"] for s in ("image", "patient"))
    assert per_image != pytest.approx(per_patient)  # the scopes are told apart by the data too


def test_report_and_console_put_each_figure_in_its_column(truth_path: Path) -> None:
    images, patients = prediction_frames()
    block = beside_ceiling(truth_path, images, patients)
    level = block["targets"]["L5-S1"]
    row = next(line for line in ceiling_markdown(block).splitlines() if line.startswith("| L5-S1 |"))
    patient, image = level["patient"], level["image"]
    assert row == (f"| L5-S1 | {patient['model']:.3f} | {patient['ceiling']:.3f} | {patient['film_mean_ceiling']:.3f} "
                   f"| {image['model']:.3f} | {image['ceiling']:.3f} | 12 |")
    line = next(line for line in ceiling_lines(block) if line.strip().startswith("L5-S1"))
    assert line.split() == ["L5-S1", "per", "patient", f"{patient['model']:.3f}", "/", f"{patient['ceiling']:.3f}",
                            "(film", "mean", f"{patient['film_mean_ceiling']:.3f})", "per", "image",
                            f"{image['model']:.3f}", "/", f"{image['ceiling']:.3f}"]
    assert not any("warning" in line for line in ceiling_lines(block))


def test_a_test_set_other_than_the_ceilings_is_flagged(truth_path: Path) -> None:
    images, patients = prediction_frames()
    block = beside_ceiling(truth_path, images.iloc[:-3], patients)
    assert "37 images scored, the ceiling's 40" in ceiling_lines(block)[-1]
    assert "**warning: 37 images scored" in ceiling_markdown(block)


def test_a_missing_ceiling_is_said_so(tmp_path: Path) -> None:
    images, patients = prediction_frames()
    block = beside_ceiling(tmp_path / "truth.parquet", images, patients)
    assert block == {"missing": "ceiling.json"}
    assert "no ceiling.json beside the truth table" in ceiling_lines(block)[0]
    assert "No `ceiling.json` beside the truth table" in ceiling_markdown(block)


def test_the_any_task_is_compared_on_any_only(truth_path: Path) -> None:
    images, patients = prediction_frames()
    levels = [f"prob_{level}" for level in TARGETS[:-1]]
    block = beside_ceiling(truth_path, images.drop(columns=levels), patients.drop(columns=levels))
    assert list(block["targets"]) == ["any"]


def test_the_film_mean_ceiling_averages_each_films_own_posterior_per_patient() -> None:
    # Patient 7 has two films: one shows a sign at L1-2 (0.9), one cannot (0.1); the paper's protocol averages
    # them to 0.5, where the patient's own posterior (all films together) is 0.9. "any" is each film's, averaged.
    films = pd.DataFrame({"patient": [7, 7, 3], "split": ["test", "test", "train"],
                          **{f"label_{level}": [1, 1, 0] if k == 0 else [0, 0, 0] for k, level in enumerate(LEVELS)},
                          **{f"posterior_{level}": [0.9, 0.1, 0.2] if k == 0 else [0.0, 0.0, 0.0]
                             for k, level in enumerate(LEVELS)}})
    mean = film_mean(films)
    assert list(mean.index) == [7, 3] and list(mean["split"]) == ["test", "train"]
    assert mean.loc[7, "posterior_L1-2"] == pytest.approx(0.5) and mean.loc[3, "posterior_L1-2"] == pytest.approx(0.2)
    films.loc[1, "posterior_L2-3"] = 0.5  # film 2's "any": 1 - 0.9 * 0.5 = 0.55, not that of the mean posteriors
    assert film_mean(films).loc[7, "posterior_any"] == pytest.approx((0.9 + 0.55) / 2)
    assert mean.loc[7, "label_L1-2"] == 1 and mean.loc[3, "label_L1-2"] == 0


def test_a_fusion_model_has_no_per_image_score_and_no_false_count_warning(truth_path: Path) -> None:
    # A fusion run's rows are studies: compared as images they made a "not the same test set" warning.
    _, patients = prediction_frames()
    block = beside_ceiling(truth_path, None, patients)
    image = block["targets"]["L1-2"]["image"]
    assert image["model"] is None and image["n_model"] is None and image["ceiling"] is not None
    assert block["targets"]["L1-2"]["patient"]["model"] is not None
    assert not any("warning" in line for line in ceiling_lines(block))
    assert "per image n/a /" in next(line for line in ceiling_lines(block) if line.strip().startswith("L1-2"))
    assert "A fusion model scores studies, not images" in ceiling_markdown(block)
    assert "A fusion model" not in ceiling_markdown(beside_ceiling(truth_path, *prediction_frames()))
