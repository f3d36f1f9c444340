"""The lumbar levels, views and label columns, in the one order used everywhere (tensors, files, tables)."""

from __future__ import annotations

from hnp.errors import HnpError

LEVELS: tuple[str, ...] = ("L1-2", "L2-3", "L3-4", "L4-5", "L5-S1")
# Column-safe spelling of LEVELS, used in manifests and data frames.
LEVEL_COLUMNS: tuple[str, ...] = ("L1_2", "L2_3", "L3_4", "L4_5", "L5_S1")
VIEWS: tuple[str, ...] = ("AP", "LAT", "OBL_L", "OBL_R", "FLEX", "EXT", "OTHER")
SPLITS: tuple[str, ...] = ("train", "test")

# Per-level HNP prevalence in the paper's training set (Table 1, all folds pooled).
PAPER_PREVALENCE: tuple[float, ...] = (0.031, 0.061, 0.112, 0.292, 0.249)

# Views as the fusion model sees them (an embedding row each): VIEWS in order, then one for a film without a view.
NO_VIEW_ID = len(VIEWS)
VIEW_SLOTS = len(VIEWS) + 1


def view_id(view: str | None) -> int:
    """The model's id of a view: its index in VIEWS, or NO_VIEW_ID for None (the manifest gave none)."""
    if view is None:
        return NO_VIEW_ID
    if view not in VIEWS:
        raise HnpError(f"view {view!r} is not one of {', '.join(VIEWS)}")
    return VIEWS.index(view)
