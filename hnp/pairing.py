"""The paper's X-ray/MRI pairing rule: an MRI read labels an X-ray taken at most MAX_XRAY_MRI_DAYS before or after it
("the interval between the X-ray and MRI test was determined within 3 months"). One owner for `hnp validate`, which
excludes manifest rows that break it, and `hnp import-dicom`, which joins MRI reads to X-rays with it.

    gap = xray_mri_gap_days(table["xray_date"], table["mri_date"])
    excluded = too_far_apart(gap)
"""

from __future__ import annotations

import pandas as pd

from hnp.schema import MAX_XRAY_MRI_DAYS


def xray_mri_gap_days(xray_dates: pd.Series, mri_dates: pd.Series) -> pd.Series:
    """Whole days between each X-ray and its MRI, whichever came first; NaN where a date is missing.

    Args:
        xray_dates, mri_dates: datetime64 series of the same index.
    """
    return (mri_dates - xray_dates).abs().dt.days


def too_far_apart(gap_days: pd.Series) -> pd.Series:
    """True where an X-ray and its MRI are more than MAX_XRAY_MRI_DAYS apart; a missing gap (NaN) is not.

    Args:
        gap_days: from `xray_mri_gap_days`.
    """
    return gap_days > MAX_XRAY_MRI_DAYS
