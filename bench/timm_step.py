"""The yardsticks our training step is measured against, shared by bench/train_step.py and bench/gpu_throughput.py:
a textbook timm training step on a synthetic batch, and the timing rule both scripts use.

    from bench.timm_step import bare_steps, synthetic_batch, timed
    run = bare_steps(cfg, synthetic_batch(cfg, device), device)
    seconds = timed(run, steps=50, warmup=5, device=device)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from hnp.config import ExperimentConfig
from train.loop import autocast


def synthetic_batch(cfg: ExperimentConfig, device: torch.device) -> dict[str, Any]:
    """One seeded batch in pipeline.build_loader's format: normal noise images, random labels, on the device."""
    n, size = cfg.data.batch_size, cfg.data.image_size
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, 5, generator=generator) < 0.3).float()
    return {"image": torch.randn(n, cfg.data.channels, size, size, generator=generator).to(device),
            "labels": labels.to(device), "any": labels.amax(dim=1).to(device),
            "age": torch.full((n,), 50.0, device=device), "key": [f"s{i}" for i in range(n)]}


def bare_steps(cfg: ExperimentConfig, batch: dict[str, Any], device: torch.device) -> Callable[[int], None]:
    """`run(n)`: n steps of a timm model, BCE-with-logits and Adam on `batch`, and nothing else (no task heads,
    no LR scheduler): the model's ceiling. Precision, memory format and compilation follow `cfg.train`."""
    import timm

    torch.manual_seed(cfg.train.seed)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = timm.create_model(cfg.model.name, pretrained=False, num_classes=5, in_chans=cfg.data.channels,
                              drop_rate=cfg.model.drop_rate).to(device, memory_format=memory_format).train()
    if cfg.train.compile:
        torch._dynamo.reset()  # a fresh cache per compiled model: no recompile limit hit, no stale guards
    forward = torch.compile(model) if cfg.train.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    images = batch["image"].contiguous(memory_format=memory_format)

    def run(n: int) -> None:
        for _ in range(n):
            with autocast(cfg.train.amp, device):
                logits = forward(images)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

    return run


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run_steps: Callable[[int], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds of `run_steps(steps)` after `run_steps(warmup)`, the device drained before and after."""
    run_steps(warmup)
    sync(device)
    start = time.perf_counter()
    run_steps(steps)
    sync(device)
    return time.perf_counter() - start
