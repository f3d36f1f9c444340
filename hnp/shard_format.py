"""The shard contract (DESIGN.md), owned here: a sample's key, its members, the label vector and the metadata
record, and the `dataset.json` document beside the shards. `sharding/` writes through this module; `pipeline/`,
`eval/` and `hnp preview` read through it, so a change to the format is a change in one place.

    key = sample_key(42)                                  # "r0000042", from the manifest row
    vector = encode_label_vector((0, 0, 1, 0, 1), 57.0)   # the 28-byte `<key>.lbl` member
    fields = split_label_vector(batch_vectors)            # {"labels": (N, 5), "any": (N,), "age": (N,)}
    meta = SampleMeta.from_json(data, where="fold0-000000.tar: sample r0000042")
    dataset = read_dataset("shards")                      # dataset.json, its version, levels and folds checked
    studies = dataset.split_studies(["fold0"])            # the study index: each study's films and their views
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hnp.errors import HnpError
from hnp.levels import LEVELS

# Members of one sample: `<key>.jpg` (the image bytes), `<key>.json` (SampleMeta) and `<key>.lbl` (the label
# vector, which DALI reads as numbers without parsing JSON).
IMAGE_EXT = "jpg"
META_EXT = "json"
LABEL_EXT = "lbl"
MEMBER_EXTS: tuple[str, ...] = (IMAGE_EXT, META_EXT, LABEL_EXT)  # in tar order

# `<key>.lbl`: little-endian float32 values in this order.
LABEL_VECTOR: tuple[str, ...] = (*LEVELS, "any", "age")
_LABEL_DTYPE = np.dtype("<f4")
_LEVELS_PART = slice(LABEL_VECTOR.index(LEVELS[0]), LABEL_VECTOR.index(LEVELS[-1]) + 1)
_ANY_PART = LABEL_VECTOR.index("any")
_AGE_PART = LABEL_VECTOR.index("age")

_KEY = re.compile(r"^r(\d{7})$")
# DALI's source info of a sample member: "<tar path>:<byte offset>:<member name>"
_SOURCE_INFO = re.compile(r"(?P<shard>\S+\.tar):\d+:(?P<key>[^\s.:]+)\.\w+")
# json.dumps with options builds a new encoder per call, a third of the cost of a small record
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))

DATASET_FILE = "dataset.json"
# 3: a study index per split (`<split>/studies.json`, listed in the split's "studies" entry); the tars are as in 2.
# 2: LEVELS spelling ("L1-2") in label_vector and positives; 1 used "L1_2".
SCHEMA_VERSION = 3
IMAGE_LEVEL_VERSIONS = (2,)  # older versions still read for image-level work: their tars are version 3's
TEST_SPLIT = "test"
STUDY_INDEX_FILE = "studies.json"
STUDY_INDEX_VERSION = 1
_RESHARD = ("run `hnp shard` again with the same options (it keeps the finished tars and rewrites dataset.json and "
            "the study indexes)")


def sample_key(row: int) -> str:
    """The key of the sample made from manifest row `row` (0-based): "r" and seven digits, no dots (DALI and
    webdataset split member names at the first dot)."""
    if not 0 <= row < 10_000_000:
        raise HnpError(f"manifest row {row}: sample keys hold rows 0-9,999,999")
    return f"r{row:07d}"


def key_row(key: str) -> int:
    """The manifest row a sample key was made from: `key_row("r0000042") == 42`."""
    match = _KEY.match(key)
    if match is None:
        raise HnpError(f"{key!r} is not a sample key (expected r and seven digits, e.g. r0000042)")
    return int(match.group(1))


def member_name(key: str, ext: str) -> str:
    """A member's name inside the tar: `r0000042.jpg`."""
    return f"{key}.{ext}"


def split_member_name(name: str) -> tuple[str, str]:
    """`r0000042.lbl` -> ("r0000042", "lbl")."""
    key, dot, ext = name.partition(".")
    if not dot:
        raise HnpError(f"{name!r} is not a shard member name (expected <key>.<ext>)")
    return key, ext


def source_key(source_info: str) -> str:
    """The sample key in DALI's source info of a member: `fold0-000000.tar:1536:r0000042.lbl` -> `r0000042`."""
    return split_member_name(source_info.rsplit(":", 1)[-1])[0]


