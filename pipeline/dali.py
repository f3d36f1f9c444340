"""The DALI input pipeline: webdataset shards -> grayscale decode -> CLAHE -> resize -> [jitter], then
normalization in torch on the training device.

    loader = DaliLoader(cfg.data, split_shards("shards", ["fold1", "fold2", "fold3"]), training=True,
                        rank=rank, world_size=world_size, seed=cfg.train.seed, device="cuda:0")
    for batch in loader: ...     # batch["image"]: float32 (N, C, S, S) on cuda:0

On a GPU the JPEG decode is `mixed` (nvJPEG, with the hardware JPEG decoder where the GPU has one) and CLAHE,
resize, jitter and normalization run on the GPU, unless `cfg.dali_device` is "cpu": then decode and preprocessing
run on `cfg.num_threads` CPU threads and the finished batch is copied to the GPU. With `device="cpu"` DALI runs
on the CPU throughout.
Each rank reads its own contiguous part of the samples (DALI's `shard_id`/`num_shards`, the same parts as
`pipeline.dataset.rank_range`).

Epochs: in training the reader streams without end (seeded shuffle buffer; each reader epoch moves every rank on
to the next rank's part) and an epoch is a fixed number of full batches, equal on all ranks. `set_epoch(e)` starts
epoch e's own stream: rank r reads from part (r + e) mod world_size with a shuffle and jitter seeded by (seed, r,
e), so a fold resumed at epoch e sees the batches an uninterrupted run would have seen. In evaluation each
rank's reader sticks to its part and pads it to whole batches; the padding is cut off here, so every sample is
yielded exactly once across ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray

from hnp.config import DataConfig
from hnp.errors import HnpError
from hnp.shard_format import IMAGE_EXT, LABEL_EXT, source_key, split_label_vector
from pipeline.checks import dali_message, explain_failure
from pipeline.dataset import (
    SampleEntry,
    batch_sizes,
    index_path,
    rank_range,
    read_samples,
    stream_seed,
)
from pipeline.transforms import CONTRAST_CENTER, normalize_batch

READER_NAME = "reader"


def build_dali_pipeline(cfg: DataConfig, shards: Sequence[Path], *, training: bool, rank: int, world_size: int,
                        seed: int, device_id: int | None, epoch: int = 0) -> Pipeline:
    """An unbuilt DALI pipeline whose outputs are (images uint8 (N, S, S, 1), label vectors float32 (N, 7)).

    Args:
        cfg: the data section of the config.
        shards: tar paths, each with its `.idx` beside it.
        training: shuffle, stream and apply `cfg.augment`; otherwise read in order, each sample once.
        rank: this process's rank.
        world_size: number of ranks: the reader's `num_shards`.
        seed: run seed; combined with the rank and epoch so ranks and epochs draw different shuffles and jitter.
        device_id: CUDA device for `mixed` decode and GPU operators, or None for a CPU-only pipeline.
        epoch: the training epoch the stream starts at; rank + epoch is the reader's `shard_id`.
    """

    @pipeline_def(batch_size=cfg.batch_size, num_threads=cfg.num_threads, device_id=device_id,
                  seed=stream_seed(seed, rank, epoch), prefetch_queue_depth=2)
    def hnp_pipeline():  # noqa: ANN202 - DALI graph definition
        jpegs, labels = fn.readers.webdataset(
            paths=[str(shard) for shard in shards], index_paths=[str(index_path(Path(s))) for s in shards],
            ext=[IMAGE_EXT, LABEL_EXT], dtypes=[types.UINT8, types.FLOAT], missing_component_behavior="error",
            shard_id=(rank + epoch) % world_size, num_shards=world_size, name=READER_NAME,
            # read(), not mmap: every page of a mapped tar that was read counts in the process's RSS while it stays
            # cached (one pass over 600 MB of shards: +600 MB of RSS with mmap, none without)
            dont_use_mmap=True,
            random_shuffle=training, initial_fill=max(1, cfg.shuffle_buffer),
            stick_to_shard=not training, pad_last_batch=not training)
        return model_images_graph(jpegs, cfg, training, device_id), labels

    return hnp_pipeline()


def model_images_graph(jpegs: Any, cfg: DataConfig, training: bool, device_id: int | None) -> Any:
    """JPEG bytes -> the model-size uint8 images (S, S, 1) on the training device: decode, then
    `preprocess_graph`, on the GPU or (`cfg.dali_device` "cpu", or no GPU) on CPU threads.

    Args:
        jpegs: the encoded images.
        cfg: the data section of the config.
        training: apply `cfg.augment` when it is enabled.
        device_id: CUDA device, or None for a CPU-only pipeline.
    """
    on_gpu = device_id is not None and cfg.dali_device == "gpu"
    images = preprocess_graph(decode_graph(jpegs, on_gpu), cfg, training)
    if device_id is not None and not on_gpu:
        images = images.gpu()  # the model-size batch crosses on DALI's stream, ahead of the step that takes it
    return images


def preprocess_graph(images: Any, cfg: DataConfig, training: bool) -> Any:
    """DALI operators for `pipeline.transforms.model_image`: uint8 (H, W, 1) -> uint8 (S, S, 1); normalization
    happens in torch on the training device (`pipeline.transforms.normalize_batch`).

    Args:
        images: decoded grayscale images, HWC, on the CPU or the GPU.
        cfg: the data section of the config.
        training: apply `cfg.augment` when it is enabled.
    """
    size = cfg.image_size
    images = clahe_graph(images, cfg)
    if cfg.resize == "stretch":
        images = fn.resize(images, size=[size, size])
    else:
        images = fn.resize(images, mode="not_larger", size=[size, size], subpixel_scale=False)
        images = fn.crop(images, crop=[size, size], out_of_bounds_policy="pad", fill_values=0)
    if training and cfg.augment.enabled:
        images = jitter_graph(images, cfg)
    return images


def decode_graph(jpegs: Any, on_gpu: bool) -> Any:
    """JPEG bytes -> uint8 gray (H, W, 1): nvJPEG (`mixed`) on the GPU, libjpeg-turbo on the CPU; the CPU decode
    gives `pipeline.transforms.decode_gray`'s pixels."""
    return fn.decoders.image(jpegs, device="mixed" if on_gpu else "cpu", output_type=types.GRAY)


