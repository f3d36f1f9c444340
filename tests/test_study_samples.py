"""Study-level samples (`pipeline.studies`): every study once with its own films, views and mask, in both loaders;
equal batches per rank in training; view dropout; the study index checked against dataset.json."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from support.studies import build_study_shards, row_gray

from hnp.config import DataConfig
from hnp.errors import HnpError
from hnp.levels import view_id
from hnp.shard_format import Study, encode_study_index, key_row, read_dataset
from pipeline.studies import EMPTY_SLOT_VIEW, build_study_loader, kept_films, read_studies, study_vector
from pipeline.transforms import channel_stats

LOADERS = ("dali", "torch")
ALL_SPLITS = ["fold0", "fold1", "test"]


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only study shards (tests that damage them copy them first)."""
    return build_study_shards(tmp_path_factory.mktemp("studies"))


@pytest.fixture(scope="module")
def index(shards_dir: Path) -> dict[str, Study]:
    """The study index as written by `hnp shard`, by study key."""
    return {study.key: study for study in read_dataset(shards_dir).split_studies(ALL_SPLITS)}


def small_cfg(loader: str, **changes) -> DataConfig:
    """One channel, no CLAHE (a uniform film stays uniform, so its gray level names it), small batches."""
    values = {"image_size": 16, "channels": 1, "clahe": False, "batch_size": 3, "loader": loader,
              "num_threads": 1 if loader == "dali" else 0}
    return DataConfig(**{**values, **changes})


def film_rows(images: torch.Tensor, cfg: DataConfig) -> list[int]:
    """The manifest row of each film of a batch, from its mean gray level (`support.studies.row_gray`)."""
    mean, std = channel_stats(cfg)
    gray = (images.float().mean(dim=(1, 2, 3)) * std[0] + mean[0]) * 255
    return [round((float(level) - row_gray(0)) / (row_gray(1) - row_gray(0))) for level in gray]


def rank_batches(shards_dir: Path, cfg: DataConfig, training: bool, world_size: int) -> list[list[dict]]:
    studies = read_studies(shards_dir, ALL_SPLITS)
    return [list(build_study_loader(cfg, studies, training=training, rank=rank, world_size=world_size))
            for rank in range(world_size)]


@pytest.mark.parametrize("loader", LOADERS)
def test_evaluation_yields_every_study_once_with_its_films_views_and_mask(shards_dir: Path, index: dict,
                                                                         loader: str) -> None:
    cfg = small_cfg(loader)
    seen: Counter[str] = Counter()
    for batches in rank_batches(shards_dir, cfg, training=False, world_size=2):
        for batch in batches:
            rows = iter(film_rows(batch["image"], cfg))  # films are packed study after study
            assert batch["image"].shape[0] == int(batch["mask"].sum())
            for b, key in enumerate(batch["key"]):
                study = index[key]
                seen[key] += 1
                count = len(study.films)
                assert batch["mask"][b].tolist() == [True] * count + [False] * (batch["mask"].shape[1] - count)
                assert batch["view"][b, :count].tolist() == [view_id(view) for view in study.views]
                assert (batch["view"][b, count:] == EMPTY_SLOT_VIEW).all()
                assert batch["films"][b] == list(study.films)
                assert [next(rows) for _ in range(count)] == [key_row(film) for film in study.films]
    assert seen == Counter(set(index))  # each study exactly once across the ranks


def test_the_index_groups_films_by_study_within_patient(index: dict) -> None:
    views = Counter(study.views for study in index.values())
    assert views[("AP",)] == 3  # a one-film study in every split
    assert views[("LAT", "LAT")] == 3  # a view twice: two films, two slots
    assert views[("AP", "FLEX")] == 3  # a patient without study_id: one study
    two_studies = Counter(study.patient for study in index.values() if study.views in {("AP", "LAT"), ("FLEX", "EXT")})
    assert sorted(two_studies.values()) == [2, 2, 2]  # a patient's two studies stay apart
    assert len({film for study in index.values() for film in study.films}) == sum(
        len(study.films) for study in index.values())


@pytest.mark.parametrize("loader", LOADERS)
def test_a_one_film_study_is_a_batch_of_one_slot(shards_dir: Path, index: dict, loader: str) -> None:
    cfg = small_cfg(loader, batch_size=1)
    single = [study for study in read_studies(shards_dir, ALL_SPLITS) if len(study.films) == 1]
    (batch, *_) = list(build_study_loader(cfg, single, training=False))
    assert batch["image"].shape == (1, 1, 16, 16) and batch["mask"].tolist() == [[True]]
    assert batch["view"].tolist() == [[view_id("AP")]]
    assert film_rows(batch["image"], cfg) == [key_row(index[batch["key"][0]].films[0])]


