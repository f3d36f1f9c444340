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


class GrayImages:
    """Radiographs of selected keys, decoded to uint8 gray (H, W) one at a time when asked for.

    Only the index is kept in memory: at paper scale the Grad-CAM selection holds 1,500 radiographs of several
    megapixels each, too many to decode up front.

    Args:
        tars: the shard tars holding the keys.
        keys: the sample keys that will be asked for; a key missing from the tars is an error here.
    """

    def __init__(self, tars: Sequence[Path], keys: Iterable[str]) -> None:
        wanted = set(keys)
        self._entries = {entry.key: entry for entry in read_samples(tars) if entry.key in wanted}
        missing = sorted(wanted - set(self._entries))
        if missing:
            raise HnpError(f"{len(missing)} sample(s) not found in the shards, e.g. {missing[0]}")

    def __getitem__(self, key: str) -> np.ndarray:
        entry = self._entries[key]
        return decode_gray(entry.read(IMAGE_EXT), f"{entry.shard}: sample {entry.key}")


def _read_component(entries: Sequence[SampleEntry], ext: str) -> Iterable[tuple[SampleEntry, bytes]]:
    """(entry, bytes of its `ext` component) for each entry."""
    for entry in entries:
        yield entry, entry.read(ext)
