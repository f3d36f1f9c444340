"""The torch fallback loader (`data.loader: torch`): OpenCV preprocessing in DataLoader worker processes.

    loader = TorchLoader(cfg.data, split_shards("shards", ["fold0"]), training=False, rank=0, world_size=1)

Samples are read by byte range through the DALI index files beside the tars (`pipeline.dataset`), so each rank
and worker reads only the samples it needs, in any order: evaluation gives every rank the same contiguous part
DALI's reader gives it (same samples, same order), and training draws a fresh global permutation each epoch.
The transforms are `pipeline.transforms`, the functions `hnp predict` and `hnp preview` use.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hnp.config import DataConfig
from hnp.errors import HnpError
from hnp.shard_format import IMAGE_EXT, LABEL_EXT, decode_label_vector, split_label_vector
from hnp.workers import exit_with
from pipeline.dataset import SampleEntry, batch_sizes, rank_range, read_samples
from pipeline.transforms import decode_gray, model_image, normalize_batch

Item = tuple[int, int]  # (epoch, sample index): the epoch seeds the sample's augmentation draw


class ShardSamples(Dataset):
    """Decoded, preprocessed samples, addressed by (epoch, index into `samples`).

    Args:
        samples: every sample of the shard list.
        cfg: the data section of the config.
        training: apply `cfg.augment` (seeded by seed, epoch and index, so independent of worker count).
        seed: run seed.
    """

    def __init__(self, samples: Sequence[SampleEntry], cfg: DataConfig, training: bool, seed: int) -> None:
        self.samples, self.cfg, self.training, self.seed = samples, cfg, training, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: Item) -> dict[str, Any]:
        epoch, index = item
        sample = self.samples[index]
        where = f"{sample.shard}: sample {sample.key}"
        gray = decode_gray(sample.read(IMAGE_EXT), where)
        vector = decode_label_vector(sample.read(LABEL_EXT), where)
        rng = np.random.default_rng([self.seed, epoch, index]) if self.training else None
        return {"image": torch.from_numpy(model_image(gray, self.cfg, rng)),  # uint8 (S, S)
                "vector": torch.from_numpy(vector.astype(np.float32)), "key": sample.key}


class EpochBatches(Sampler):
    """Batches of (epoch, index) for one rank, per `pipeline.dataset.batch_sizes`.

    Training: a permutation of all samples seeded by (seed, epoch), the same on every rank, dealt round-robin
    to the ranks and cut to the common number of full batches. Evaluation: the rank's contiguous part, in order.
    """

    def __init__(self, total: int, cfg: DataConfig, *, training: bool, rank: int, world_size: int, seed: int) -> None:
        self.total, self.training, self.rank, self.world_size, self.seed = total, training, rank, world_size, seed
        self.start, self.stop = rank_range(total, rank, world_size)
        self.sizes = batch_sizes(total, self.stop - self.start, world_size, cfg.batch_size, training)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[list[Item]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.training:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.total)[self.rank::self.world_size]
        else:
            order = np.arange(self.start, self.stop)
        position = 0
        for size in self.sizes:
            yield [(epoch, int(index)) for index in order[position:position + size]]
            position += size


class TorchLoader:
    """Batches from a torch DataLoader with `cfg.num_threads` worker processes (the `build_loader` contract).

    Args:
        cfg: the data section of the config.
        shards: tar paths (`pipeline.dataset.split_shards`).
        training: see `pipeline.loader.build_loader`.
        rank: this process's rank.
        world_size: number of ranks.
        seed: run seed.
        device: where the batch tensors go.
    """

    def __init__(self, cfg: DataConfig, shards: Sequence[Path], *, training: bool, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device: str | torch.device = "cpu") -> None:
        samples = read_samples(shards)  # also refuses truncated tars, naming shard and key
        self._device = torch.device(device)
        self._cfg = cfg
        self._batches = EpochBatches(len(samples), cfg, training=training, rank=rank, world_size=world_size,
                                     seed=seed)
        workers = cfg.num_threads
        # Workers start from a clean forkserver, not a fork of this process: a fork taken while another library's
        # threads hold locks (a DALI pipeline's, seen in tests) deadlocks the worker.
        self._loader = DataLoader(ShardSamples(samples, cfg, training, seed), batch_sampler=self._batches,
                                  num_workers=workers, pin_memory=self._device.type == "cuda",
                                  persistent_workers=workers > 0, worker_init_fn=worker_init(os.getpid()),
                                  multiprocessing_context="forkserver" if workers > 0 else None)

    def __len__(self) -> int:
        return len(self._batches)

    def set_epoch(self, epoch: int) -> None:
        """Training: the next pass is epoch `epoch`, whose order and jitter follow from (seed, epoch)."""
        self._batches.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in worker_batches(self._loader):
            yield self._to_device(batch)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        vectors = batch["vector"].to(self._device, non_blocking=True)  # (N, len(LABEL_VECTOR))
        image = normalize_batch(batch["image"].to(self._device, non_blocking=True), self._cfg)
        return {"image": image, **split_label_vector(vectors), "key": list(batch["key"])}


def worker_batches(loader: DataLoader) -> Iterator[Any]:
    """The loader's batches, with an HnpError from a worker reworded to its own message (`worker_message`)."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except HnpError as err:
            raise HnpError(worker_message(err)) from None
        yield batch


def worker_message(err: HnpError) -> str:
    """The original message of an HnpError raised in a worker: torch re-raises it with the worker's traceback
    folded into the text, which the CLI would print."""
    return str(err).rsplit("HnpError: ", 1)[-1].strip()


def worker_init(owner: int) -> Callable[[int], None]:
    """The DataLoader's `worker_init_fn` for workers of process `owner`: each ends with it (`hnp.workers`), and
    uses one OpenCV thread (a worker is one process doing one image at a time; more would only oversubscribe)."""
    return functools.partial(_init_worker, owner)


def _init_worker(owner: int, worker_id: int) -> None:
    del worker_id
    exit_with(owner)
    cv2.setNumThreads(1)
