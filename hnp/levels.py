"""The lumbar levels, views and label columns, in the one order used everywhere (tensors, files, tables)."""

from __future__ import annotations

LEVELS: tuple[str, ...] = ("L1-2", "L2-3", "L3-4", "L4-5", "L5-S1")
# Column-safe spelling of LEVELS, used in manifests and data frames.
LEVEL_COLUMNS: tuple[str, ...] = ("L1_2", "L2_3", "L3_4", "L4_5", "L5_S1")
VIEWS: tuple[str, ...] = ("AP", "LAT", "OBL_L", "OBL_R", "FLEX", "EXT", "OTHER")
SPLITS: tuple[str, ...] = ("train", "test")

# Per-level HNP prevalence in the paper's training set (Table 1, all folds pooled).
PAPER_PREVALENCE: tuple[float, ...] = (0.031, 0.061, 0.112, 0.292, 0.249)
