"""Patient-grouped, label-stratified cross-validation folds, and the paper's Table 1 over them.

All radiographs of a patient land in one fold: images of one spine are near-duplicates for the model, and a
patient split across folds would leak into validation. Within that constraint the folds are balanced per
stratum, the patient's pattern of HNP levels (5 bits, e.g. L4-5 + L5-S1): each stratum's images are spread
evenly over the folds, so each fold's per-level prevalence matches the whole training set (Kim et al. 2022,
Table 1). The greedy assignment does what scikit-learn's StratifiedGroupKFold does for one class per group, at
a fraction of the cost: sklearn evaluates a standard deviation over all classes for every patient and fold,
about 1 s per 40k rows, 5 s of CPU at the paper's 180k against 0.3 s here, a quarter of a user's `hnp shard`
run, with folds no better balanced (tests/test_shard_folds.py measures both).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hnp.errors import HnpError
from hnp.levels import LEVEL_COLUMNS, LEVELS

_RARE = -1  # stratum of label patterns too rare to spread over the folds on their own


def assign_folds(patients: pd.Series, labels: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Fold index (0..folds-1) of every row, grouped by patient and stratified by the patient's level pattern.

    Patients are shuffled with the seed, then taken stratum by stratum, largest first, and each goes to the fold
    holding the fewest images of its stratum (ties: the fewest images in all, then the lowest fold). The result
    depends on the patients' identifiers, labels and the seed, not on the row order.

    Args:
        patients: patient identifier (or pseudonym) per row.
        labels: the 0/1 level columns (LEVEL_COLUMNS), same rows as `patients`.
        folds: number of folds (>= 2).
        seed: shuffles the patients before the balancing, so another seed gives another valid split.
    """
    names, owner = np.unique(patients.astype(str).to_numpy(), return_inverse=True)
    if len(names) < folds:
        raise HnpError(f"{folds} folds need at least {folds} training patients, the manifest has {len(names)}")
    images = np.bincount(owner, minlength=len(names))
    stratum = np.empty(len(names), dtype=np.int64)
    stratum[owner] = patient_strata(patients, labels, folds)  # one stratum per patient: it is theirs per row
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.lexsort((-images[order], stratum[order]))]  # stable: the shuffle breaks ties in size
    patient_fold = np.empty(len(names), dtype=np.int64)
    in_stratum: dict[int, list[int]] = {}
    in_fold = [0] * folds
    # A plain loop over ~36k patients: each step depends on the counts the previous ones left.
    for patient, group, size in zip(order.tolist(), stratum[order].tolist(), images[order].tolist(), strict=True):
        counts = in_stratum.setdefault(group, [0] * folds)
        fold = min(range(folds), key=lambda k: (counts[k], in_fold[k]))
        counts[fold] += size
        in_fold[fold] += size
        patient_fold[patient] = fold
    return patient_fold[owner]


def patient_strata(patients: pd.Series, labels: pd.DataFrame, folds: int) -> np.ndarray:
    """Per-row stratum: the patient's level pattern, with rare patterns merged so every stratum can be split.

    A patient's pattern is the OR of the labels of all their rows (5 bits in LEVELS order). Patterns held by
    fewer than `folds` patients fall back to the patient's number of positive levels, and what is still too rare
    joins one shared stratum (or, if even that is too small, the most common stratum).

    Args:
        patients: patient identifier per row.
        labels: the 0/1 level columns, same rows.
        folds: number of folds.
    """
    per_patient = labels[list(LEVEL_COLUMNS)].astype(np.int64).groupby(patients.to_numpy()).max()
    bits = per_patient.to_numpy() * (1 << np.arange(len(LEVEL_COLUMNS)))
    pattern = pd.Series(bits.sum(axis=1), index=per_patient.index)
    by_count = pd.Series(100 + per_patient.to_numpy().sum(axis=1), index=per_patient.index)
    pattern = _merge_rare(pattern, by_count, folds)
    pattern = _merge_rare(pattern, pd.Series(_RARE, index=pattern.index), folds)
    counts = pattern.value_counts()
    if counts.get(_RARE, folds) < folds:
        pattern[pattern == _RARE] = counts.index[0]
    return pattern.loc[patients.to_numpy()].to_numpy()


def _merge_rare(pattern: pd.Series, fallback: pd.Series, folds: int) -> pd.Series:
    counts = pattern.map(pattern.value_counts())
    return pattern.where(counts >= folds, fallback)


def table1(split_labels: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The paper's Table 1: for each split and level, images without HNP, with HNP and in all.

    Args:
        split_labels: split name -> its rows' level columns (LEVEL_COLUMNS).

    Returns:
        A frame indexed by (split, "No-HNP" | "HNP" | "Sum") with one column per level (LEVELS spelling).
    """
    blocks = {}
    for split, labels in split_labels.items():
        positives = labels[list(LEVEL_COLUMNS)].astype(np.int64).sum().to_numpy()
        total = len(labels)
        blocks[split] = pd.DataFrame([total - positives, positives, [total] * len(LEVELS)],
                                     index=["No-HNP", "HNP", "Sum"], columns=list(LEVELS))
    return pd.concat(blocks, names=["split", "count"])


def table1_markdown(table: pd.DataFrame) -> str:
    """Table 1 as a Markdown table, laid out like the paper (one block of three rows per split)."""
    lines = ["| split | count | " + " | ".join(table.columns) + " |", "|---|---|" + "---:|" * len(table.columns)]
    previous = None
    for (split, count), row in table.iterrows():
        shown = split if split != previous else ""
        previous = split
        lines.append(f"| {shown} | {count} | " + " | ".join(f"{value:,}" for value in row) + " |")
    return "\n".join(lines) + "\n"
