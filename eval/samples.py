"""Sample metadata and single radiographs of the shards, read through their DALI index files.

Evaluation needs, beside the loader's image batches, each key's patient pseudonym, view and labels (for
per-patient aggregation and the tables) and, for Grad-CAM, the original radiograph of a few selected keys. Both
are read by byte range (`pipeline.dataset.read_samples`), so nothing else of the tars is touched.

The labels come from the `.lbl` member, the bytes training and validation read, and the `.json` member's copy
must agree with them: evaluation and training score against the same truth, or evaluation stops naming the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hnp.bars import progress_bar
from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.predictions import ANY, KEY, PATIENT, VIEW, label_column
from hnp.shard_format import IMAGE_EXT, LABEL_EXT, META_EXT, SampleMeta, decode_label_vector, split_label_vector
from pipeline.dataset import read_samples
from pipeline.transforms import decode_gray

META_COLUMNS = (KEY, PATIENT, VIEW, *(label_column(level) for level in LEVELS), label_column(ANY))


def read_sample_meta(tars: Sequence[Path]) -> pd.DataFrame:
    """One row per sample of the shards: key, patient (pseudonym), view, label_<target> for each level and any.

    Args:
        tars: the shard tars, e.g. `pipeline.split_shards(shards, ["test"])`.
    """
    rows = []
    for entry in progress_bar(read_samples(tars), desc="sample metadata", unit="sample", leave=False):
        where = f"{entry.shard}: sample {entry.key}"
        meta = SampleMeta.from_json(entry.read(META_EXT), where)
        fields = split_label_vector(decode_label_vector(entry.read(LABEL_EXT), where)[None])
        labels = tuple(int(v) for v in fields["labels"][0])
        if labels != meta.labels or int(fields["any"][0]) != meta.any:
            raise HnpError(f"{where}: labels {list(labels)} in .{LABEL_EXT} but {list(meta.labels)} in "
                           f".{META_EXT}: the shard is inconsistent; re-run hnp shard")
        rows.append((entry.key, meta.patient, meta.view or "", *labels, meta.any))
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

