r"""Images/s of our training step (train.loop.train_one_epoch) against a bare timm forward/backward/step loop,
same model, batch, precision and memory format, in one process, on synthetic in-memory batches.

    python bench/train_step.py                                          # CPU: test_efficientnet, 128 px, fp32
    python bench/train_step.py --model efficientnet_b5 --size 456 --channels 3 --batch 32 --amp bf16 \
        --channels-last --device cuda --steps 50 --rounds 3             # GPU: the paper's model

The two loops alternate for --rounds rounds; the best round of each (timeit's rule: slower rounds measure other
load on the machine, not the code) and the medians are reported. Our step adds task targets, the TaskLoss, the
grad scaler (a no-op unless fp16), the per-step LR scheduler and the device-side loss sum; the ratio says what
they cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timm_step import bare_steps, synthetic_batch, timed  # noqa: E402
from hnp.config import ExperimentConfig, load_config  # noqa: E402
from train.loop import FoldContext, build_trainer, train_one_epoch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="test_efficientnet")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace) -> ExperimentConfig:
    overrides = [f"model.name={args.model}", 'model.pretrained="none"', "model.task=levels", "model.drop_rate=0.0",
                 f"data.image_size={args.size}", f"data.channels={args.channels}", f"data.batch_size={args.batch}",
                 f'train.amp="{args.amp}"', f"train.channels_last={str(args.channels_last).lower()}"]
    return load_config(None, overrides)


class RepeatLoader:
    """The same batch `steps` times: no input cost, only the step is measured."""

    def __init__(self, batch: dict, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return (self.batch for _ in range(self.steps))


def ours(cfg: ExperimentConfig, batch: dict, steps: int, device: torch.device) -> float:
    """Images/s of train_one_epoch over `steps` batches."""
    trainer = build_trainer(cfg, steps, FoldContext(fold=0, device=device))
    train_one_epoch(trainer, RepeatLoader(batch, 2), progress=False)  # warm-up
    stats = train_one_epoch(trainer, RepeatLoader(batch, steps), progress=False)
    return stats.images_per_s


def bare(cfg: ExperimentConfig, batch: dict, steps: int, device: torch.device) -> float:
    """Images/s of the textbook loop: timm model, BCE-with-logits, Adam, nothing else."""
    seconds = timed(bare_steps(cfg, batch, device), steps, warmup=2, device=device)
    return steps * batch["image"].shape[0] / seconds


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    cfg = bench_config(args)
    batch = synthetic_batch(cfg, device)
    results: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(args.rounds):
        results["bare"].append(bare(cfg, batch, args.steps, device))
        results["ours"].append(ours(cfg, batch, args.steps, device))
    print(f"model={args.model} size={args.size} batch={args.batch} amp={args.amp} "
          f"channels_last={args.channels_last} device={device} threads={torch.get_num_threads()}")
    for name, label in (("bare", "bare timm loop "), ("ours", "train_one_epoch")):
        values = results[name]
        print(f"{label}: best {max(values):8.1f} img/s, median {statistics.median(values):8.1f} "
              f"(rounds: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"ratio ours/bare: best {max(results['ours']) / max(results['bare']):.3f}, "
          f"median {statistics.median(results['ours']) / statistics.median(results['bare']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
