"""The explanation metrics can fail: maps on the true disc score high, maps on another level score low, maps that
ignore the model are flagged, and deletion tells a map of the evidence from a map of something else."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch

from eval.explain import Explanations, checks_markdown, explanation_json, explanation_sections, level_figure
from eval.faithfulness import (
    SANITY_MAX_RHO,
    deletion_scores,
    deletion_summary,
    randomized_copy,
    rank_correlations,
    sanity_summary,
)
from eval.gradcam import ClassActivationMap, overlay
from eval.pointing import counted_images, pointing_markdown, score_map, score_maps, summarise
from eval.truth import PhantomTruth, Region, read_truth
from hnp.errors import HnpError
from hnp.levels import LEVEL_COLUMNS, LEVELS
from phantom.generate import PhantomConfig, generate


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """truth.parquet of a small phantom (128 x 100 px)."""
    out = tmp_path_factory.mktemp("explain") / "phantom"
    generate(PhantomConfig(out=out, patients=4, seed=3, size=(128, 100), prevalence="balanced", workers=1),
             progress=False)
    return out / "truth.parquet"


def samples(truth_path: Path) -> pd.DataFrame:
    """The truth's images as shard samples (key, view)."""
    return read_truth(truth_path)[["key", "view"]]


def with_signs_shown(truth_path: Path, out: Path, shown: set[tuple[int, str]]) -> Path:
    """A copy of the phantom's truth tables in which the films show one sign exactly at the (row, level) pairs of
    `shown`, and nothing anywhere else; returns the copy's truth.parquet."""
    out.mkdir(parents=True)
    shutil.copy(truth_path, out / "truth.parquet")
    signs = pd.read_parquet(truth_path.parent / "truth_signs.parquet")
    first_sign = ~signs.duplicated(["row", "level"])
    wanted = pd.Series([(row, level) in shown for row, level in zip(signs["row"], signs["level"], strict=True)])
    signs.assign(visible=(first_sign & wanted).to_numpy()).to_parquet(out / "truth_signs.parquet", index=False)
    return out / "truth.parquet"


