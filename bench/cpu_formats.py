"""CPU time per image of the bare timm training step in each memory format and precision, alternating in one
process: which `train.channels_last` / `train.amp` the CPU configs should use.

    python bench/cpu_formats.py                       # test_efficientnet, 1 x 160 x 160, batch 16, one thread
    python bench/cpu_formats.py --size 128 --threads 2 --rounds 7

Each variant runs `bench.timm_step.bare_steps` (timm model, BCE-with-logits, Adam) on one synthetic batch; the
variants take turns for --rounds rounds, and the median CPU ms per image of each is printed with its ratio to
float32 NCHW (process time: less sensitive than wall time to neighbours on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timm_step import bare_steps, synthetic_batch  # noqa: E402
from hnp.config import load_config  # noqa: E402

VARIANTS = (("off", False), ("off", True), ("bf16", False), ("bf16", True))  # (train.amp, train.channels_last)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="test_efficientnet")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    runs = {}
    for amp, channels_last in VARIANTS:
        cfg = load_config("tiny", [f"model.name={args.model}", f"data.image_size={args.size}",
                                   f"data.batch_size={args.batch}", f'train.amp="{amp}"',
                                   f"train.channels_last={str(channels_last).lower()}"])
        runs[(amp, channels_last)] = bare_steps(cfg, synthetic_batch(cfg, device), device)
    per_image: dict[tuple[str, bool], list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant, run in runs.items():
            run(2)  # warm-up: oneDNN picks its kernels on the first calls
            start = time.process_time()
            run(args.steps)
            per_image[variant].append((time.process_time() - start) / (args.steps * args.batch) * 1e3)
    baseline = statistics.median(per_image[("off", False)])
    print(f"{args.model}, {args.size} px, batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds of "
          f"{args.steps} steps")
    print("| precision | memory format | CPU ms per image (median) | min | ratio to float32 NCHW |")
    print("|---|---|---:|---:|---:|")
    for (amp, channels_last), values in per_image.items():
        median = statistics.median(values)
        print(f"| {'float32' if amp == 'off' else amp} | {'channels_last' if channels_last else 'NCHW'} "
              f"| {median:.2f} | {min(values):.2f} | {baseline / median:.2f}x |")


if __name__ == "__main__":
    main(parse_args())
