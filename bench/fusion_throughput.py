r"""Training throughput of the fusion model (films/s) against the image-level model (images/s): the same timm
backbone, image size, precision and films per step, both through our training step (train.loop.train_one_epoch),
in one process, on synthetic in-memory batches (no loader cost: the model's step alone).

    python bench/fusion_throughput.py                                     # CPU: test_efficientnet, 128 px
    python bench/fusion_throughput.py --model efficientnet_b5 --size 456 --channels 3 --studies 8 --amp bf16 \
        --channels-last --device cuda --steps 30 --rounds 3               # GPU: the paper's backbone

A fusion step takes --studies studies of 1-6 films (the counts cycle 1, 2, ..., 6: 3.5 films a study on average);
the image step takes as many single images as those studies hold films. The two alternate for --rounds rounds;
the best round of each (slower rounds measure other load on the machine) and the medians are reported, and
their ratio: fusion films/s over image-model images/s (the issue's target: at least 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_step import RepeatLoader  # noqa: E402
from hnp.config import ExperimentConfig, load_config  # noqa: E402
from hnp.levels import VIEWS, view_id  # noqa: E402
from train.loop import FoldContext, build_trainer, train_one_epoch  # noqa: E402

FILM_COUNTS = (1, 2, 3, 4, 5, 6)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="test_efficientnet")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--studies", type=int, default=6, help="studies per fusion batch")
    parser.add_argument("--fusion", default="attention", choices=["mean", "attention"])
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace, fusion: str, batch: int) -> ExperimentConfig:
    overrides = [f"model.name={args.model}", 'model.pretrained="none"', "model.task=levels", "model.drop_rate=0.0",
                 f"model.fusion={fusion}", f"data.image_size={args.size}", f"data.channels={args.channels}",
                 f"data.batch_size={batch}", f'train.amp="{args.amp}"',
                 f"train.channels_last={str(args.channels_last).lower()}"]
    return load_config(None, overrides)


def study_batch(studies: int, channels: int, size: int, device: torch.device) -> dict[str, Any]:
    """A seeded study batch (pipeline.studies's format): study b has FILM_COUNTS[b % 6] films of the first views."""
    counts = torch.tensor([FILM_COUNTS[b % len(FILM_COUNTS)] for b in range(studies)])
    mask = torch.arange(int(counts.max()))[None, :] < counts[:, None]
    views = torch.full(mask.shape, -1, dtype=torch.int64)
    views[mask] = torch.tensor([view_id(VIEWS[slot]) for count in counts.tolist() for slot in range(count)])
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(studies, 5, generator=generator) < 0.3).float()
    films = torch.randn(int(counts.sum()), channels, size, size, generator=generator)
    return {"image": films.to(device), "mask": mask.to(device), "view": views.to(device), "labels": labels.to(device),
            "any": labels.amax(dim=1).to(device), "age": torch.full((studies,), 50.0, device=device),
            "key": [f"s{b}" for b in range(studies)]}


def image_batch(films: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """The same films as single images (the image-level model's batch)."""
    labels = (torch.rand(len(films), 5, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    return {"image": films, "labels": labels.to(device), "any": labels.amax(dim=1).to(device),
            "age": torch.full((len(films),), 50.0, device=device), "key": [f"r{i}" for i in range(len(films))]}


def films_per_s(cfg: ExperimentConfig, batch: dict[str, Any], steps: int, device: torch.device) -> float:
    """Films (images) per second of train_one_epoch over `steps` copies of `batch`, after 2 warm-up steps."""
    trainer = build_trainer(cfg, steps, FoldContext(fold=0, device=device))
    train_one_epoch(trainer, RepeatLoader(batch, 2), progress=False)
    return train_one_epoch(trainer, RepeatLoader(batch, steps), progress=False).images_per_s


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    studies = study_batch(args.studies, args.channels, args.size, device)
    images = image_batch(studies["image"], device)
    configs = {"fusion": bench_config(args, args.fusion, args.studies),
               "image": bench_config(args, "none", len(images["image"]))}
    batches = {"fusion": studies, "image": images}
    results: dict[str, list[float]] = {"image": [], "fusion": []}
    for _ in range(args.rounds):
        for name in ("image", "fusion"):
            torch.manual_seed(0)
            results[name].append(films_per_s(configs[name], batches[name], args.steps, device))
    print(f"model={args.model} size={args.size} studies={args.studies} films={len(images['image'])} "
          f"fusion={args.fusion} amp={args.amp} channels_last={args.channels_last} device={device} "
          f"threads={torch.get_num_threads()}")
    for name, label in (("image", "image model, images/s"), ("fusion", "fusion model, films/s ")):
        values = results[name]
        print(f"{label}: best {max(values):8.1f}, median {statistics.median(values):8.1f} "
              f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"ratio fusion/image: best {max(results['fusion']) / max(results['image']):.3f}, "
          f"median {statistics.median(results['fusion']) / statistics.median(results['image']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
