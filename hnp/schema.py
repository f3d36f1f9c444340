"""The manifest contract (see DESIGN.md), as constants every stage imports. The shard contract is `hnp.shard_format`."""

from __future__ import annotations

from hnp.levels import LEVEL_COLUMNS

# Manifest (input of `hnp validate` / `hnp shard`), CSV or Parquet.
REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "image_path", "split", "age", *LEVEL_COLUMNS)
OPTIONAL_COLUMNS: tuple[str, ...] = ("view", "sex", "study_id", "xray_date", "mri_date")
AGE_RANGE: tuple[int, int] = (18, 120)
MAX_XRAY_MRI_DAYS = 90  # paper: X-ray and MRI within 3 months
