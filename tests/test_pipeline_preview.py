"""`hnp preview`: the PNG grid and the tensors are what the evaluation loader yields, labels included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.shards import build_shards

from hnp.cli import main
from hnp.config import load_config
from pipeline import build_loader, split_shards


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shards(tmp_path_factory.mktemp("preview"))


def test_preview_writes_the_loader_output(shards_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview"
    overrides = ["data.image_size=64", "data.resize=pad", "data.num_threads=1"]
    argv = ["preview", "--shards", str(shards_dir), "--split", "fold1", "--n", "3", "--out", str(out)]
    assert main(argv + [arg for item in overrides for arg in ("--set", item)]) == 0
    images, labels = np.load(out / "images.npy"), np.load(out / "labels.npy")
    keys = (out / "keys.txt").read_text().split()
    assert images.shape == (3, 3, 64, 64) and images.dtype == np.float32 and labels.shape == (3, 7)
    cfg = load_config(None, overrides).data
    batch = next(iter(build_loader(cfg, split_shards(shards_dir, ["fold1"]), training=False)))
    assert keys == batch["key"][:3]
    np.testing.assert_array_equal(images, batch["image"][:3].numpy())
    vector = torch.cat([batch["labels"], batch["any"][:, None], batch["age"][:, None]], dim=1)[:3]
    np.testing.assert_array_equal(labels, vector.numpy())
    png = (out / "preview.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_preview_unknown_split_is_a_clean_error(shards_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--shards", str(shards_dir), "--split", "fold7", "--out", str(tmp_path)]) == 2
    assert "no split 'fold7'" in capsys.readouterr().err
