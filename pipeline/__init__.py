"""pipeline stage of hnp-xray: shards -> preprocessed batches on the training device (DALI, or torch + OpenCV).

    from pipeline import build_loader, split_shards
    loader = build_loader(cfg.data, split_shards("shards", ["fold0"]), training=False, device="cuda:0")
"""

from __future__ import annotations

from pipeline.dataset import split_shards
from pipeline.loader import Loader, build_loader
from pipeline.transforms import preprocess

__all__ = ["Loader", "build_loader", "preprocess", "split_shards"]
