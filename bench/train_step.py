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
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hnp.config import ExperimentConfig, load_config  # noqa: E402
from train.loop import FoldContext, autocast, build_trainer, train_one_epoch  # noqa: E402


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


def synthetic_batch(cfg: ExperimentConfig, device: torch.device) -> dict:
    n, size = cfg.data.batch_size, cfg.data.image_size
    labels = (torch.rand(n, 5, device=device) < 0.3).float()
    return {"image": torch.randn(n, cfg.data.channels, size, size, device=device), "labels": labels,
            "any": labels.amax(dim=1), "age": torch.full((n,), 50.0, device=device), "key": [""] * n}


def ours(cfg: ExperimentConfig, batch: dict, steps: int, device: torch.device) -> float:
    """Images/s of train_one_epoch over `steps` batches."""
    trainer = build_trainer(cfg, steps, FoldContext(fold=0, device=device))
    train_one_epoch(trainer, RepeatLoader(batch, 2), progress=False)  # warm-up
    stats = train_one_epoch(trainer, RepeatLoader(batch, steps), progress=False)
    return stats.images_per_s


def bare(cfg: ExperimentConfig, batch: dict, steps: int, device: torch.device) -> float:
    """Images/s of the textbook loop: timm model, BCE-with-logits, Adam, nothing else."""
    import timm

    torch.manual_seed(cfg.train.seed)
    model = timm.create_model(cfg.model.name, pretrained=False, num_classes=5, in_chans=cfg.data.channels,
                              drop_rate=cfg.model.drop_rate).to(device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    images = batch["image"].contiguous(memory_format=memory_format)

    def step() -> None:
        with autocast(cfg.train.amp, device):
            logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * images.shape[0] / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