def clahe_graph(images: Any, cfg: DataConfig) -> Any:
    """CLAHE with the config's tiles and clip limit, or the images as they are when `cfg.clahe` is off: the DALI form
    of `pipeline.transforms.apply_clahe`, pixel for pixel on the CPU."""
    if not cfg.clahe:
        return images
    return fn.clahe(images, tiles_x=cfg.clahe_tiles, tiles_y=cfg.clahe_tiles, clip_limit=cfg.clahe_clip_limit)


def jitter_graph(images: Any, cfg: DataConfig) -> Any:
    """Random zoom about the center and shift (black outside), then contrast and brightness: the DALI form of
    `pipeline.transforms.apply_jitter`. No flips, no rotations. A range of 0 leaves that step out."""
    aug, size = cfg.augment, cfg.image_size
    if aug.scale > 0 or aug.shift > 0:
        center = size / 2  # DALI puts 0 at the corner of the first pixel
        inverse = 1 / _uniform(1.0, aug.scale)
        shift = fn.random.uniform(range=[-aug.shift, aug.shift], shape=[2]) * size if aug.shift > 0 else 0.0
        # destination -> source: src = center + (dst - center - shift) / scale
        matrix = fn.transforms.translation(offset=-(shift + center) if aug.shift > 0 else [-center, -center])
        matrix = fn.transforms.scale(matrix, scale=fn.stack(inverse, inverse) if aug.scale > 0 else [1.0, 1.0])
        matrix = fn.transforms.translation(matrix, offset=[center, center])
        images = fn.warp_affine(images, matrix=matrix, fill_value=0, interp_type=types.INTERP_LINEAR)
    if aug.brightness > 0 or aug.contrast > 0:
        images = fn.brightness_contrast(images, contrast=_uniform(1.0, aug.contrast), contrast_center=CONTRAST_CENTER,
                                        brightness_shift=_uniform(0.0, aug.brightness))
    return images


def _uniform(middle: float, half_width: float) -> Any:
    """A per-sample draw from [middle - half_width, middle + half_width], or the constant when the width is 0
    (DALI refuses an empty range)."""
    if half_width <= 0:
        return middle
    return fn.random.uniform(range=[middle - half_width, middle + half_width])