def disc_map(truth_row: pd.Series, column: str, shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """A Gaussian blob (sigma 2 px) on one disc's centre."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    x, y = truth_row[f"{column}_x"] * scale, truth_row[f"{column}_y"] * scale
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 8.0).astype(np.float32)


def test_region_mask_contains_and_corners_agree() -> None:
    box = Region(centre=(20.0, 30.0), angle=30.0, half_width=8.0, half_height=3.0)
    mask = box.mask(60, 50)
    assert mask[30, 20] and not mask[30, 30]  # 10 px across at 30 degrees is outside
    assert mask.sum() == pytest.approx(4 * 8 * 3, rel=0.15)
    corners = box.corners()
    assert np.allclose(corners.mean(axis=0), (20, 30))
    assert box.contains(corners * 0.999 + np.array([20, 30]) * 0.001).all()
    assert np.allclose(box.scaled(0.5).corners(), corners * 0.5)


def test_level_regions_tile_the_spine(phantom: Path) -> None:
    truth = PhantomTruth(phantom, samples(phantom))
    key = read_truth(phantom)["key"].iloc[0]
    levels = truth.levels(key)
    for level, own in levels.items():
        centre = np.array([own.disc.centre])
        assert own.disc.contains(centre)[0] and own.region.contains(centre)[0]
        assert not any(other.region.contains(centre)[0] for name, other in levels.items() if name != level)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_map_on_the_true_disc_scores_high_and_on_the_next_level_low(phantom: Path, scale: float) -> None:
    """The pointing game and the energy share both fail a map centred one level off; at half resolution too."""
    truth_table = read_truth(phantom)
    truth = PhantomTruth(phantom, samples(phantom))
    shape = (int(128 * scale), int(100 * scale))
    for _, row in truth_table.head(6).iterrows():
        on = score_map(disc_map(row, "L4-5", shape, scale), truth.levels(row.key), "L4-5", (128, 100), row.key)
        off = score_map(disc_map(row, "L5-S1", shape, scale), truth.levels(row.key), "L4-5", (128, 100), row.key)
        assert on["hit"] and on["disc_hit"] and on["spine_hit"]
        assert not off["hit"] and off["spine_hit"]
        assert on["energy"] > 0.6 and off["energy"] < 0.3
        assert on["energy"] / on["energy_chance"] > 10
        assert 0 < on["chance"] < 0.2 and on["energy_chance"] == on["chance"]


def test_a_flat_map_scores_chance_and_an_empty_map_nothing(phantom: Path) -> None:
    truth = PhantomTruth(phantom, samples(phantom))
    key = read_truth(phantom)["key"].iloc[0]
    flat = score_map(np.ones((128, 100), np.float32), truth.levels(key), "L3-4", (128, 100), key)
    assert flat["energy"] == pytest.approx(flat["energy_chance"])
    empty = score_map(np.zeros((128, 100), np.float32), truth.levels(key), "L3-4", (128, 100), key)
    assert empty["energy"] == 0.0
    with pytest.raises(HnpError, match="does not keep the aspect"):
        score_map(np.ones((128, 128), np.float32), truth.levels(key), "L3-4", (128, 100), key)


def test_only_visible_true_positives_are_counted(phantom: Path, tmp_path: Path) -> None:
    """False positives, images under the threshold and levels whose sign the truth marks invisible are left out;
    the figures are given per level and per view."""
    truth_table = read_truth(phantom).head(6)
    rows = []
    for _, row in truth_table.iterrows():
        np.save(tmp_path / f"{row.key}.npy", disc_map(row, "L4-5", (128, 100)))
        rows.append({"key": row.key, "view": row.view, "level": "L4-5", "rank": len(rows) + 1, "probability": 0.9,
                     "label": 1, "heatmap": f"{row.key}.npy"})
    index = pd.DataFrame(rows)
    index.loc[1, "label"] = 0  # a false positive
    index.loc[2, "probability"] = 0.4  # under the threshold
    image_rows = truth_table["row"].tolist()
    sign_only_at_l1 = with_signs_shown(phantom, tmp_path / "l1", {(row, "L1-2") for row in image_rows})
    assert counted_images(index, dict.fromkeys(LEVELS, 0.5), PhantomTruth(sign_only_at_l1, samples(phantom))).empty
    # the film of image 3 does not show its L4-5 sign (it shows one at L3-4)
    shown = {(row, "L4-5") for row in image_rows if row != image_rows[3]} | {(image_rows[3], "L3-4")}
    hidden_in_3 = with_signs_shown(phantom, tmp_path / "l45", shown)
    truth = PhantomTruth(hidden_in_3, samples(phantom))
    counted = counted_images(index, dict.fromkeys(LEVELS, 0.5), truth)
    assert counted["key"].tolist() == index["key"].drop([1, 2, 3]).tolist()
    result = summarise(score_maps(counted, truth, tmp_path))
    assert result["overall"]["n"] == 3 and result["overall"]["hit_rate"] == 1.0
    assert result["levels"]["L4-5"]["n"] == 3 and result["levels"]["L1-2"]["n"] == 0
    assert sum(v["n"] for v in result["views"].values()) == 3
    assert set(result["views"]) == set(counted["view"])
    assert "**100.0%**" in pointing_markdown(result) and "| View |" in pointing_markdown(result)


def test_on_the_easy_phantom_every_herniation_shows_in_every_film(phantom: Path) -> None:
    """Visibility is read per image from truth_signs.parquet and lands on the right shard key: on `easy` every
    herniated level shows a sign in every film (and a few healthy ones an osteophyte of age), row by row, even with
    the truth table's rows shuffled."""
    manifest = pd.read_parquet(phantom.parent / "manifest.parquet")
    truth = PhantomTruth(phantom, samples(phantom))
    keys = read_truth(phantom)["key"]
    shown = np.array([[truth.levels(key)[level].visible for level in LEVELS] for key in keys])
    herniated = manifest[list(LEVEL_COLUMNS)].to_numpy() == 1
    assert shown[herniated].all() and shown[~herniated].mean() < 0.2 and 0 < herniated.mean() < 1
    shuffled = phantom.parent.parent / "shuffled"
    shuffled.mkdir(exist_ok=True)
    pd.read_parquet(phantom).sample(frac=1.0, random_state=0).to_parquet(shuffled / "truth.parquet")
    shutil.copy(phantom.parent / "truth_signs.parquet", shuffled / "truth_signs.parquet")
    again = PhantomTruth(shuffled / "truth.parquet", samples(phantom))
    for key in keys:
        assert again.levels(key) == truth.levels(key)


def test_truth_without_its_sign_table_is_refused(phantom: Path, tmp_path: Path) -> None:
    shutil.copy(phantom, tmp_path / "truth.parquet")
    with pytest.raises(HnpError, match="truth_signs.parquet: no such file"):
        PhantomTruth(tmp_path / "truth.parquet", samples(phantom))


def test_a_truth_table_of_the_old_spelling_is_refused_by_name(tmp_path: Path) -> None:
    old = pd.DataFrame({"view": ["AP"], "height": [128], "width": [100], "L1_2_x": [50.0], "L1_2_y": [20.0]})
    old.to_parquet(tmp_path / "truth.parquet")
    with pytest.raises(HnpError, match=r"truth.parquet: not a phantom truth.parquet \(missing row, image_path"):
        read_truth(tmp_path / "truth.parquet")


def test_truth_of_another_phantom_is_refused(phantom: Path) -> None:
    with pytest.raises(HnpError, match="view in the shards"):
        PhantomTruth(phantom, samples(phantom).assign(view="OTHER"))
    with pytest.raises(HnpError, match="no truth row for sample r9999999"):
        PhantomTruth(phantom, pd.concat([samples(phantom), samples(phantom).head(1).assign(key="r9999999")]))


class CheckerModel(torch.nn.Module):
    """Its evidence is the fine checker pattern inside one box: logit = 10 x (mean |horizontal step| there) - 8.
    Imputation (a local mean) flattens the pattern wherever it fills a pixel of the box, and nowhere else."""

    box = (slice(20, 36), slice(10, 30))

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patch = images[:, 0, self.box[0], self.box[1]]
        logit = 10 * (patch[:, :, 1:] - patch[:, :, :-1]).abs().mean(dim=(1, 2)) * self.weight - 8
        return torch.stack([logit] * 5, dim=1)


def test_deletion_tells_the_evidence_from_elsewhere() -> None:
    """A map on the evidence drops the probability more than random pixels do; a map that ranks the evidence last
    drops it less."""
    images = torch.full((3, 1, 64, 64), 0.2)
    ys, xs = np.mgrid[0:16, 0:20]
    images[:, 0, CheckerModel.box[0], CheckerModel.box[1]] = torch.from_numpy((ys + xs) % 2).float()
    on_box = torch.zeros(3, 64, 64)
    on_box[:, CheckerModel.box[0], CheckerModel.box[1]] = 1.0
    model = CheckerModel().eval()
    faithful = deletion_scores([model], "levels", images, on_box, [0, 0, 0])
    backwards = deletion_scores([model], "levels", images, 1.0 - on_box, [0, 0, 0])
    assert (faithful["gap"] > 0.1).all() and (faithful["shifted_gap"] > 0.1).all()
    assert deletion_summary(faithful)["faithful"]
    assert (backwards["drop_map"].abs() < 1e-6).all() and (backwards["gap"] < 0).all()
    assert not deletion_summary(backwards)["faithful"]
    assert faithful["probability"].iloc[0] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", num_classes=5, in_chans=1).eval()


def test_randomized_copy_redraws_every_weight(small_model: torch.nn.Module) -> None:
    trained = copy.deepcopy(small_model)
    with torch.no_grad():  # "training" moved every weight and statistic off its initial value
        for tensor in trained.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.1 + 0.1 * torch.rand_like(tensor))
    clone = randomized_copy(trained, seed=1)
    for (name, old), new in zip(trained.state_dict().items(), clone.state_dict().values(), strict=True):
        if old.is_floating_point():
            assert not torch.isclose(old, new).any(), name
    assert torch.equal(randomized_copy(trained, seed=1).conv_stem.weight, clone.conv_stem.weight)
    assert not clone.training and trained.conv_stem.weight is not clone.conv_stem.weight


