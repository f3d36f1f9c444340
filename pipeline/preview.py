"""What the model sees: a PNG grid of preprocessed inputs with their labels, and the tensors as .npy.

    write_preview(cfg.data, split_shards("shards", ["fold0"]), out=Path("preview"), count=16)

Writes `<out>/preview.png` (one tile per image: the first channel, denormalized to [0, 1]; its key, level labels,
"any" and age as the title), `<out>/images.npy` (float32 (N, C, S, S), exactly the loader's output),
`<out>/labels.npy` (float32 (N, 7), hnp.shard_format.LABEL_VECTOR order) and `<out>/keys.txt`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hnp.config import DataConfig
from hnp.levels import LEVELS
from hnp.shard_format import LABEL_VECTOR, join_label_vector, split_label_vector
from pipeline.loader import build_loader
from pipeline.transforms import channel_stats


def collect_batches(cfg: DataConfig, shards: Sequence[Path], count: int, training: bool) -> dict[str, object]:
    """The first `count` samples the loader yields, joined: {"image": (N, C, S, S), "vector": (N, 7) label vectors,
    "key": [...]}.

    Args:
        cfg: the data section of the config (its loader, size and preprocessing).
        shards: tar paths.
        count: how many samples to take.
        training: take them from the training loader (shuffled, augmented if enabled) instead of the evaluation one.
    """
    images, vectors, keys = [], [], []
    loader = build_loader(cfg, shards, training=training)
    for batch in loader:
        images.append(batch["image"].cpu())
        vectors.append(join_label_vector(*(batch[field].cpu().numpy() for field in ("labels", "any", "age"))))
        keys.extend(batch["key"])
        if len(keys) >= count:
            break
    image = torch.cat(images)[:count].numpy() if images else np.zeros((0, cfg.channels, cfg.image_size,
                                                                        cfg.image_size), np.float32)
    vector = np.concatenate(vectors)[:count] if vectors else np.zeros((0, len(LABEL_VECTOR)), np.float32)
    return {"image": image, "vector": vector, "key": keys[:count]}


def denormalize(image: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """The first channel of a (C, S, S) model input back in [0, 1] for display."""
    mean, std = channel_stats(cfg)
    return np.clip(image[0] * std[0] + mean[0], 0.0, 1.0)


def tile_title(key: str, vector: np.ndarray) -> str:
    """`r0000042 age 57` over `L4-5 L5-S1` (the positive levels) or `no HNP`."""
    fields = split_label_vector(vector[None])
    positive = [level for level, flag in zip(LEVELS, fields["labels"][0], strict=True) if flag >= 0.5]
    return f"{key}  age {fields['age'][0]:.0f}\n{' '.join(positive) if positive else 'no HNP'}"


def write_grid(path: Path, images: np.ndarray, vectors: np.ndarray, keys: list[str], cfg: DataConfig) -> None:
    """A PNG grid of the inputs, as near square as the count allows."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    columns = max(1, math.ceil(math.sqrt(len(keys))))
    rows = max(1, math.ceil(len(keys) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.1 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, vector, key in zip(axes.flat, images, vectors, keys, strict=False):
        axis.imshow(denormalize(image, cfg), cmap="gray", vmin=0.0, vmax=1.0)
        axis.set_title(tile_title(key, vector), fontsize=7)
    figure.suptitle(f"{cfg.image_size} px, {cfg.channels} channel(s), resize {cfg.resize}, "
                    f"CLAHE {'clip ' + str(cfg.clahe_clip_limit) if cfg.clahe else 'off'}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_preview(cfg: DataConfig, shards: Sequence[Path], out: Path, count: int = 16,
                  training: bool = False) -> dict[str, Path]:
    """Write the preview files (see the module docstring) and return their paths by name.

    Args:
        cfg: the data section of the config.
        shards: tar paths of the split to look at.
        out: output folder (created).
        count: number of samples.
        training: preview the training transform (augmentation on when enabled) instead of evaluation's.
    """
    out.mkdir(parents=True, exist_ok=True)
    taken = collect_batches(cfg, shards, count, training)
    paths = {"grid": out / "preview.png", "images": out / "images.npy", "labels": out / "labels.npy",
             "keys": out / "keys.txt"}
    np.save(paths["images"], taken["image"])
    np.save(paths["labels"], taken["vector"])
    paths["keys"].write_text("".join(f"{key}\n" for key in taken["key"]))
    write_grid(paths["grid"], taken["image"], taken["vector"], taken["key"], cfg)
    return paths