def find_source(text: str) -> tuple[str, str] | None:
    """(shard, key) of the first member source named in a DALI message, or None when it names none."""
    match = _SOURCE_INFO.search(text)
    return (match["shard"], match["key"]) if match else None


def any_label(labels: Any) -> Any:
    """"any": HNP at one level or more, of one label sequence (LEVELS order) or of each row of an (N, 5) array.
    Derived here only; everything downstream reads it from the sample."""
    return np.asarray(labels).max(axis=-1)


def encode_label_vector(labels: tuple[int, ...] | list[int], age: float) -> bytes:
    """The `<key>.lbl` member: the level labels, "any" and age as little-endian float32 in LABEL_VECTOR order."""
    values = np.zeros(len(LABEL_VECTOR), _LABEL_DTYPE)
    values[_LEVELS_PART] = labels
    values[_ANY_PART] = any_label(labels)
    values[_AGE_PART] = age
    return values.tobytes()


def decode_label_vector(data: bytes, where: str) -> np.ndarray:
    """One `<key>.lbl` member as float32 (len(LABEL_VECTOR),); wrong length is an error naming `where`."""
    if len(data) != len(LABEL_VECTOR) * _LABEL_DTYPE.itemsize:
        raise HnpError(f"{where}: .{LABEL_EXT} holds {len(data)} bytes, expected "
                       f"{len(LABEL_VECTOR)} float32 values ({', '.join(LABEL_VECTOR)})")
    return np.frombuffer(data, _LABEL_DTYPE)


def split_label_vector(vectors: Any) -> dict[str, Any]:
    """Label vectors (N, len(LABEL_VECTOR)), numpy or torch, as the batch fields the loaders yield:
    {"labels": (N, 5) in LEVELS order, "any": (N,), "age": (N,)}. Views, not copies."""
    return {"labels": vectors[:, _LEVELS_PART], "any": vectors[:, _ANY_PART], "age": vectors[:, _AGE_PART]}


def join_label_vector(labels: np.ndarray, any_: np.ndarray, age: np.ndarray) -> np.ndarray:
    """The inverse of `split_label_vector`, for numpy: float32 (N, len(LABEL_VECTOR))."""
    vectors = np.zeros((len(labels), len(LABEL_VECTOR)), np.float32)
    vectors[:, _LEVELS_PART], vectors[:, _ANY_PART], vectors[:, _AGE_PART] = labels, any_, age
    return vectors


