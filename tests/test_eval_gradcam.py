from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch

from eval.gradcam import GradCAM, bagged_gradcam, export_gradcam, last_conv_layer, select_top, to_image_resolution
from hnp.config import DataConfig
from hnp.errors import HnpError
from pipeline.transforms import resize_square


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", num_classes=5, in_chans=1).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 1, 96, 96, generator=torch.Generator().manual_seed(1))


def test_default_layer_is_the_last_convolution(model: torch.nn.Module) -> None:
    assert last_conv_layer(model) == "conv_head"
    assert GradCAM(model).layer_name == "conv_head"
    with pytest.raises(HnpError, match="no layer 'head_conv'"):
        GradCAM(model, "head_conv")


@pytest.mark.parametrize("layer", [None, "blocks.3"])
def test_heatmaps_have_input_resolution_and_unit_range(model, images, layer) -> None:
    heat = GradCAM(model, layer)(images, target=3)
    assert heat.shape == (3, 96, 96)
    assert torch.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.flatten(1).amax(dim=1).gt(0.99).any()


def test_heatmap_changes_with_the_target_level(model, images) -> None:
    cam = GradCAM(model, "blocks.3")
    maps = [cam(images, target=level) for level in range(5)]
    assert all(not torch.allclose(maps[0], other, atol=1e-3) for other in maps[1:])
    per_image = cam(images, target=[0, 4, 2])
    assert torch.allclose(per_image[1], maps[4][1], atol=1e-5)


def test_gradcam_works_inside_no_grad_and_autocast(model, images) -> None:
    expected = GradCAM(model)(images, target=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = GradCAM(model)(images, target=1)
    assert torch.allclose(got, expected, atol=1e-5)


def test_bagged_heatmap_is_the_scaled_mean(model, images) -> None:
    other = timm.create_model("test_efficientnet", num_classes=5, in_chans=1).eval()
    cams = [GradCAM(model), GradCAM(other)]
    bagged = bagged_gradcam(cams, images, 2)
    mean = (cams[0](images, 2) + cams[1](images, 2)) / 2
    assert torch.allclose(bagged, mean / mean.flatten(1).amax(1)[:, None, None], atol=1e-5)


@pytest.mark.parametrize("resize", ["stretch", "pad"])
@pytest.mark.parametrize("shape", [(120, 80), (61, 120), (400, 512)])
def test_heatmap_maps_back_onto_the_radiograph(resize: str, shape: tuple[int, int]) -> None:
    """A mark sent through the pipeline's resize and back through to_image_resolution lands where it was."""
    image = np.zeros(shape, np.uint8)
    y, x = shape[0] // 3, shape[1] * 2 // 3
    image[y - 2 : y + 3, x - 2 : x + 3] = 255
    square = resize_square(image, DataConfig(image_size=64, resize=resize, clahe=False)).astype(np.float32) / 255
    full = to_image_resolution(square, *shape, resize)
    assert full.shape == shape and full.dtype == np.float32
    iy, ix = np.mgrid[0 : shape[0], 0 : shape[1]]
    centroid = ((full * iy).sum() / full.sum(), (full * ix).sum() / full.sum())
    assert centroid == pytest.approx((y, x), abs=max(shape) / 64 + 1)


def test_select_top_per_level_breaks_ties_by_key() -> None:
    images = pd.DataFrame({
        "key": ["r3", "r1", "r2", "r4"], "patient": ["a", "b", "c", "d"],
        "prob_L1-2": [0.9, 0.5, 0.5, 0.1], "label_L1-2": [1, 0, 1, 0],
        "prob_L4-5": [0.1, 0.2, 0.3, 0.8], "label_L4-5": [0, 0, 1, 1],
    })
    top = select_top(images, {"L1-2": 0, "L4-5": 3}, k=3)
    assert top[top.level == "L1-2"]["key"].tolist() == ["r3", "r1", "r2"]
    assert top[top.level == "L4-5"]["key"].tolist() == ["r4", "r2", "r1"]
    assert top["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert top[top.level == "L4-5"]["output"].unique().tolist() == [3]


def test_export_writes_overlays_heatmaps_and_index(model, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grays = {f"r{i}": rng.integers(0, 255, (70 + i, 50), dtype=np.uint8) for i in range(3)}

    def load(key: str) -> tuple[np.ndarray, np.ndarray]:
        gray = grays[key]
        return gray, cv2.resize(gray, (64, 64)).astype(np.float32)[None] / 255.0

    selection = pd.DataFrame({
        "key": ["r0", "r1", "r2", "r1"], "patient": ["a", "b", "c", "b"], "level": ["L1-2"] * 3 + ["L5-S1"],
        "output": [0, 0, 0, 4], "rank": [1, 2, 3, 1], "probability": [0.9, 0.8, 0.7, 0.6], "label": [1, 0, 1, 1],
    })
    index = export_gradcam([GradCAM(model)], selection, load, tmp_path, resize="stretch", batch_size=3)
    assert pd.read_csv(tmp_path / "index.csv").columns.tolist() == [
        "key", "patient", "level", "rank", "probability", "label", "file", "heatmap"]
    assert len(index) == 4
    for row in index.itertuples():
        heat = np.load(tmp_path / row.heatmap)
        assert heat.dtype == np.float32 and heat.shape == grays[row.key].shape
        assert 0.0 <= heat.min() and heat.max() <= 1.0
        assert cv2.imread(str(tmp_path / row.file)).shape == (*grays[row.key].shape, 3)
    assert index.loc[3, "file"] == "L5-S1/0001_r1.png"