def test_sanity_check_flags_a_map_that_ignores_the_model(small_model: torch.nn.Module) -> None:
    """A map that follows the image (not the weights) is flagged; LayerCAM of a model against the same model
    with re-drawn weights is not."""
    images = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    image_map = images[:, 0] / images[:, 0].amax()
    flagged = sanity_summary(rank_correlations(image_map, image_map))
    assert flagged["flagged"] and flagged["median_rho"] == pytest.approx(1.0)
    cam = ClassActivationMap(small_model, "layercam", ["blocks.1"])
    other = ClassActivationMap(randomized_copy(small_model, seed=7), "layercam", ["blocks.1"])
    rhos = rank_correlations(cam(images, 2), other(images, 2))
    assert np.median(rhos) < SANITY_MAX_RHO and not sanity_summary(rhos)["flagged"]
    assert rank_correlations(torch.zeros(1, 8, 8), torch.rand(1, 8, 8)).tolist() == [0.0]


def test_sections_json_and_figure(phantom: Path, tmp_path: Path) -> None:
    truth_table = read_truth(phantom).head(3)
    truth = PhantomTruth(phantom, samples(phantom))
    rows = []
    for shift, (_, row) in enumerate(truth_table.iterrows()):
        heat = disc_map(row, LEVELS[2 + shift], (128, 100))
        gray = np.full((128, 100), 90, np.uint8)
        (tmp_path / "L3-4").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "L3-4" / f"{row.key}.png"), overlay(gray, heat))
        np.save(tmp_path / f"{row.key}.npy", heat)
        rows.append({"key": row.key, "view": row.view, "level": "L3-4", "rank": shift + 1, "probability": 0.9,
                     "label": 1, "file": f"L3-4/{row.key}.png", "heatmap": f"{row.key}.npy"})
    scored = score_maps(pd.DataFrame(rows), truth, tmp_path)
    assert scored["hit"].tolist() == [True, False, False]
    level_figure(scored, truth, tmp_path, tmp_path / "L3-4.png", "layercam at blocks.2")
    assert (tmp_path / "L3-4.png").read_bytes().startswith(b"\x89PNG")
    deletion = {"n": 3, "probability": 0.9, "drop_map": 0.3, "drop_random": 0.1, "drop_shifted": 0.2, "gap": 0.2,
                "shifted_gap": 0.1, "map_wins": 1.0, "faithful": True}
    sanity = {"n": 3, "median_rho": 0.12, "mean_rho": 0.1, "flagged": False}
    found = Explanations(index=pd.DataFrame(rows), description="layercam at blocks.2", top=3,
                         pointing=summarise(scored), figures={"L3-4": "explanations/L3-4.png"},
                         deletion={"fractions": [0.05, 0.1], "overall": deletion, "levels": {"L3-4": deletion}},
                         sanity={"overall": sanity, "levels": {"L3-4": sanity}})
    sections = explanation_sections(found)
    assert list(sections) == ["Grad-CAM", "Pointing game (phantom ground truth)",
                              "Faithfulness and randomization checks"]
    assert "**layercam at blocks.2**" in sections["Grad-CAM"]
    assert "![L3-4](explanations/L3-4.png)" in sections["Pointing game (phantom ground truth)"]
    assert "**33.3%**" in sections["Pointing game (phantom ground truth)"]
    assert "| L3-4 | 3 | 0.900 | 0.300 | 0.100 | 0.200 | 100% | yes | 0.12 | passed |" in checks_markdown(found)
    document = explanation_json(found)
    assert document["pointing"]["levels"]["L1-2"]["hit_rate"] is None  # NaN (no image) as null
    assert document["maps"] == "layercam at blocks.2"
