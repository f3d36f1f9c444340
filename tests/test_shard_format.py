"""The shard contract's one owner (hnp/shard_format.py): keys, label vectors and records round-trip, the bytes
are the ones the tars have always held, and dataset.json is checked before it is trusted."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hnp.errors import HnpError
from hnp.levels import LEVELS
from hnp.shard_format import (
    LABEL_VECTOR,
    SCHEMA_VERSION,
    SampleMeta,
    decode_label_vector,
    encode_label_vector,
    find_source,
    join_label_vector,
    key_row,
    read_dataset,
    sample_key,
    source_key,
    split_label_vector,
    split_member_name,
)

META = SampleMeta(patient="p-1a2b", age=57.0, view="LAT", sex="F", study=None, labels=(0, 0, 1, 0, 1), row=42)


def test_keys_round_trip_and_bad_keys_are_named() -> None:
    assert sample_key(42) == "r0000042" and key_row("r0000042") == 42
    assert all(key_row(sample_key(row)) == row for row in (0, 1, 9_999_999))
    for bad in ("r42", "x0000042", "r0000042.jpg", "r00000042"):
        with pytest.raises(HnpError, match=f"{bad!r} is not a sample key"):
            key_row(bad)
    with pytest.raises(HnpError, match="manifest row 10000000"):
        sample_key(10_000_000)
    assert split_member_name("r0000042.lbl") == ("r0000042", "lbl")
    assert source_key("shards/fold0/fold0-000000.tar:1536:r0000042.lbl") == "r0000042"
    assert find_source("... fold0/fold0-000003.tar:1536:r0000042.jpg failed") == ("fold0/fold0-000003.tar", "r0000042")
    assert find_source("nvImageCodec failure") is None


def test_label_vector_bytes_are_the_little_endian_floats_dali_reads() -> None:
    data = encode_label_vector(META.labels, META.age)
    assert data == struct.pack("<7f", 0, 0, 1, 0, 1, 1, 57.0)  # the .lbl layout since the first shards
    assert LABEL_VECTOR == (*LEVELS, "any", "age")
    vector = decode_label_vector(data, where="s")
    assert vector.tolist() == [0, 0, 1, 0, 1, 1, 57.0]
    assert encode_label_vector((0, 0, 0, 0, 0), 30.0)[20:24] == struct.pack("<f", 0)  # "any" of no HNP is 0
    with pytest.raises(HnpError, match="s: .lbl holds 24 bytes, expected 7 float32 values"):
        decode_label_vector(data[:24], where="s")


@pytest.mark.parametrize("as_tensor", [False, True])
def test_split_and_join_are_inverses_for_numpy_and_torch(as_tensor: bool) -> None:
    vectors = np.stack([decode_label_vector(encode_label_vector(labels, age), "s")
                        for labels, age in [((1, 0, 0, 0, 0), 20.0), ((0, 0, 0, 1, 1), 80.0)]])
    fields = split_label_vector(torch.from_numpy(vectors) if as_tensor else vectors)
    assert fields["labels"].shape == (2, 5) and fields["any"].tolist() == [1, 1]
    assert fields["age"].tolist() == [20.0, 80.0] and fields["labels"][1].tolist() == [0, 0, 0, 1, 1]
    plain = {name: np.asarray(value) for name, value in fields.items()}
    assert np.array_equal(join_label_vector(plain["labels"], plain["any"], plain["age"]), vectors)


def test_sample_record_bytes_and_round_trip() -> None:
    data = META.to_json()
    # key order and separators are part of the shard bytes
    assert data == (b'{"patient":"p-1a2b","age":57.0,"view":"LAT","sex":"F","study":null,'
                    b'"labels":[0,0,1,0,1],"any":1,"row":42}')
    assert SampleMeta.from_json(data, where="s") == META and META.key == "r0000042"


@pytest.mark.parametrize(("change", "reason"), [
    ({"labels": [0, 1]}, "expected 5 labels, got 2"),
    ({"any": 0}, "any is 0 but the labels say 1"),
    ({"patient": None, "row": "x"}, "ValueError"),
])
def test_a_bad_sample_record_is_named(change: dict, reason: str) -> None:
    raw = {**json.loads(META.to_json()), **change}
    with pytest.raises(HnpError, match=f"fold0-000000.tar: sample r0000042: bad metadata .*{reason}"):
        SampleMeta.from_json(json.dumps(raw).encode(), where="fold0-000000.tar: sample r0000042")


def _write_dataset(folder: Path, **changes: object) -> Path:
    record = {"schema_version": SCHEMA_VERSION, "levels": list(LEVELS), "label_vector": list(LABEL_VECTOR),
              "folds": 2, "seed": 0, "splits": {"fold0": {"shards": []}, "fold1": {"shards": []},
                                                "test": {"shards": []}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({**record, **changes}))
    return folder


def test_dataset_json_is_read_with_its_folds_and_an_identity(tmp_path: Path) -> None:
    dataset = read_dataset(_write_dataset(tmp_path / "a"))
    assert dataset.folds == 2 and len(dataset.identity) == 16
    assert read_dataset(_write_dataset(tmp_path / "b")).identity == dataset.identity  # same bytes, same shards
    assert read_dataset(_write_dataset(tmp_path / "c", seed=1)).identity != dataset.identity
    with pytest.raises(HnpError, match="no split 'fold2'; it has fold0, fold1, test"):
        dataset.split_shards(["fold2"])


@pytest.mark.parametrize(("changes", "message"), [
    ({"schema_version": 1}, "schema_version 1, this version of hnp reads 2: run `hnp shard` again"),
    ({"levels": ["L1_2", "L2_3", "L3_4", "L4_5", "L5_S1"]}, "levels is .*this version expects"),
    ({"label_vector": ["L1-2", "L2-3", "L3-4", "L4-5", "L5-S1", "age", "any"]}, "label_vector is .*expects"),
    ({"folds": 3}, "3 folds, but no split fold2"),
    ({"folds": 1}, "folds is 1, expected an integer of at least 2"),
    ({"folds": "4"}, "folds is '4'"),
])
def test_dataset_json_of_another_contract_is_refused_saying_what_differs(tmp_path: Path, changes: dict,
                                                                        message: str) -> None:
    with pytest.raises(HnpError, match=message):
        read_dataset(_write_dataset(tmp_path, **changes))


def test_missing_or_broken_dataset_json_is_named(tmp_path: Path) -> None:
    with pytest.raises(HnpError, match="dataset.json: not found; is .* the output folder of hnp shard"):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(HnpError, match="dataset.json: not valid JSON"):
        read_dataset(tmp_path)
