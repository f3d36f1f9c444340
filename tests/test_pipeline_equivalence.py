"""The two loaders preprocess alike: the decode and CLAHE steps of the project's DALI graph (`pipeline.dali`) give
OpenCV's pixels exactly; after the resize the tensors agree within a stated tolerance.

Tolerance, in 8-bit gray levels (a tensor difference times std x 255): at most RESIZE_MAX_LEVELS on any pixel
(hard edges, e.g. the test images' bright block; smooth content differs by 1-2) and RESIZE_MEAN_LEVELS on average.
Both resizers use the antialiased bilinear (triangle) filter; they round weights differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def
from support.shards import build_shards

from hnp.config import AugmentConfig, DataConfig
from pipeline import build_loader, split_shards
from pipeline.dali import clahe_graph, decode_graph
from pipeline.dataset import index_path, read_samples
from pipeline.transforms import apply_clahe, channel_stats, decode_gray

RESIZE_MAX_LEVELS = 6.0
RESIZE_MEAN_LEVELS = 0.25
ALL_SPLITS = ["fold0", "fold1", "fold2", "fold3", "test"]

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shards(tmp_path_factory.mktemp("equivalence"), patients=12)


@pytest.fixture(scope="module")
def large_shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight radiograph-sized images (1400-2100 px sides), as the paper's inputs before resizing to 456."""
    return build_shards(tmp_path_factory.mktemp("large"), patients=8, images_per_patient=1, sides=(1400, 2100))


def dali_decoded(shards: list[Path], cfg: DataConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(decoded, CLAHE'd) images of every sample, in order, from the project's DALI graph on the CPU: the decode
    and CLAHE steps `pipeline.dali.build_dali_pipeline` and `preprocess_graph` are made of."""
    count = len(read_samples(shards))

    @pipeline_def(batch_size=count, num_threads=1, device_id=None)
    def decode_and_clahe():  # noqa: ANN202 - DALI graph definition
        jpegs = fn.readers.webdataset(paths=[str(s) for s in shards], index_paths=[str(index_path(s)) for s in shards],
                                      ext=["jpg"])
        gray = decode_graph(jpegs, on_gpu=False)
        return gray, clahe_graph(gray, cfg)

    pipe = decode_and_clahe()
    pipe.build()
    gray, clahe = pipe.run()
    return ([np.array(gray[i])[:, :, 0] for i in range(count)], [np.array(clahe[i])[:, :, 0] for i in range(count)])


@pytest.mark.parametrize(("clip_limit", "tiles"), [(2.0, 8), (4.0, 4), (1.0, 16)])
def test_dali_decode_and_clahe_equal_opencv_pixel_for_pixel(shards_dir: Path, clip_limit: float, tiles: int) -> None:
    shards = split_shards(shards_dir, ALL_SPLITS)
    cfg = DataConfig(clahe_clip_limit=clip_limit, clahe_tiles=tiles)
    decoded, equalized = dali_decoded(shards, cfg)
    for sample, dali_gray, dali_clahe in zip(read_samples(shards), decoded, equalized, strict=True):
        gray = decode_gray(sample.read("jpg"), sample.key)
        np.testing.assert_array_equal(dali_gray, gray, err_msg=f"decode differs on {sample.key}")
        clahe = apply_clahe(gray, cfg)
        assert not np.array_equal(clahe, gray)
        np.testing.assert_array_equal(dali_clahe, clahe, err_msg=f"CLAHE differs on {sample.key}")


def gray_level_difference(cfg: DataConfig, shards: list[Path], other: DataConfig) -> torch.Tensor:
    """|cfg's batches - other's batches| in 8-bit gray levels, (samples, C, S, S); checks the keys match."""
    first = list(build_loader(cfg, shards, training=False))
    second = list(build_loader(other, shards, training=False))
    assert [b["key"] for b in first] == [b["key"] for b in second]
    _, std = channel_stats(cfg)
    scale = torch.tensor(std).view(1, -1, 1, 1) * 255
    return torch.cat([(a["image"].cpu() - b["image"].cpu()).abs() * scale for a, b in zip(first, second, strict=True)])


@pytest.mark.parametrize(("resize", "channels", "image_size"), [("stretch", 1, 64), ("pad", 3, 64), ("pad", 1, 100)])
def test_torch_loader_matches_dali_within_tolerance(shards_dir: Path, resize: str, channels: int,
                                                    image_size: int) -> None:
    shards = split_shards(shards_dir, ALL_SPLITS)
    dali = DataConfig(image_size=image_size, channels=channels, resize=resize, batch_size=8, num_threads=1)
    levels = gray_level_difference(dali, shards, DataConfig(**{**dali.__dict__, "loader": "torch", "num_threads": 0}))
    assert levels.max() <= RESIZE_MAX_LEVELS and levels.mean() <= RESIZE_MEAN_LEVELS


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_torch_loader_matches_dali_at_the_paper_size(large_shards_dir: Path, resize: str) -> None:
    shards = split_shards(large_shards_dir, ALL_SPLITS)
    dali = DataConfig(image_size=456, channels=1, resize=resize, batch_size=4, num_threads=2)
    levels = gray_level_difference(dali, shards, DataConfig(**{**dali.__dict__, "loader": "torch", "num_threads": 0}))
    assert levels.shape[0] == 8
    assert levels.max() <= RESIZE_MAX_LEVELS and levels.mean() <= RESIZE_MEAN_LEVELS


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_gpu_pipeline_matches_cpu_pipeline(large_shards_dir: Path, resize: str) -> None:
    """`mixed` (nvJPEG) decode and GPU CLAHE/resize against the CPU pipeline; nvJPEG's IDCT may differ from
    libjpeg-turbo's by a level or two, which CLAHE can amplify, hence the looser mean."""
    shards = split_shards(large_shards_dir, ALL_SPLITS)
    cfg = DataConfig(image_size=456, channels=3, resize=resize, batch_size=4, num_threads=2)
    batches = list(build_loader(cfg, shards, training=False, device="cuda"))
    assert all(batch["image"].is_cuda and batch["labels"].is_cuda for batch in batches)
    cpu = list(build_loader(cfg, shards, training=False, device="cpu"))
    assert [b["key"] for b in batches] == [b["key"] for b in cpu]
    _, std = channel_stats(cfg)
    scale = torch.tensor(std).view(1, -1, 1, 1) * 255
    levels = torch.cat([(g["image"].cpu() - c["image"]).abs() * scale for g, c in zip(batches, cpu, strict=True)])
    assert levels.mean() <= 1.0 and torch.quantile(levels.flatten()[::97], 0.999) <= 16


@pytest.mark.gpu
@needs_gpu
def test_gpu_training_loader_runs_with_augmentation(large_shards_dir: Path) -> None:
    shards = split_shards(large_shards_dir, ALL_SPLITS)
    cfg = DataConfig(image_size=456, batch_size=2, num_threads=2, augment=AugmentConfig(enabled=True))
    loader = build_loader(cfg, shards, training=True, device="cuda", world_size=2, rank=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    assert all(batch["image"].shape == (2, 3, 456, 456) and batch["image"].is_cuda for batch in batches)
