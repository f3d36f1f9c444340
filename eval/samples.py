"""Sample metadata and single radiographs of the shards, read through their DALI index files.

Evaluation needs, beside the loader's image batches, each key's patient pseudonym and view (for per-patient
aggregation and the tables) and, for Grad-CAM, the original radiograph of a few selected keys. Both are read by
byte range (`pipeline.dataset.read_samples`), so nothing else of the tars is touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hnp.errors import HnpError
from hnp.levels import LEVEL_COLUMNS
from pipeline.dataset import IMAGE_EXT, META_EXT, SampleEntry, read_samples
from pipeline.transforms import decode_gray

META_COLUMNS = ("key", "patient", "view", *(f"label_{c}" for c in LEVEL_COLUMNS), "label_any")


def read_sample_meta(tars: Sequence[Path]) -> pd.DataFrame:
    """One row per sample of the shards: key, patient (pseudonym), view, label_<c> for each level and any.

    Args:
        tars: the shard tars, e.g. `pipeline.split_shards(shards, ["test"])`.
    """
    rows = []
    for entry, data in tqdm(_read_component(read_samples(tars), META_EXT), desc="sample metadata", unit="sample",
                            leave=False):
        try:
            meta = json.loads(data)
            labels = [int(v) for v in meta["labels"]]
            if len(labels) != len(LEVEL_COLUMNS):
                raise ValueError(f"expected {len(LEVEL_COLUMNS)} labels, got {len(labels)}")
            rows.append((entry.key, str(meta["patient"]), str(meta.get("view") or ""), *labels, int(meta["any"])))
        except (ValueError, KeyError, TypeError) as err:
            raise HnpError(f"{entry.shard}: sample {entry.key}: bad metadata ({type(err).__name__}: {err})") from err
    frame = pd.DataFrame(rows, columns=list(META_COLUMNS))
    duplicated = frame["key"][frame["key"].duplicated()]
    if not duplicated.empty:
        raise HnpError(f"sample key {duplicated.iloc[0]} appears more than once in the shards")
    return frame


def read_gray_images(tars: Sequence[Path], keys: Iterable[str]) -> dict[str, np.ndarray]:
    """Decode the `.jpg` member of each wanted key to a uint8 grayscale array (H, W).

    Args:
        tars: the shard tars holding the keys.
        keys: the sample keys to read; a key missing from the tars is an error.
    """
    wanted = set(keys)
    entries = [entry for entry in read_samples(tars) if entry.key in wanted]
    missing = sorted(wanted - {entry.key for entry in entries})
    if missing:
        raise HnpError(f"{len(missing)} sample(s) not found in the shards, e.g. {missing[0]}")
    images = {}
    for entry, data in _read_component(entries, IMAGE_EXT):
        images[entry.key] = decode_gray(data, f"{entry.shard}: sample {entry.key}")
    return images


def _read_component(entries: Sequence[SampleEntry], ext: str) -> Iterable[tuple[SampleEntry, bytes]]:
    """(entry, bytes of its `ext` component) for each entry."""
    for entry in entries:
        yield entry, entry.read(ext)
