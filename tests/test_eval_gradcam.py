from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch

from eval.gradcam import (
    METHODS,
    ClassActivationMap,
    bagged_maps,
    export_gradcam,
    last_conv_layer,
    map_sizes,
    resolve_layers,
    select_top,
    to_image_resolution,
)
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


def reference_cam(model: torch.nn.Module, layer: str, images: torch.Tensor, output: int, method: str) -> np.ndarray:
    """Grad-CAM / HiResCAM written out from the papers, independent of pytorch-grad-cam: the layer's activations A
    and the gradient G of the output's logit; Grad-CAM = ReLU(sum_k mean_xy(G_k) A_k), HiResCAM = ReLU(sum_k G_k
    A_k); each map scaled to [0, 1], resized bilinearly to the input (OpenCV, as the overlays are) and scaled to
    [0, 1] again (what averaging over a single layer leaves)."""
    captured = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(images)
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits[:, output].sum(), captured[0])
    weights = grads.mean(dim=(2, 3), keepdim=True) if method == "gradcam" else grads
    cams = torch.relu((weights * captured[0]).sum(dim=1)).detach().numpy()
    maps = []
    for cam in cams:
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        cam = cv2.resize(cam, images.shape[-1:-3:-1], interpolation=cv2.INTER_LINEAR)
        maps.append((cam - cam.min()) / (cam.max() - cam.min() + 1e-7))
    return np.stack(maps)


def test_layers_are_picked_by_their_map_resolution(model: torch.nn.Module) -> None:
    assert last_conv_layer(model) == "conv_head"
    assert map_sizes(model, ["blocks.2", "conv_head"], (1, 128, 128)) == {"blocks.2": (16, 16), "conv_head": (4, 4)}
    assert resolve_layers(model, "auto", (1, 128, 128)) == ("blocks.2",)  # the deepest with >= 16 cells a side
    assert resolve_layers(model, None, (1, 256, 256)) == ("blocks.3",)
    assert resolve_layers(model, "auto", (1, 128, 128), min_cells=4) == ("conv_head",)
    assert resolve_layers(model, "last-conv", (1, 128, 128)) == ("conv_head",)
    assert resolve_layers(model, "blocks.1, blocks.2", (1, 128, 128)) == ("blocks.1", "blocks.2")
    with pytest.raises(HnpError, match="no layer 'head_conv'"):
        resolve_layers(model, "head_conv", (1, 128, 128))
    with pytest.raises(HnpError, match="no layer of the model has 16 cells"):
        resolve_layers(model, "auto", (1, 16, 16))


@pytest.mark.parametrize(("method", "layer"), [("gradcam", "conv_head"), ("gradcam", "blocks.2"),
                                               ("hirescam", "blocks.2")])
def test_maps_match_an_independent_implementation(model, images, method: str, layer: str) -> None:
    got = ClassActivationMap(model, method, [layer])(images, target=3).numpy()
    expected = reference_cam(model, layer, images, 3, method)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("method", sorted(METHODS))
def test_maps_have_input_resolution_and_unit_range(model, images, method: str) -> None:
    heat = ClassActivationMap(model, method, ["blocks.2", "blocks.3"])(images, target=3)
    assert heat.shape == (3, 96, 96) and heat.dtype == torch.float32
    assert torch.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.flatten(1).amax(dim=1).gt(0.99).any()


def test_map_changes_with_the_target_level(model, images) -> None:
    cam = ClassActivationMap(model, "layercam", ["blocks.2"])
    maps = [cam(images, target=level) for level in range(5)]
    assert all(not torch.allclose(maps[0], other, atol=1e-3) for other in maps[1:])
    per_image = cam(images, target=[0, 4, 2])
    assert torch.allclose(per_image[1], maps[4][1], atol=1e-5)


def test_maps_leave_the_model_as_they_found_it(model, images) -> None:
    """Inside no_grad and autocast too; no hooks, gradients or weight changes are left behind."""
    before = {name: value.clone() for name, value in model.state_dict().items()}
    expected = ClassActivationMap(model, "hirescam", ["blocks.3"])(images, target=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = ClassActivationMap(model, "hirescam", ["blocks.3"])(images, target=1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(HnpError, match="unknown method 'scorecam'"):
        ClassActivationMap(model, "scorecam", ["blocks.3"])


def test_bagged_map_is_the_scaled_mean(model, images) -> None:
    other = timm.create_model("test_efficientnet", num_classes=5, in_chans=1).eval()
    cams = [ClassActivationMap(model, "layercam", ["blocks.2"]), ClassActivationMap(other, "layercam", ["blocks.2"])]
    bagged = bagged_maps(cams, images, 2)
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
    cams = [ClassActivationMap(model, "gradcam", ["conv_head"])]
    index = export_gradcam(cams, selection, load, tmp_path, resize="stretch", batch_size=3)
    assert pd.read_csv(tmp_path / "index.csv").columns.tolist() == [
        "key", "patient", "level", "rank", "probability", "label", "file", "heatmap"]
    assert len(index) == 4
    for row in index.itertuples():
        heat = np.load(tmp_path / row.heatmap)
        assert heat.dtype == np.float32 and heat.shape == grays[row.key].shape
        assert 0.0 <= heat.min() and heat.max() <= 1.0
        assert cv2.imread(str(tmp_path / row.file)).shape == (*grays[row.key].shape, 3)
    assert index.loc[3, "file"] == "L5-S1/0001_r1.png"