def device_index(device: str | torch.device) -> int | None:
    """The CUDA device index for DALI, or None for the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    if device.type != "cuda":
        raise ValueError(f"DALI runs on the CPU or a CUDA device, not {device}")
    return device.index if device.index is not None else torch.cuda.current_device()


class DaliLoader:
    """Batches from the DALI pipeline as torch tensors on `device` (the `build_loader` contract).

    Args:
        cfg: the data section of the config.
        shards: tar paths (`pipeline.dataset.split_shards`).
        training: see `build_dali_pipeline`.
        rank: this process's rank.
        world_size: number of ranks.
        seed: run seed.
        device: "cpu" or a CUDA device.
    """

    def __init__(self, cfg: DataConfig, shards: Sequence[Path], *, training: bool, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self._samples = read_samples(shards)  # also refuses truncated tars, naming shard and key
        start, stop = rank_range(len(self._samples), rank, world_size)
        self._sizes = batch_sizes(len(self._samples), stop - start, world_size, cfg.batch_size, training)
        self._device = torch.device(device)
        self._cfg = cfg
        self._training = training
        self._stream = {"shards": shards, "rank": rank, "world_size": world_size, "seed": seed}
        self._runs = 0  # pipeline runs per evaluation pass, padding included
        self._unread = 0  # runs of the current evaluation pass not yet taken from the pipeline
        self._pipe: Pipeline | None = None
        if self._sizes:
            self._start_stream(epoch=0)
            self._runs = 0 if training else self._padded_runs(cfg.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Training: start epoch `epoch`'s own stream (see the module docstring), unless it is the one running."""
        if self._training and self._pipe is not None and epoch != self._epoch:
            self._start_stream(epoch)

    def _start_stream(self, epoch: int) -> None:
        self._pipe = None  # the old pipeline's threads and buffers go before the new ones come
        pipe = build_dali_pipeline(self._cfg, training=self._training, device_id=device_index(self._device),
                                   epoch=epoch, **self._stream)
        try:
            pipe.build()
        except RuntimeError as err:  # configuration or environment (e.g. no CUDA), not a sample
            raise HnpError(f"could not build the DALI pipeline: {dali_message(str(err))}") from err
        self._pipe, self._epoch, self._ran = pipe, epoch, 0
        # The order the reader goes through the samples: its own part, then (training only) the next ranks'.
        rank, world_size = self._stream["rank"], self._stream["world_size"]
        start, stop = rank_range(len(self._samples), (rank + epoch) % world_size, world_size)
        samples = self._samples
        self._reading_order = samples[start:] + samples[:start] if self._training else samples[start:stop]

    def _padded_runs(self, batch_size: int) -> int:
        """DALI pads every rank's part to the largest part, then to whole batches; a rank whose part is smaller
        has whole batches of padding at the end of each pass, which are run here but never yielded."""
        meta = self._pipe.reader_meta(READER_NAME)
        padded_part = meta["epoch_size_padded"] // meta["number_of_shards"]
        return -(-padded_part // batch_size)

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._drain()
        self._unread = self._runs
        for size in self._sizes:
            outputs = self._run()
            self._unread = max(0, self._unread - 1)
            yield self._to_batch(outputs, size)

    def _drain(self) -> None:
        """Run off the padding, or what a broken-off evaluation pass left, so a pass starts at its first sample."""
        while self._unread:
            self._run()
            self._unread -= 1

    def _run(self) -> tuple:
        try:
            outputs = self._pipe.run()
        except RuntimeError as err:
            raise explain_failure(err, self._suspects()) from err
        self._ran += 1
        return outputs

    def _suspects(self) -> list[SampleEntry]:
        """The samples the failing run can have been reading, when DALI's error does not name one: the batch
        being taken, the one before and the prefetched ones, plus, in training, the shuffle buffer's reach."""
        batch = self._cfg.batch_size
        if self._training:
            position, reach = self._ran * batch, self._cfg.shuffle_buffer + 3 * batch
        else:
            position, reach = (self._ran % self._runs) * batch, 3 * batch
        order = self._reading_order
        first = position - batch
        return [order[index % len(order)] for index in range(first, first + min(len(order), batch + reach))]

    def _to_batch(self, outputs: tuple, size: int) -> dict[str, Any]:
        images, labels = outputs
        dense = images.as_tensor()  # every image is (S, S, 1): one (N, S, S, 1) block
        if self._device.type == "cuda":
            image = torch.empty(dense.shape(), dtype=torch.uint8, device=self._device)
            feed_ndarray(dense, image, cuda_stream=torch.cuda.current_stream(self._device))
        else:
            image = torch.from_numpy(np.asarray(dense))  # a view of DALI's buffer: normalize_batch copies
        # np.array copies: DALI reuses its output buffers on later runs
        vectors = torch.from_numpy(np.array(labels.as_tensor())[:size])  # (N, len(LABEL_VECTOR))
        if self._device.type == "cuda":
            # a copy from pageable memory would make the host wait, once per batch, until the GPU's queue drains
            vectors = vectors.pin_memory()
        vectors = vectors.to(self._device, non_blocking=True)
        keys = [source_key(labels[i].source_info()) for i in range(size)]
        return {"image": normalize_batch(image[:size, :, :, 0], self._cfg), **split_label_vector(vectors),
                "key": keys}
