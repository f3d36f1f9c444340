"""The study index `hnp shard` writes beside each split's tars (`<split>/studies.json`, its codec in
`hnp.shard_format`): which films make up each study, and the view of each, so that a study's films can be read
together although the split's samples are shuffled across its tars. The tars' bytes do not depend on it.

    studies = group_studies(columns, rows)                 # the split's studies, from the sample columns
    entry = write_study_index(out, "fold0", studies)       # -> dataset.json's "studies" entry of that split

A study is the manifest's `study_id` within one patient; a patient's rows without a `study_id` form one study.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from hnp.files import atomic_write_bytes
from hnp.shard_format import Study, encode_study_index, sample_key, study_index_name, study_key

log = logging.getLogger("hnp.shard")
_SHOWN = 5


def group_studies(columns: dict[str, list], rows: Iterable[int]) -> list[Study]:
    """The studies of a split's rows, in key order, each with its films in key order.

    Args:
        columns: the sample columns (`sharding.build.sample_columns`): `patient`, `study` (pseudonym or None),
            `view`, `labels`, per manifest row.
        rows: the split's manifest rows.
    """
    groups: dict[tuple[str, str | None], list[int]] = {}
    for row in sorted(rows):
        groups.setdefault((columns["patient"][row], columns["study"][row]), []).append(row)
    studies = [Study(key=study_key(films[0]), patient=patient, films=tuple(sample_key(row) for row in films),
                     views=tuple(columns["view"][row] for row in films))
               for (patient, _), films in groups.items()]
    _warn_label_conflicts(groups.values(), columns["labels"])
    return sorted(studies, key=lambda study: study.key)


def _warn_label_conflicts(groups: Iterable[list[int]], labels: list[list[int]]) -> None:
    """Studies whose films carry different labels are kept for image-level work; study-level loaders refuse them."""
    conflicts = [study_key(films[0]) for films in groups if len({tuple(labels[row]) for row in films}) > 1]
    if conflicts:
        log.warning("%d stud%s whose films disagree on the labels (e.g. %s): image-level training uses them, "
                    "study-level (fusion) training refuses them", len(conflicts),
                    "y" if len(conflicts) == 1 else "ies", ", ".join(conflicts[:_SHOWN]))


def write_study_index(out: Path, split: str, studies: list[Study]) -> dict:
    """Write `<out>/<split>/studies.json` atomically and return its dataset.json entry.

    Args:
        out: the shard folder.
        split: the split's name.
        studies: from `group_studies`.
    """
    data = encode_study_index(split, studies)
    name = study_index_name(split)
    atomic_write_bytes(out / name, data)
    return {"file": name, "count": len(studies), "films": sum(len(study.films) for study in studies),
            "sha256": hashlib.sha256(data).hexdigest()}
