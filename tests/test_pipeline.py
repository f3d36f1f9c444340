"""The input pipeline on CPU: shard lists, epoch semantics over simulated ranks, batch contents, bad shards.

Both loaders (DALI's CPU pipeline and the torch + OpenCV fallback) run for real on small sharded test data.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from support.shards import build_shards, overwrite_component

from hnp.config import AugmentConfig, DataConfig
from hnp.errors import HnpError
from pipeline import build_loader, split_shards
from pipeline.dataset import batch_sizes, rank_range, read_samples

LOADERS = ("dali", "torch")
TRAIN = ["fold1", "fold2", "fold3"]


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only test shards (tests that damage shards copy them first)."""
    return build_shards(tmp_path_factory.mktemp("pipeline"))


def small_cfg(loader: str, **changes) -> DataConfig:
    """A tiny config; the torch loader works in-process (0 workers) except where a test asks for workers."""
    values = {"image_size": 48, "batch_size": 4, "num_threads": 1 if loader == "dali" else 0, "shuffle_buffer": 8,
              "loader": loader}
    return DataConfig(**{**values, **changes})


def sample_json(shards: list[Path]) -> dict[str, dict]:
    """key -> the sample's `.json` record, read with tarfile (independent of the loaders)."""
    records = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    records[member.name[:-5]] = json.load(tar.extractfile(member))
    return records


def epoch_keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def test_split_shards_lists_tars_in_dataset_json_order(shards_dir: Path) -> None:
    record = json.loads((shards_dir / "dataset.json").read_text())
    tars = split_shards(shards_dir, ["fold1", "test"])
    expected = [shards_dir / s["file"] for split in ("fold1", "test") for s in record["splits"][split]["shards"]]
    assert tars == expected and len(tars) > 2
    assert len(read_samples(tars)) == record["splits"]["fold1"]["samples"] + record["splits"]["test"]["samples"]