@dataclass(frozen=True)
class SampleMeta:
    """The `<key>.json` member: who and what a radiograph is, without any raw identifier.

    Args:
        patient: the patient's keyed pseudonym.
        age: years at X-ray.
        view: AP, LAT, OBL_L, OBL_R, FLEX, EXT, OTHER, or None when the manifest had none.
        sex: as given in the manifest, or None.
        study: the study's keyed pseudonym, or None.
        labels: HNP per level, LEVELS order, 0/1.
        row: the manifest row (the key is made from it).
    """

    patient: str
    age: float
    view: str | None
    sex: str | None
    study: str | None
    labels: tuple[int, ...]
    row: int

    @property
    def any(self) -> int:
        return int(any_label(self.labels))

    @property
    def key(self) -> str:
        return sample_key(self.row)

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, keys in this fixed order (the shard bytes depend on it)."""
        return _COMPACT_JSON.encode({"patient": self.patient, "age": self.age, "view": self.view, "sex": self.sex,
                                     "study": self.study, "labels": list(self.labels), "any": self.any,
                                     "row": self.row}).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> SampleMeta:
        """Parse and check a `<key>.json` member; anything else is an error naming `where`."""
        try:
            raw = json.loads(data)
            meta = cls(patient=str(raw["patient"]), age=float(raw["age"]), view=_optional(raw.get("view")),
                       sex=_optional(raw.get("sex")), study=_optional(raw.get("study")),
                       labels=tuple(int(v) for v in raw["labels"]), row=int(raw["row"]))
            if len(meta.labels) != len(LEVELS):
                raise ValueError(f"expected {len(LEVELS)} labels, got {len(meta.labels)}")
            if int(raw["any"]) != meta.any:
                raise ValueError(f"any is {raw['any']} but the labels say {meta.any}")
        except (ValueError, KeyError, TypeError) as err:
            raise HnpError(f"{where}: bad metadata ({type(err).__name__}: {err})") from None
        return meta


def study_key(row: int) -> str:
    """The key of a study, made from the manifest row of its first film: "s" and seven digits (no PHI, unique,
    and the same whoever shards, as sample keys are)."""
    return "s" + sample_key(row)[1:]


@dataclass(frozen=True)
class Study:
    """One study of the study index: the films (sample keys) taken together, and the view of each.

    A study is the manifest's `study_id` within one patient; a patient's films without a `study_id` form one study
    of their own. Films are in key order; a view may repeat (two LAT films) or be None (the manifest gave none).

    Args:
        key: `study_key` of its first film.
        patient: the patient's keyed pseudonym (as in the films' `.json` members).
        films: the films' sample keys, ascending.
        views: the view of each film, as in its `.json` member (None where the manifest had none).
    """

    key: str
    patient: str
    films: tuple[str, ...]
    views: tuple[str | None, ...]

    def to_record(self) -> dict[str, Any]:
        return {"key": self.key, "patient": self.patient, "films": list(self.films), "views": list(self.views)}

    @classmethod
    def from_record(cls, raw: Any, where: str) -> Study:
        """One study of a studies.json file, checked; anything else is an error naming `where`."""
        try:
            study = cls(key=str(raw["key"]), patient=str(raw["patient"]), films=tuple(str(k) for k in raw["films"]),
                        views=tuple(_optional(v) for v in raw["views"]))
            if not study.films or len(study.views) != len(study.films):
                raise ValueError(f"{len(study.films)} films and {len(study.views)} views")
            for film in study.films:
                key_row(film)
            if study.key != study_key(min(key_row(film) for film in study.films)):
                raise ValueError(f"key {study.key} is not that of its first film")
        except (ValueError, KeyError, TypeError, HnpError) as err:
            raise HnpError(f"{where}: bad study record ({type(err).__name__}: {err})") from None
        return study


def study_index_name(split: str) -> str:
    """The study index of a split, relative to the shard folder: "fold0/studies.json"."""
    return f"{split}/{STUDY_INDEX_FILE}"


def encode_study_index(split: str, studies: list[Study]) -> bytes:
    """A split's `studies.json`: the index version, the split, and its studies in key order (no timestamp: the
    same studies give the same bytes)."""
    record = {"version": STUDY_INDEX_VERSION, "split": split,
              "studies": [study.to_record() for study in sorted(studies, key=lambda s: s.key)]}
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def decode_study_index(data: bytes, split: str, where: str) -> list[Study]:
    """Parse and check a split's `studies.json` (its version, its split, each record; no film in two studies).

    Args:
        data: the file's bytes.
        split: the split it must describe.
        where: names the file in errors.
    """
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HnpError(f"{where}: not valid JSON: {err}") from None
    if not isinstance(raw, dict) or raw.get("version") != STUDY_INDEX_VERSION or raw.get("split") != split:
        found = (raw.get("version"), raw.get("split")) if isinstance(raw, dict) else type(raw).__name__
        raise HnpError(f"{where}: expected a study index version {STUDY_INDEX_VERSION} of split {split}, found "
                       f"{found}; {_RESHARD}")
    studies = [Study.from_record(item, f"{where}: study {number}") for number, item in
               enumerate(raw.get("studies") or [])]
    seen: dict[str, str] = {}
    for study in studies:
        for film in study.films:
            if film in seen:
                raise HnpError(f"{where}: film {film} is in studies {seen[film]} and {study.key}")
            seen[film] = study.key
    return studies


def _optional(value: Any) -> str | None:
    return None if value is None else str(value)


def fold_split(fold: int) -> str:
    """The name of fold `fold`'s split: "fold0"."""
    return f"fold{fold}"


def split_names(folds: int) -> list[str]:
    """Every split of a dataset with `folds` folds, in order: fold0..fold{k-1}, then test."""
    return [fold_split(k) for k in range(folds)] + [TEST_SPLIT]


def dataset_json_text(record: dict) -> str:
    """The dataset.json document as written (2-space indent, a final newline: no timestamp, so the same input
    gives the same bytes)."""
    return json.dumps(record, indent=2) + "\n"


