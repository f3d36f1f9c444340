"""The torch loader of study batches (`data.loader: torch`): each DataLoader worker reads one study's kept films
by byte range, decodes them and applies the image loader's transforms (`pipeline.transforms.model_image`).

    loader = TorchStudyLoader(cfg.data, read_studies("shards", ["fold0"]), training=False)

The batch format and the rules for ranks, epochs and view dropout are `pipeline.studies`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from hnp.config import DataConfig
from hnp.shard_format import IMAGE_EXT
from pipeline.studies import StudySample, assemble_batch, epoch_films, film_rng
from pipeline.torch_loader import EpochBatches, worker_batches, worker_init
from pipeline.transforms import decode_gray, model_image


class StudyFilms(Dataset):
    """The kept films of a study, decoded and preprocessed, addressed by (epoch, study index).

    Args:
        studies: every study of the loader.
        cfg: the data section of the config.
        training: apply view dropout and `cfg.augment` (each seeded by seed, epoch, study and film).
        seed: run seed.
    """

    def __init__(self, studies: Sequence[StudySample], cfg: DataConfig, training: bool, seed: int) -> None:
        self.studies, self.cfg, self.training, self.seed = studies, cfg, training, seed

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        epoch, index = item
        study = self.studies[index]
        kept = epoch_films(study, index, self.cfg, self.training, self.seed, epoch)
        images = []
        for position in kept:
            film = study.films[position]
            gray = decode_gray(film.read(IMAGE_EXT), f"{film.shard}: sample {film.key} (study {study.key})")
            rng = film_rng(self.seed, epoch, index, int(position)) if self.training else None
            images.append(torch.from_numpy(model_image(gray, self.cfg, rng)))
        return {"image": torch.stack(images), "index": index, "kept": kept}  # uint8 (k, S, S)


def collate_studies(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The films of a batch's studies in one uint8 (N, S, S) tensor, with the study indices and kept films."""
    return {"image": torch.cat([item["image"] for item in items]), "index": [item["index"] for item in items],
            "kept": [item["kept"] for item in items]}


class TorchStudyLoader:
    """Study batches from a torch DataLoader with `cfg.num_threads` worker processes (`pipeline.studies`).

    Args:
        cfg: the data section of the config.
        studies: from `pipeline.studies.read_studies`.
        training: see `pipeline.studies.build_study_loader`.
        rank: this process's rank.
        world_size: number of ranks.
        seed: run seed.
        device: where the batch tensors go.
    """

    def __init__(self, cfg: DataConfig, studies: Sequence[StudySample], *, training: bool, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self._studies = list(studies)
        self._device = torch.device(device)
        self._cfg = cfg
        self._batches = EpochBatches(len(self._studies), cfg, training=training, rank=rank, world_size=world_size,
                                     seed=seed)
        workers = cfg.num_threads
        # forkserver, as the image loader: a fork taken while another library's threads hold locks deadlocks
        self._loader = DataLoader(StudyFilms(self._studies, cfg, training, seed), batch_sampler=self._batches,
                                  collate_fn=collate_studies, num_workers=workers,
                                  pin_memory=self._device.type == "cuda", persistent_workers=workers > 0,
                                  worker_init_fn=worker_init(os.getpid()),
                                  multiprocessing_context="forkserver" if workers > 0 else None)

    def __len__(self) -> int:
        return len(self._batches)

    def set_epoch(self, epoch: int) -> None:
        """Training: the next pass is epoch `epoch` (its order, view dropout and jitter follow from seed, epoch)."""
        self._batches.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in worker_batches(self._loader):
            studies = [self._studies[index] for index in batch["index"]]
            images = batch["image"].to(self._device, non_blocking=True)
            yield assemble_batch(studies, batch["kept"], images, self._cfg, self._device)
