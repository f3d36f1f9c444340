"""Study-level samples: all films of a study together, for the fusion model (`model.fusion`).

    studies = read_studies("shards", ["fold1", "fold2", "fold3"])     # the study index, films checked and labelled
    loader = build_study_loader(cfg.data, studies, training=True, rank=rank, world_size=world_size, seed=seed)
    for batch in loader:
        batch["image"]   # float32 (N, C, S, S): the batch's films, study after study (N = batch["mask"].sum())
        batch["mask"]    # bool (B, V): study b's films fill its first mask[b].sum() slots; V = the most films
        batch["view"]    # int64 (B, V): each film's view id (`hnp.levels.view_id`), -1 in empty slots
        batch["labels"]  # float32 (B, 5), LEVELS order; batch["any"], batch["age"]: (B,)
        batch["key"]     # list[str], the study keys; batch["films"]: list[list[str]], each study's film keys

Films are packed, not padded: the (B, V, C, S, S) grid of a study batch is `grid[mask] = image`, and the model's
backbone runs on the N real films only. The preprocessing is the image loaders' own (`pipeline.transforms` for the
torch loader, `pipeline.dali.preprocess_graph` for DALI), per film.

Which studies each rank reads follows the image loaders' rules (`pipeline.torch_loader.EpochBatches` over studies):
training deals a permutation seeded by (seed, epoch) to the ranks in equal numbers of full batches; evaluation
gives each rank its contiguous part, every study exactly once. In training, view dropout (`data.view_dropout`)
keeps each film of a study with probability 1 - p, and one film drawn at random when that keeps none, from a draw
seeded by (seed, epoch, study): a resumed epoch keeps the same films, and dropped films are never read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hnp.config import DataConfig
from hnp.errors import HnpError
from hnp.levels import view_id
from hnp.shard_format import (
    LABEL_EXT,
    Study,
    decode_label_vector,
    join_label_vector,
    read_dataset,
    split_label_vector,
)
from pipeline.dataset import SampleEntry, read_samples
from pipeline.loader import Loader
from pipeline.transforms import normalize_batch

EMPTY_SLOT_VIEW = -1  # the view id of a slot without a film


@dataclass(frozen=True)
class StudySample:
    """One study as the loaders read it.

    Args:
        key: the study key (`hnp.shard_format.study_key`).
        patient: the patient's pseudonym.
        films: each film's sample entry (byte ranges in its tar), in key order.
        views: each film's view id (`hnp.levels.view_id`).
        vector: the study's label vector (`hnp.shard_format.LABEL_VECTOR`): the labels its films share, the mean
            of their ages.
    """

    key: str
    patient: str
    films: tuple[SampleEntry, ...]
    views: tuple[int, ...]
    vector: np.ndarray


def read_studies(shards_dir: str | Path, splits: Sequence[str]) -> list[StudySample]:
    """The studies of the named splits, each film found in the splits' tars and every sample of them in a study.

    Raises HnpError naming the study when its films disagree on the labels (a study has one MRI read), and naming
    the sample or film when the index and the tars do not match.

    Args:
        shards_dir: the output folder of `hnp shard` (schema version 3: with study indexes).
        splits: split names, e.g. ``["fold1", "fold2", "fold3"]``.
    """
    dataset = read_dataset(shards_dir)
    studies = dataset.split_studies(list(splits))
    entries = {entry.key: entry for entry in read_samples(dataset.split_shards(list(splits)))}
    _check_every_film_once(studies, entries, f"{dataset.folder}: {', '.join(splits)}")
    vectors = read_label_vectors(list(entries.values()))
    return [StudySample(key=study.key, patient=study.patient, films=tuple(entries[film] for film in study.films),
                        views=tuple(_view_id(view, study) for view in study.views),
                        vector=study_vector(study, [vectors[film] for film in study.films]))
            for study in studies]


def _view_id(view: str | None, study: Study) -> int:
    try:
        return view_id(view)
    except HnpError as err:
        raise HnpError(f"study {study.key}: {err}") from None


def _check_every_film_once(studies: list[Study], entries: dict[str, SampleEntry], where: str) -> None:
    listed = {film for study in studies for film in study.films}
    unknown = sorted(listed - set(entries))
    if unknown:
        raise HnpError(f"{where}: the study index lists film {unknown[0]}, which is in none of the tars "
                       f"({len(unknown)} such); run `hnp shard` again")
    orphans = sorted(set(entries) - listed)
    if orphans:
        raise HnpError(f"{where}: sample {orphans[0]} of {entries[orphans[0]].shard} is in no study "
                       f"({len(orphans)} such); run `hnp shard` again")


def read_label_vectors(entries: Sequence[SampleEntry]) -> dict[str, np.ndarray]:
    """Every entry's `.lbl` member, by key; each tar is opened once (one `pread` per sample)."""
    vectors: dict[str, np.ndarray] = {}
    by_shard: dict[Path, list[SampleEntry]] = {}
    for entry in entries:
        by_shard.setdefault(entry.shard, []).append(entry)
    for shard, shard_entries in by_shard.items():
        with open(shard, "rb") as handle:
            for entry in shard_entries:
                offset, size = entry.components[LABEL_EXT]
                where = f"{shard}: sample {entry.key}"
                vectors[entry.key] = decode_label_vector(_pread(handle.fileno(), size, offset, where), where)
    return vectors


