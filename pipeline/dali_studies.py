"""The DALI loader of study batches (`data.loader: dali`): the kept films of each batch's studies are read by byte
range (`pipeline.dataset.SampleEntry`) and fed to DALI through `fn.external_source`, into the image loader's own
decode -> CLAHE -> resize [-> jitter] graph (`pipeline.dali.model_images_graph`): the same preprocessing, on the GPU
(nvJPEG "mixed" decode) or on CPU threads as `data.dali_device` says.

    loader = DaliStudyLoader(cfg.data, read_studies("shards", ["fold0"]), training=False, device="cuda:0")

The batch format and the rules for ranks, epochs and view dropout are `pipeline.studies`'s. The reader's order is
planned here, not by DALI (a webdataset reader streams films, not studies): each pass builds a pipeline seeded by
(seed, rank, epoch) whose external source yields that pass's batches of films, one DALI batch per study batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray

from hnp.config import DataConfig
from hnp.errors import HnpError
from hnp.jpeg import JpegError, inspect_jpeg
from hnp.shard_format import IMAGE_EXT
from pipeline.checks import dali_message, explain_failure
from pipeline.dali import device_index, model_images_graph
from pipeline.dataset import SampleEntry, stream_seed
from pipeline.studies import StudySample, assemble_batch, epoch_films
from pipeline.torch_loader import EpochBatches

PREFETCH = 2  # DALI batches prepared ahead of the one the model takes


class FilmBytes:
    """The external source of one pass: per DALI iteration, the JPEG bytes of one study batch's kept films.

    A film whose bytes are not a complete JPEG is an HnpError naming its shard, key and study here: a decoder may
    fill a truncated JPEG with gray without an error.

    Args:
        batches: per study batch, its films with the study key of each.
    """

    def __init__(self, batches: list[list[tuple[SampleEntry, str]]]) -> None:
        self.batches = batches
        self.position = 0

    def __iter__(self) -> FilmBytes:
        self.position = 0
        return self

    def __next__(self) -> list[np.ndarray]:
        if self.position >= len(self.batches):
            raise StopIteration
        films = self.batches[self.position]
        self.position += 1
        return [_jpeg_bytes(film, study) for film, study in films]


def _jpeg_bytes(film: SampleEntry, study: str) -> np.ndarray:
    data = film.read(IMAGE_EXT)
    try:
        inspect_jpeg(data)
    except JpegError as err:
        raise HnpError(f"{film.shard}: sample {film.key} (study {study}): undecodable image: {err}") from None
    return np.frombuffer(data, np.uint8)


def build_study_pipeline(cfg: DataConfig, source: FilmBytes, max_films: int, *, training: bool, seed: int,
                         device_id: int | None) -> Pipeline:
    """An unbuilt DALI pipeline whose output is the films of each study batch, uint8 (N, S, S, 1).

    Args:
        cfg: the data section of the config.
        source: the pass's film bytes.
        max_films: the most films a batch can hold (DALI's batch size; a study batch has N <= max_films).
        training: apply `cfg.augment`.
        seed: the pipeline's seed (the jitter draws).
        device_id: CUDA device for "mixed" decode and GPU operators, or None for a CPU-only pipeline.
    """

    @pipeline_def(batch_size=max_films, num_threads=cfg.num_threads, device_id=device_id, seed=seed,
                  prefetch_queue_depth=PREFETCH)
    def study_pipeline():  # noqa: ANN202 - DALI graph definition
        jpegs = fn.external_source(source=source, batch=True, dtype=types.UINT8, ndim=1, cycle=False)
        return model_images_graph(jpegs, cfg, training, device_id)

    return study_pipeline()


class DaliStudyLoader:
    """Study batches from DALI as torch tensors on `device` (`pipeline.studies`).

    Args:
        cfg: the data section of the config.
        studies: from `pipeline.studies.read_studies`.
        training: see `pipeline.studies.build_study_loader`.
        rank: this process's rank.
        world_size: number of ranks.
        seed: run seed.
        device: "cpu" or a CUDA device.
    """

    def __init__(self, cfg: DataConfig, studies: Sequence[StudySample], *, training: bool, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self._studies = list(studies)
        self._cfg, self._training, self._seed, self._rank = cfg, training, seed, rank
        self._device = torch.device(device)
        self._batches = EpochBatches(len(self._studies), cfg, training=training, rank=rank, world_size=world_size,
                                     seed=seed)
        self._max_films = cfg.batch_size * max(len(study.films) for study in self._studies)

    def __len__(self) -> int:
        return len(self._batches)

    def set_epoch(self, epoch: int) -> None:
        """Training: the next pass is epoch `epoch` (its order, view dropout and jitter follow from seed, epoch)."""
        self._batches.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self._batches.epoch
        plan = [[index for _, index in batch] for batch in self._batches]  # study indices per batch
        if not plan:
            return
        kept = [[epoch_films(self._studies[i], i, self._cfg, self._training, self._seed, epoch) for i in batch]
                for batch in plan]
        films = [[(self._studies[i].films[p], self._studies[i].key) for i, k in zip(batch, keep, strict=True)
                  for p in k] for batch, keep in zip(plan, kept, strict=True)]
        pipe = self._build(FilmBytes(films), epoch)
        for number, (batch, keep) in enumerate(zip(plan, kept, strict=True)):
            images = self._run(pipe, films, number)
            yield assemble_batch([self._studies[i] for i in batch], keep, images, self._cfg, self._device)

    def _build(self, source: FilmBytes, epoch: int) -> Pipeline:
        pipe = build_study_pipeline(self._cfg, source, self._max_films, training=self._training,
                                    seed=stream_seed(self._seed, self._rank, epoch),
                                    device_id=device_index(self._device))
        try:
            pipe.build()
        except RuntimeError as err:  # configuration or environment (e.g. no CUDA), not a sample
            raise HnpError(f"could not build the DALI pipeline: {dali_message(str(err))}") from err
        return pipe

    def _run(self, pipe: Pipeline, films: list[list[tuple[SampleEntry, str]]], number: int) -> torch.Tensor:
        """The uint8 (N, S, S) films of batch `number`, on the device."""
        try:
            (images,) = pipe.run()
        except RuntimeError as err:
            # the failing run read this batch or one of those prefetched after it
            suspects = [film for batch in films[number:number + 1 + PREFETCH] for film, _ in batch]
            raise explain_failure(err, suspects) from err
        dense = images.as_tensor()  # every film is (S, S, 1)
        if self._device.type == "cuda":
            out = torch.empty(dense.shape(), dtype=torch.uint8, device=self._device)
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self._device))
            return out[..., 0]
        return torch.from_numpy(np.array(dense))[..., 0]  # a copy: DALI reuses its buffers on later runs