@pytest.mark.parametrize("world_size", [2, 3])
def test_training_gives_every_rank_the_same_number_of_full_batches(shards_dir: Path, world_size: int) -> None:
    cfg = small_cfg("torch", batch_size=2)
    ranks = rank_batches(shards_dir, cfg, training=True, world_size=world_size)
    total = len(read_studies(shards_dir, ALL_SPLITS))
    assert {len(batches) for batches in ranks} == {total // world_size // cfg.batch_size}
    assert all(len(batch["key"]) == cfg.batch_size for batches in ranks for batch in batches)
    keys = [key for batches in ranks for batch in batches for key in batch["key"]]
    assert len(keys) == len(set(keys))  # no study on two ranks in one epoch
    again = rank_batches(shards_dir, cfg, training=True, world_size=world_size)
    assert [[b["key"] for b in batches] for batches in again] == [[b["key"] for b in batches] for batches in ranks]


@pytest.mark.parametrize("loader", LOADERS)
def test_view_dropout_keeps_a_subset_of_each_study_and_never_none(shards_dir: Path, index: dict, loader: str) -> None:
    cfg = small_cfg(loader, view_dropout=0.7, batch_size=2)
    studies = read_studies(shards_dir, ALL_SPLITS)
    dropped = 0
    for epoch in range(3):
        train = build_study_loader(cfg, studies, training=True, seed=1)
        train.set_epoch(epoch)
        for batch in train:
            rows = iter(film_rows(batch["image"], cfg))
            for b, key in enumerate(batch["key"]):
                films = batch["films"][b]
                assert 1 <= len(films) == int(batch["mask"][b].sum())
                assert set(films) <= set(index[key].films) and films == sorted(films)
                assert [next(rows) for _ in films] == [key_row(film) for film in films]
                dropped += len(index[key].films) - len(films)
    assert dropped > 0


def test_kept_films_is_never_empty() -> None:
    rng = np.random.default_rng(0)
    kept = [kept_films(films, 0.95, rng) for films in (1, 2, 7) for _ in range(300)]
    assert all(len(k) >= 1 for k in kept)
    assert any(len(k) > 1 for k in kept)  # not always the fallback single film
    assert all(len(kept_films(3, 0.0, rng)) == 3 for _ in range(20))


def test_a_study_whose_films_disagree_on_the_labels_is_refused_by_name() -> None:
    study = Study(key="s0000004", patient="p", films=("r0000004", "r0000007"), views=("AP", "LAT"))
    agree = [np.array([0, 1, 0, 0, 1, 1, 50], np.float32), np.array([0, 1, 0, 0, 1, 1, 52], np.float32)]  # LABEL_VECTOR
    assert study_vector(study, agree).tolist() == [0, 1, 0, 0, 1, 1, 51]  # age: the mean of the films'
    with pytest.raises(HnpError, match=r"study s0000004: its films disagree on the labels \(r0000004"):
        study_vector(study, [agree[0], np.array([1, 1, 0, 0, 1, 1, 50], np.float32)])


def test_a_changed_or_missing_study_index_is_named(shards_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(shards_dir, tmp_path / "shards")
    index_file = copy / "fold1" / "studies.json"
    index_file.write_text(index_file.read_text().replace('"AP"', '"LAT"', 1))
    with pytest.raises(HnpError, match=r"fold1/studies.json: its sha256 differs .* run `hnp shard` again"):
        read_studies(copy, ["fold1"])
    record = json.loads((copy / "dataset.json").read_text())
    del record["splits"]["fold0"]["studies"]
    (copy / "dataset.json").write_text(json.dumps({**record, "schema_version": 2}))
    assert read_dataset(copy).split_shards(["fold0"])  # version 2 still serves image-level work
    with pytest.raises(HnpError, match="split fold0 has no study index .*run `hnp shard` again"):
        read_studies(copy, ["fold0"])


def test_a_sample_in_no_study_is_named(shards_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(shards_dir, tmp_path / "shards")
    index_file = copy / "fold1" / "studies.json"
    index = json.loads(index_file.read_text())
    dropped = index["studies"].pop(0)
    index_file.write_bytes(encode_study_index("fold1", [Study.from_record(s, "test") for s in index["studies"]]))
    record = json.loads((copy / "dataset.json").read_text())
    record["splits"]["fold1"]["studies"].update(count=len(index["studies"]),
                                                sha256=hashlib.sha256(index_file.read_bytes()).hexdigest())
    (copy / "dataset.json").write_text(json.dumps(record))
    with pytest.raises(HnpError, match=rf"sample {dropped['films'][0]} of .*fold1-\d+\.tar is in no study"):
        read_studies(copy, ["fold1"])