@dataclass(frozen=True)
class Dataset:
    """A shard folder as its dataset.json describes it, checked against this version's contract.

    Args:
        folder: the shard folder.
        record: the parsed dataset.json.
        identity: the first 16 hex digits of the sha256 of dataset.json's bytes. dataset.json lists every
            shard's sha256 and has no timestamp, so equal identities mean the same shards.
    """

    folder: Path
    record: dict
    identity: str

    @property
    def folds(self) -> int:
        return int(self.record["folds"])

    def split_shards(self, splits: list[str] | tuple[str, ...]) -> list[Path]:
        """Tar paths of the named splits, in dataset.json order; a missing split or tar is an error."""
        known = self.record["splits"]
        paths: list[Path] = []
        for split in splits:
            if split not in known:
                raise HnpError(f"{self.folder / DATASET_FILE}: no split {split!r}; it has {', '.join(known)}")
            paths.extend(self.folder / shard["file"] for shard in known[split]["shards"])
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise HnpError(f"{missing[0]}: listed in dataset.json but missing ({len(missing)} shard(s) missing)")
        return paths

    def split_studies(self, splits: list[str] | tuple[str, ...]) -> list[Study]:
        """The studies of the named splits, from each split's `studies.json`, checked against the sha256 and count
        dataset.json lists for it; a dataset without study indexes (version 2) is an error saying how to add them.
        """
        self.split_shards(splits)  # the splits exist, and so do their tars
        studies: list[Study] = []
        for split in splits:
            entry = self.record["splits"][split].get("studies")
            if not isinstance(entry, dict):
                raise HnpError(f"{self.folder / DATASET_FILE}: split {split} has no study index (schema_version "
                               f"{self.record.get('schema_version')}); {_RESHARD}")
            path = self.folder / entry["file"]
            try:
                data = path.read_bytes()
            except OSError as err:
                raise HnpError(f"{path}: cannot read the study index ({err.strerror or err}); {_RESHARD}") from None
            if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
                raise HnpError(f"{path}: its sha256 differs from the one dataset.json lists (changed or damaged); "
                               f"{_RESHARD}")
            found = decode_study_index(data, split, str(path))
            if len(found) != entry.get("count"):
                raise HnpError(f"{path}: {len(found)} studies, dataset.json lists {entry.get('count')}")
            studies.extend(found)
        return studies


def read_dataset(folder: str | Path) -> Dataset:
    """Read `<folder>/dataset.json` and check what this version relies on: the schema version, the level
    order, the label vector, and one split per fold plus test. A mismatch is an error saying what differs.

    Args:
        folder: the output folder of `hnp shard`.
    """
    folder = Path(folder)
    path = folder / DATASET_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HnpError(f"{path}: not found; is {folder} the output folder of hnp shard?") from None
    except OSError as err:
        raise HnpError(f"{path}: cannot read it: {err.strerror or err}") from None
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HnpError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(record, dict):
        raise HnpError(f"{path}: expected a JSON object")
    _check_record(record, path)
    return Dataset(folder=folder, record=record, identity=hashlib.sha256(data).hexdigest()[:16])


def _check_record(record: dict, path: Path) -> None:
    version = record.get("schema_version")
    if version != SCHEMA_VERSION and version not in IMAGE_LEVEL_VERSIONS:
        raise HnpError(f"{path}: schema_version {version!r}, this version of hnp reads {SCHEMA_VERSION} (and "
                       f"{', '.join(map(str, IMAGE_LEVEL_VERSIONS))} without study indexes): {_RESHARD}")
    for field, expected in (("levels", list(LEVELS)), ("label_vector", list(LABEL_VECTOR))):
        if record.get(field) != expected:
            raise HnpError(f"{path}: {field} is {record.get(field)!r}, this version expects {expected}")
    folds = record.get("folds")
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise HnpError(f"{path}: folds is {folds!r}, expected an integer of at least 2")
    splits = record.get("splits")
    missing = [name for name in split_names(folds) if not isinstance(splits, dict) or name not in splits]
    if missing:
        raise HnpError(f"{path}: {folds} folds, but no split {', '.join(missing)}")