def test_split_shards_errors_name_the_problem(shards_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(HnpError, match="no split 'fold9'"):
        split_shards(shards_dir, ["fold9"])
    with pytest.raises(HnpError, match="dataset.json: not found"):
        split_shards(tmp_path, ["fold0"])


@pytest.mark.parametrize(("total", "world_size"), [(9, 1), (9, 2), (9, 3), (10, 3), (2, 3)])
def test_rank_ranges_cover_every_sample_once(total: int, world_size: int) -> None:
    parts = [rank_range(total, rank, world_size) for rank in range(world_size)]
    assert [i for start, stop in parts for i in range(start, stop)] == list(range(total))
    sizes = [stop - start for start, stop in parts]
    assert max(sizes) - min(sizes) <= 1


def test_batch_sizes() -> None:
    assert batch_sizes(10, 5, 2, 2, training=True) == [2, 2]
    assert batch_sizes(10, 5, 2, 2, training=False) == [2, 2, 1]
    assert batch_sizes(10, 0, 11, 2, training=False) == []
    with pytest.raises(HnpError, match="no full batch"):
        batch_sizes(10, 3, 3, 4, training=True)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_evaluation_yields_every_sample_once_across_ranks(shards_dir: Path, loader: str, world_size: int) -> None:
    shards = split_shards(shards_dir, TRAIN)
    expected = [sample.key for sample in read_samples(shards)]
    seen = []
    for rank in range(world_size):
        part = build_loader(small_cfg(loader), shards, training=False, rank=rank, world_size=world_size)
        first, second = epoch_keys(part), epoch_keys(part)
        assert first == second, "a second evaluation pass must give the same samples in the same order"
        assert len(part) == -(-len(first) // 4)
        seen += first
    assert seen == expected  # each sample once, no padding duplicates, in shard order


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_training_epochs_have_equal_full_batches_on_every_rank(shards_dir: Path, loader: str,
                                                               world_size: int) -> None:
    shards = split_shards(shards_dir, TRAIN)
    total = len(read_samples(shards))
    cfg = small_cfg(loader, batch_size=2, shuffle_buffer=2)
    loaders = [build_loader(cfg, shards, training=True, rank=r, world_size=world_size, seed=3)
               for r in range(world_size)]
    expected_batches = (total // world_size) // 2
    for part in loaders:
        assert len(part) == expected_batches
        for _ in range(2):  # two epochs
            batches = list(part)
            assert len(batches) == expected_batches
            assert all(len(batch["key"]) == 2 and batch["image"].shape[0] == 2 for batch in batches)
    per_rank = [epoch_keys(part) for part in loaders]
    assert all(len(set(keys)) == len(keys) for keys in per_rank)  # no sample twice in one rank's epoch
    seen = set().union(*per_rank)
    assert seen <= {sample.key for sample in read_samples(shards)}
    # The ranks share the epoch out: the torch loader deals one permutation round-robin (no overlap); each DALI
    # reader starts in its own part, and only its shuffle buffer reaches into the next rank's part.
    overlap = sum(map(len, per_rank)) - len(seen)
    assert overlap <= (0 if loader == "torch" else world_size * cfg.shuffle_buffer), (overlap, per_rank)


@pytest.mark.parametrize("loader", LOADERS)
def test_training_order_is_shuffled_and_seeded(shards_dir: Path, loader: str) -> None:
    shards = split_shards(shards_dir, TRAIN)
    in_order = [sample.key for sample in read_samples(shards)]
    cfg = small_cfg(loader, batch_size=2)
    runs = {seed: epoch_keys(build_loader(cfg, shards, training=True, seed=seed)) for seed in (0, 1)}
    again = epoch_keys(build_loader(cfg, shards, training=True, seed=0))
    assert runs[0] == again
    assert runs[0] != runs[1]
    assert runs[0] != in_order[:len(runs[0])]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("world_size", [1, 2])
def test_an_epoch_is_the_same_in_a_resumed_run(shards_dir: Path, loader: str, world_size: int) -> None:
    """What a resumed fold relies on: a new loader asked for epoch 2 gives the batches (keys, pixels and jitter) that
    a loader which ran epoch 1 first gives for its epoch 2, on every rank; and epoch 2 is not epoch 1 again."""
    shards = split_shards(shards_dir, TRAIN)
    cfg = small_cfg(loader, augment=AugmentConfig(enabled=True))
    for rank in range(world_size):
        args = {"training": True, "seed": 3, "rank": rank, "world_size": world_size}
        running = build_loader(cfg, shards, **args)
        running.set_epoch(1)
        first = list(running)
        running.set_epoch(2)
        second = list(running)
        resumed = build_loader(cfg, shards, **args)
        resumed.set_epoch(2)
        again = list(resumed)
        assert [b["key"] for b in again] == [b["key"] for b in second] != [b["key"] for b in first]
        for ours, theirs in zip(again, second, strict=True):
            assert torch.equal(ours["image"], theirs["image"]) and torch.equal(ours["labels"], theirs["labels"])


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(("channels", "resize"), [(1, "stretch"), (3, "pad")])
def test_batch_contents_match_the_shards(shards_dir: Path, loader: str, channels: int, resize: str) -> None:
    shards = split_shards(shards_dir, ["test"])
    records = sample_json(shards)
    cfg = small_cfg(loader, channels=channels, resize=resize, batch_size=2)
    batches = list(build_loader(cfg, shards, training=False))  # all kept: no batch may share a reused buffer
    for batch in batches:
        n = len(batch["key"])
        assert batch["image"].shape == (n, channels, 48, 48) and batch["image"].dtype == torch.float32
        assert batch["labels"].shape == (n, 5) and batch["any"].shape == (n,) and batch["age"].shape == (n,)
        for i, key in enumerate(batch["key"]):
            record = records[key]
            assert batch["labels"][i].tolist() == record["labels"]
            assert batch["any"][i].item() == record["any"]
            assert batch["age"][i].item() == pytest.approx(record["age"])
    batch = batches[0]
    if channels == 3:  # gray replicated, then normalized per channel: channels differ only by the affine map
        image = batch["image"][0]
        assert not torch.equal(image[0], image[1])
        assert torch.corrcoef(torch.stack([image[0].flatten(), image[2].flatten()]))[0, 1] > 0.999


def mark_quadrant(image: torch.Tensor) -> tuple[int, int]:
    """(row, column) quadrant of the brightest 4x4 block: where the test images' bright mark is."""
    pooled = torch.nn.functional.avg_pool2d(image[None, None], 4)[0, 0]
    row, column = divmod(int(pooled.argmax()), pooled.shape[1])
    return int(row >= pooled.shape[0] / 2), int(column >= pooled.shape[1] / 2)


@pytest.mark.parametrize("loader", LOADERS)
def test_augmentation_jitters_in_training_only_and_never_flips(shards_dir: Path, loader: str) -> None:
    shards = split_shards(shards_dir, ["test"])
    augment = AugmentConfig(enabled=True, scale=0.1, shift=0.05, brightness=0.1, contrast=0.1)
    cfg = small_cfg(loader, channels=1, batch_size=2, augment=augment)
    plain = {key: image for batch in build_loader(cfg, shards, training=False)
             for key, image in zip(batch["key"], batch["image"][:, 0], strict=True)}
    jittered = {key: image for batch in build_loader(cfg, shards, training=True)
                for key, image in zip(batch["key"], batch["image"][:, 0], strict=True)}
    assert jittered
    for key, image in jittered.items():
        assert not torch.allclose(image, plain[key]), "training batches must be jittered"
        assert mark_quadrant(plain[key]) == (0, 0)
        assert mark_quadrant(image) == (0, 0), "the top-left mark moved: a flip or a rotation?"
        assert mark_quadrant(image.flip(-1)) == (0, 1)  # the check would see a mirror


def test_torch_loader_with_worker_processes(shards_dir: Path, tmp_path: Path) -> None:
    """Two worker processes: the same batches as in-process loading, and a worker's error reaches the caller
    as a clean HnpError naming shard and key."""
    shards = split_shards(shards_dir, TRAIN)
    in_process = list(build_loader(small_cfg("torch"), shards, training=False, rank=1, world_size=2))
    with_workers = list(build_loader(small_cfg("torch", num_threads=2), shards, training=False, rank=1, world_size=2))
    assert [b["key"] for b in with_workers] == [b["key"] for b in in_process]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(in_process, with_workers, strict=True))
    _, damaged = damaged_copy(shards_dir, tmp_path)
    victim = read_samples(damaged)[0]
    overwrite_image(victim.shard, victim.key, b"\x00" * 64)
    with pytest.raises(HnpError) as caught:
        epoch_keys(build_loader(small_cfg("torch", num_threads=2), damaged, training=True))
    assert str(caught.value).startswith(f"{victim.shard}: sample {victim.key}: undecodable image")


def damaged_copy(source: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    copy = tmp_path / "shards"
    shutil.copytree(source, copy)
    return copy, split_shards(copy, ["test"])


def overwrite_image(shard: Path, key: str, data: bytes) -> None:
    """Replace the first bytes of a sample's JPEG in place, so the index stays valid."""
    overwrite_component(next(s for s in read_samples([shard]) if s.key == key), "jpg", data)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(("training", "victim_index"), [(False, -1), (True, 9)])
def test_undecodable_image_names_shard_and_key(shards_dir: Path, tmp_path: Path, loader: str, training: bool,
                                               victim_index: int) -> None:
    _, shards = damaged_copy(shards_dir, tmp_path)
    shards = shards + split_shards(tmp_path / "shards", TRAIN)
    victim = read_samples(shards)[victim_index]
    overwrite_image(victim.shard, victim.key, b"\x00" * 64)
    cfg = small_cfg(loader, batch_size=2)
    loader = build_loader(cfg, shards, training=training, rank=1, world_size=2)
    with pytest.raises(HnpError) as caught:
        for _ in range(3):  # epochs: in training, rank 1's reader reaches rank 0's part in its second epoch
            epoch_keys(loader)
    message = str(caught.value)
    assert str(victim.shard) in message and victim.key in message and "Traceback" not in message


@pytest.mark.parametrize("loader", LOADERS)
def test_truncated_tar_names_shard_and_key(shards_dir: Path, tmp_path: Path, loader: str) -> None:
    _, shards = damaged_copy(shards_dir, tmp_path)
    shard = shards[0]
    samples = read_samples([shard])
    cut = samples[-1].components["jpg"][0] + 10  # inside the last sample's image
    shard.write_bytes(shard.read_bytes()[:cut])
    with pytest.raises(HnpError, match=f"{shard}: truncated at sample {samples[-1].key}"):
        build_loader(small_cfg(loader), shards, training=False)


def test_missing_index_is_an_error(shards_dir: Path, tmp_path: Path) -> None:
    _, shards = damaged_copy(shards_dir, tmp_path)
    shards[1].with_suffix(".idx").unlink()
    with pytest.raises(HnpError, match="DALI index .* is missing"):
        read_samples(shards)


def test_every_sample_key_is_unique_and_has_labels(shards_dir: Path) -> None:
    shards = split_shards(shards_dir, ["fold0", "fold1", "fold2", "fold3", "test"])
    keys = Counter(sample.key for sample in read_samples(shards))
    assert max(keys.values()) == 1
    vector = np.frombuffer(read_samples(shards)[0].read("lbl"), "<f4")
    assert vector.shape == (7,)
    assert io.BytesIO(read_samples(shards)[0].read("jpg")).read(2) == b"\xff\xd8"
