"""Checks of the maps that need no ground truth, so they run on hospital data too.

Deletion (Petsiuk et al., "RISE", BMVC 2018, https://arxiv.org/abs/1806.07421, with ROAD's imputation: Rong et
al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022,
https://arxiv.org/abs/2202.00449): the top-ranked share of the input's pixels by the map is removed and filled
in by pytorch-grad-cam's `NoisyLinearImputer` (each removed pixel the mean of its neighbours, plus a little
noise, so the shape of the hole tells the model little). If the map marks what the model uses, the level's
bagged probability falls further than when the same number of random pixels is removed, and further than when a
hole of the same shape is cut elsewhere (the map rolled by a random offset of a quarter to three quarters of the
image each way: scattered random pixels are easier to fill in than one compact hole, so this control keeps the
shape and changes only the place). Per image, each drop is averaged over DELETE_FRACTIONS; the gap is (drop with
the map's pixels) - (drop with random pixels), the shifted gap the same against the moved hole.

Randomization (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, https://arxiv.org/abs/1810.03292):
the same images are explained again by the same method and layers of models whose weights are all re-drawn
(every module's `reset_parameters`, seeded). A map that explains the model must change: the Spearman rank
correlation between the trained and the randomized map, per image, is reported, and a method whose median
correlation is at least SANITY_MAX_RHO is flagged (it shows the image, not the model). A constant map (no
ranking) counts as correlation 0.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from scipy.stats import spearmanr

from hnp.bars import progress_bar
from train.model import outputs_to_predictions

DELETE_FRACTIONS = (0.05, 0.1, 0.2)
SANITY_MAX_RHO = 0.5
MapFunction = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]  # (images, outputs) -> (B, H, W) maps


@torch.no_grad()
def bagged_probability(models: Sequence[torch.nn.Module], images: torch.Tensor, task: str) -> torch.Tensor:
    """The folds' mean probability per target, (B, targets), float32 on the CPU, as `hnp eval` bags it."""
    device = next(models[0].parameters()).device
    images = images.to(device=device, dtype=torch.float32)
    return torch.stack([outputs_to_predictions(model(images), task)[0] for model in models]).mean(dim=0).cpu()


def deletion_scores(models: Sequence[torch.nn.Module], task: str, images: torch.Tensor, maps: torch.Tensor,
                    outputs: Sequence[int], seed: int = 0) -> pd.DataFrame:
    """Per image: the probability before, and its mean drop when the map's top pixels or random ones are removed.

    Args:
        models: the fold models (eval mode).
        task: their task (`train.model.outputs_to_predictions`).
        images: (B, C, H, W) model inputs.
        maps: (B, H, W) maps at the input resolution.
        outputs: the output index each map explains.
        seed: the random pixels, the ranking's tie-breaks and the imputer's noise.
    """
    rng = np.random.default_rng(seed)
    imputer = NoisyLinearImputer()
    rows = np.arange(len(images))
    before = bagged_probability(models, images, task)[rows, outputs].numpy()
    drops = {kind: np.zeros(len(images)) for kind in ("map", "random", "shifted")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for fraction, kind in progress_bar(list(itertools.product(DELETE_FRACTIONS, drops)), desc="deletion check",
                                   unit="step", leave=False, disable=len(images) < 16):
            removed = torch.stack([imputer(image.cpu(), _keep_mask(heat.numpy(), fraction, kind, rng))
                                   for image, heat in zip(images, maps, strict=True)])
            after = bagged_probability(models, removed, task)[rows, outputs].numpy()
            drops[kind] += (before - after) / len(DELETE_FRACTIONS)
    return pd.DataFrame({"probability": before, "drop_map": drops["map"], "drop_random": drops["random"],
                         "drop_shifted": drops["shifted"], "gap": drops["map"] - drops["random"],
                         "shifted_gap": drops["map"] - drops["shifted"]})


def _keep_mask(heat: np.ndarray, fraction: float, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """(H, W) float mask, 1 = keep: removes exactly round(fraction * pixels), the map's highest (ties broken at
    random, so a map with large flat areas still removes the stated share), random ones, or the highest of the
    map rolled by a random offset ("shifted")."""
    count = int(round(fraction * heat.size))
    jitter = rng.random(heat.size)
    if kind == "shifted":
        offset = [int(rng.integers(side // 4, 3 * side // 4 + 1)) for side in heat.shape]
        heat = np.roll(heat, offset, axis=(0, 1))
    order = np.argsort(jitter) if kind == "random" else np.lexsort((jitter, -heat.ravel()))
    keep = np.ones(heat.size, np.float32)
    keep[order[:count]] = 0.0
    return torch.from_numpy(keep.reshape(heat.shape))


def randomized_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of the model with every parameter re-drawn by its module's own initializer (eval mode)."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()  # BatchNorm's also resets its running statistics
    return clone.eval()


def rank_correlations(trained: torch.Tensor, randomized: torch.Tensor) -> np.ndarray:
    """Spearman's rho between paired maps (B, H, W), one per image; a constant map counts as 0."""
    rhos = []
    for a, b in zip(trained.numpy(), randomized.numpy(), strict=True):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            rhos.append(0.0)
            continue
        rhos.append(float(spearmanr(a.ravel(), b.ravel()).statistic))
    return np.asarray(rhos)


def deletion_summary(scores: pd.DataFrame) -> dict[str, float | int]:
    """Means of one group's deletion scores, the share of images where the map's pixels mattered more than random
    ones, and the verdict: faithful when the map's pixels drop the probability more than both controls on average."""
    n = len(scores)
    mean = {column: float(scores[column].mean()) if n else float("nan")
            for column in ("probability", "drop_map", "drop_random", "drop_shifted", "gap", "shifted_gap")}
    return {"n": n, **mean, "map_wins": float((scores["gap"] > 0).mean()) if n else float("nan"),
            "faithful": bool(n and mean["gap"] > 0 and mean["shifted_gap"] > 0)}


def sanity_summary(rhos: np.ndarray) -> dict[str, float | int | bool]:
    """Median and mean rank correlation with the randomized models' maps, and the flag."""
    if not len(rhos):
        return {"n": 0, "median_rho": float("nan"), "mean_rho": float("nan"), "flagged": False}
    median = float(np.median(rhos))
    return {"n": len(rhos), "median_rho": median, "mean_rho": float(rhos.mean()), "flagged": median >= SANITY_MAX_RHO}
