"""`build_loader`: the one entry the training and evaluation code calls; `cfg.loader` picks DALI or torch.

    loader = build_loader(cfg.data, split_shards(shards_dir, ["fold0"]), training=False, rank=rank,
                          world_size=world_size, device=device)
    for batch in loader:
        logits = model(batch["image"])       # float32 (N, C, S, S) on `device`, normalized
        batch["labels"]                      # float32 (N, 5), LEVELS order; batch["any"], batch["age"]: (N,)
        batch["key"]                         # list[str], the sample keys

`len(loader)` is the number of batches per epoch: equal on every rank in training; in evaluation every sample
arrives exactly once across ranks (ranks may then differ by one batch: gather results after the pass, not per
batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from hnp.config import DataConfig


class Loader(Protocol):
    """What both loaders offer."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def set_epoch(self, epoch: int) -> None:
        """Training: make the next pass epoch `epoch`, the same batches in any process that asks for that epoch
        (a resumed fold); without it, each pass goes on from the last. No effect in evaluation."""
        ...


def build_loader(cfg: DataConfig, shards: Sequence[Path], *, training: bool, rank: int = 0, world_size: int = 1,
                 seed: int = 0, device: Any = "cpu") -> Loader:
    """A loader over `shards` for one rank.

    Args:
        cfg: the data section of the config; `cfg.loader` is "dali" or "torch".
        shards: tar paths from `pipeline.dataset.split_shards`.
        training: shuffle, augment (when `cfg.augment.enabled`) and yield equal full batches on every rank;
            otherwise yield every sample once across ranks, in shard order, no augmentation.
        rank: this process's rank among `world_size`.
        world_size: number of data-parallel ranks.
        seed: run seed (shuffle order and augmentation draws).
        device: where the batch tensors go, "cpu" or a CUDA device.
    """
    # Imported here: each loader pulls in heavy libraries only when chosen.
    if cfg.loader == "dali":
        from pipeline.dali import DaliLoader

        return DaliLoader(cfg, shards, training=training, rank=rank, world_size=world_size, seed=seed, device=device)
    from pipeline.torch_loader import TorchLoader

    return TorchLoader(cfg, shards, training=training, rank=rank, world_size=world_size, seed=seed, device=device)