def _pread(fd: int, size: int, offset: int, where: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise HnpError(f"{where}: cut short ({len(data)} of {size} bytes); the tar is truncated, re-run hnp shard")
    return data


def study_vector(study: Study, vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The label vector of a study: its films' labels and "any", which must agree, and the mean of their ages.

    Args:
        study: the study (for the message).
        vectors: its films' label vectors, in film order.
    """
    stacked = np.stack(vectors).astype(np.float32)
    fields = split_label_vector(stacked)
    labels = fields["labels"]
    if (labels != labels[0]).any():
        shown = ", ".join(f"{film} {labels[i].astype(int).tolist()}" for i, film in enumerate(study.films))
        raise HnpError(f"study {study.key}: its films disagree on the labels ({shown}); a study has one MRI read: "
                       "give these films separate study_id values in the manifest, or fix the labels")
    return join_label_vector(labels[:1], fields["any"][:1], fields["age"].mean(keepdims=True))[0]


def kept_films(films: int, view_dropout: float, rng: np.random.Generator) -> np.ndarray:
    """View dropout: the positions of the films kept, ascending; each kept with probability 1 - `view_dropout`,
    and one drawn uniformly when that keeps none, so that no study is ever left without a film.

    Args:
        films: how many films the study has (at least 1).
        view_dropout: the probability of dropping each film, in [0, 1).
        rng: the study's draw for this epoch.
    """
    kept = np.flatnonzero(rng.random(films) >= view_dropout)
    return kept if len(kept) else np.array([rng.integers(films)])


def epoch_films(study: StudySample, index: int, cfg: DataConfig, training: bool, seed: int,
                epoch: int) -> np.ndarray:
    """The film positions a loader reads of study `index` in `epoch`: all of them in evaluation; in training the
    view dropout's draw, seeded by (seed, epoch, index) so that it is the same in any process and on a resume."""
    if not training or cfg.view_dropout <= 0:
        return np.arange(len(study.films))
    return kept_films(len(study.films), cfg.view_dropout, np.random.default_rng([seed, epoch, index]))


def film_rng(seed: int, epoch: int, index: int, position: int) -> np.random.Generator:
    """The jitter draw of one film of one study in one epoch (torch loader)."""
    return np.random.default_rng([seed, epoch, index, 1 + position])


def assemble_batch(studies: Sequence[StudySample], kept: Sequence[np.ndarray], images: torch.Tensor,
                   cfg: DataConfig, device: torch.device) -> dict[str, Any]:
    """A study batch (the module docstring's format) from the studies, the films kept of each and their
    preprocessed pixels.

    Args:
        studies: the batch's studies.
        kept: per study, the positions of the films read (`epoch_films`).
        images: uint8 (N, S, S), the kept films study after study, on `device`.
        cfg: the data config (normalization).
        device: where the batch goes.
    """
    counts = torch.tensor([len(k) for k in kept])
    slots = int(counts.max())
    mask = torch.arange(slots)[None, :] < counts[:, None]  # (B, V): the first count slots of each row
    views = torch.full(mask.shape, EMPTY_SLOT_VIEW, dtype=torch.int64)
    views[mask] = torch.tensor([study.views[i] for study, k in zip(studies, kept, strict=True) for i in k])
    vectors = torch.from_numpy(np.stack([study.vector for study in studies]))
    if device.type == "cuda":
        vectors, mask, views = vectors.pin_memory(), mask.pin_memory(), views.pin_memory()
    return {"image": normalize_batch(images, cfg), "mask": mask.to(device, non_blocking=True),
            "view": views.to(device, non_blocking=True),
            **split_label_vector(vectors.to(device, non_blocking=True)),
            "key": [study.key for study in studies],
            "films": [[study.films[i].key for i in k] for study, k in zip(studies, kept, strict=True)]}


def build_study_loader(cfg: DataConfig, studies: Sequence[StudySample], *, training: bool, rank: int = 0,
                       world_size: int = 1, seed: int = 0, device: Any = "cpu") -> Loader:
    """A loader of study batches over `studies` for one rank (`pipeline.loader.build_loader`'s arguments, with
    studies in place of tars); `cfg.loader` picks DALI or torch.

    Args:
        cfg: the data section of the config (`view_dropout` applies in training).
        studies: from `read_studies`.
        training: shuffle, augment, drop views, and yield equal full batches on every rank; otherwise every study
            once across ranks, each with all its films, in index order.
        rank: this process's rank among `world_size`.
        world_size: number of data-parallel ranks.
        seed: run seed.
        device: where the batch tensors go.
    """
    if not studies:
        raise HnpError("no studies to load: the splits are empty")
    if cfg.loader == "dali":
        from pipeline.dali_studies import DaliStudyLoader

        return DaliStudyLoader(cfg, studies, training=training, rank=rank, world_size=world_size, seed=seed,
                               device=device)
    from pipeline.torch_studies import TorchStudyLoader

    return TorchStudyLoader(cfg, studies, training=training, rank=rank, world_size=world_size, seed=seed,
                            device=device)
