"""Grad-CAM of a fusion model's fused prediction (eval/fusion_explain.py): a map per film of the fused logit, checked
against autograd by hand, and each film's leave-one-out drop against the model run without that film. What
`hnp eval` of a fusion run writes of them: tests/test_fusion_eval.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.runs import tiny_config

from eval.fusion_explain import StudyClassifier, film_shares
from eval.gradcam import ClassActivationMap
from hnp.config import ModelConfig
from train.fusion import build_fusion_model
from train.model import FoldCheckpoint

LAYER = "blocks.2"


def _fusion_model(seed: int, mode: str = "attention") -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(name="test_efficientnet", pretrained="none", fusion=mode, fusion_dim=16)
    return build_fusion_model(cfg, channels=1).eval()


def _films(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 64, 64, generator=torch.Generator().manual_seed(seed))


def hirescam_by_hand(model: torch.nn.Module, films: torch.Tensor, views: torch.Tensor, output: int) -> torch.Tensor:
    """HiResCAM of the fused logit for every film: relu(sum_c A * dlogit/dA) at the layer, upsampled bilinearly to
    the input and scaled to [0, 1] per film, from plain autograd."""
    captured = {}
    layer = dict(model.named_modules())[f"backbone.{LAYER}"]
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    try:
        logit = model(films, views[None], torch.ones(1, len(films), dtype=torch.bool))[0, output]
    finally:
        handle.remove()
    activations = captured["a"]
    (gradients,) = torch.autograd.grad(logit, activations)
    cam = (activations * gradients).sum(dim=1).clamp_min(0)[:, None]  # (N, 1, h, w)
    cam = F.interpolate(cam, size=films.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    cam = cam - cam.flatten(1).amin(dim=1)[:, None, None]
    return cam / cam.flatten(1).amax(dim=1).clamp_min(1e-7)[:, None, None]


def test_each_films_map_is_the_gradient_of_the_fused_logit_through_the_pooling() -> None:
    model, films, views = _fusion_model(0), _films(3), torch.tensor([0, 1, 4])
    cam = ClassActivationMap(StudyClassifier(model, views), "hirescam", [f"model.backbone.{LAYER}"])
    maps = cam(films, 3)
    expected = hirescam_by_hand(model, films, views, 3)
    assert maps.shape == (3, 64, 64)
    torch.testing.assert_close(maps, expected, atol=2e-3, rtol=0)
    # the pooling mixes the films: another film's presence changes this film's map
    alone = ClassActivationMap(StudyClassifier(model, views[:1]), "hirescam", [f"model.backbone.{LAYER}"])(films[:1], 3)
    assert (alone[0] - maps[0]).abs().max() > 0.05


def test_a_films_drop_is_the_fused_probability_lost_without_it() -> None:
    models = [_fusion_model(seed) for seed in (1, 2)]
    folds = [FoldCheckpoint(model=m, config=tiny_config(), fold=k, epoch=1, val_auc={}, thresholds={}, dataset="")
             for k, m in enumerate(models)]
    films, views = _films(3, seed=5), torch.tensor([1, 4, 5])
    weights, drops = film_shares(folds, films, views, output=2)
    mask = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        def fused(m: torch.nn.Module, keep: list[int]) -> float:
            return float(torch.sigmoid(m(films[keep], views[keep][None], mask[:, : len(keep)]))[0, 2])
        for f in range(3):
            keep = [k for k in range(3) if k != f]
            expected = np.mean([fused(m, [0, 1, 2]) - fused(m, keep) for m in models])
            assert drops[f] == pytest.approx(expected, abs=1e-5)
        expected_weights = torch.stack([m.fuse(films, views[None], mask).weights[0] for m in models]).mean(0)
    np.testing.assert_allclose(weights, expected_weights.numpy(), atol=1e-6)
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    _, single = film_shares(folds, films[:1], views[:1], output=2)
    assert np.isnan(single).all()  # the study's only film: nothing to compare with
