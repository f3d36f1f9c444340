"""pipeline stage of hnp-xray: shards -> preprocessed batches on the training device (DALI, or torch + OpenCV).

    from pipeline import build_loader, split_shards
    loader = build_loader(cfg.data, split_shards("shards", ["fold0"]), training=False, device="cuda:0")

The names are imported when first used: `hnp --help` and `hnp validate` import this package's CLI module, and
torch (which the loaders and transforms need) takes seconds and half a gigabyte to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Loader": "pipeline.loader", "build_loader": "pipeline.loader", "preprocess": "pipeline.transforms",
            "split_shards": "pipeline.dataset"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
