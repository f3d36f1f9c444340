"""Grad-CAM heatmaps of the fold models for the test images they are most confident about.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
ICCV 2017, https://arxiv.org/abs/1610.02391) weights each channel of a convolution layer's activations by the
spatial mean of the gradient of the class score (here a level's logit) with respect to that channel, sums them
and keeps the positive part. The paper used the last convolution layer of EfficientNet-B5 and stored "the top 300
images whose disks were identified with a high probability".

Example::

    model = timm.create_model("test_efficientnet", num_classes=5).eval()
    cam = GradCAM(model)                      # target layer: the last Conv2d ("conv_head" in timm EfficientNets)
    heat = cam(images, target=3)              # (B, H, W) in [0, 1], L4-5's logit, at the input resolution

Selection (`select_top`): per level, the K test images with the highest bagged probability at that level, ties
broken by sample key so the choice is deterministic. Levels are handled independently: one image may be among the
top K of several levels and then gets one heatmap per level. The `any` task has one output and one list; for the
level tasks the derived "any" score has no logit of its own and gets no list.

With several fold models, the exported heatmap is the mean of the folds' heatmaps (each scaled to [0, 1]),
scaled to [0, 1] again: the explanation of the bagged prediction, as the probability is the folds' mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hnp.errors import HnpError
from hnp.predictions import KEY, PATIENT, label_column, prob_column


def last_conv_layer(model: torch.nn.Module) -> str:
    """Name of the last `Conv2d` registered in the model ("conv_head" for timm EfficientNets)."""
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    if not names:
        raise HnpError("Grad-CAM: the model has no Conv2d layer")
    return names[-1]


class GradCAM:
    """Grad-CAM of one model at one layer, for a batch of images and one output index per image.

    Runs in float32 outside any autocast region (low-precision gradients make noisy maps), on the device the
    model's parameters are on. The model is used in eval mode and is not changed.

    Args:
        model: a classifier returning logits (B, outputs).
        layer: dotted module name of the target layer; None = the last convolution layer.
    """

    def __init__(self, model: torch.nn.Module, layer: str | None = None) -> None:
        self.model = model.eval()
        self.layer_name = layer or last_conv_layer(model)
        modules = dict(model.named_modules())
        if self.layer_name not in modules:
            close = [name for name in modules if name.endswith(self.layer_name.split(".")[-1])][:3]
            raise HnpError(f"Grad-CAM: no layer {self.layer_name!r} in the model" + (f"; try {close}" if close else ""))
        self.layer = modules[self.layer_name]

    def __call__(self, images: torch.Tensor, target: int | Sequence[int]) -> torch.Tensor:
        """Heatmaps (B, H, W) at the input's resolution, each scaled to [0, 1] (all zeros if nothing is positive).

        Args:
            images: (B, C, H, W) model input.
            target: the output index (logit) to explain, one for all images or one per image.
        """
        device = next(self.model.parameters()).device
        images = images.to(device=device, dtype=torch.float32)
        index = torch.as_tensor(target, device=device).expand(images.shape[0]).long()
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
        try:
            with torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
                # Input gradients keep the graph alive even for a model whose weights are frozen.
                logits = self.model(images.detach().requires_grad_(True))
                scores = logits.gather(1, index[:, None]).sum()  # samples are independent in eval mode
                (grads,) = torch.autograd.grad(scores, captured[0])
        finally:
            handle.remove()
        activations = captured[0].detach()  # (B, K, h, w)
        weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1): gradient averaged over space
        cam = F.relu((weights * activations).sum(dim=1, keepdim=True))  # (B, 1, h, w)
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return scale_to_unit(cam)


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map (B, H, W) by its maximum; maps with no positive value stay zero."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return (maps.clamp_min(0) / peak[:, None, None]).clamp(0.0, 1.0)


def bagged_gradcam(cams: Sequence[GradCAM], images: torch.Tensor, target: int | Sequence[int]) -> torch.Tensor:
    """Mean of the fold models' heatmaps, scaled to [0, 1]: (B, H, W) on the CPU."""
    total = sum(cam(images, target).cpu() for cam in cams)
    return scale_to_unit(total / len(cams))


def to_image_resolution(heat: np.ndarray, height: int, width: int, resize: str) -> np.ndarray:
    """Map a heatmap from the model's square input back onto the original radiograph (float32, (height, width)).

    Args:
        heat: (S, S) heatmap on the model input.
        height: the radiograph's height in pixels.
        width: the radiograph's width in pixels.
        resize: the data config's resize mode: "stretch" (the input is the stretched image) or "pad" (the image
            was scaled to fit, keeping its aspect, and centred on a square, as `pipeline.transforms.resize_square`).
    """
    if resize == "pad":
        size = heat.shape[0]
        scale = size / max(height, width)
        inner_h, inner_w = max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
        # the inverse of pipeline.transforms.resize_square: sizes rounded half up, centred, the odd pixel of
        # padding on the top/left side (tests/test_eval_gradcam.py checks the round trip)
        top, left = (size - inner_h + 1) // 2, (size - inner_w + 1) // 2
        heat = heat[top : top + inner_h, left : left + inner_w]
    resized = cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """A BGR uint8 picture: the radiograph with the heatmap in the JET colour map blended over it."""
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(colour, alpha, base, 1.0 - alpha, 0.0)


def select_top(images: pd.DataFrame, targets: dict[str, int], k: int) -> pd.DataFrame:
    """The top-K images by bagged probability per target, ties broken by key (see the module docstring).

    Args:
        images: one row per image with `key`, `patient`, `prob_<target>` and `label_<target>` (hnp.predictions).
        targets: target -> model output index, the targets that get heatmaps.
        k: images per target.

    Returns:
        rows `key`, `patient`, `level`, `output`, `rank` (1 = most confident), `probability`, `label`.
    """
    parts = []
    for target, output in targets.items():
        top = images.sort_values([prob_column(target), KEY], ascending=[False, True], kind="stable").head(k)
        parts.append(
            pd.DataFrame({
                "key": top[KEY].to_numpy(), "patient": top[PATIENT].to_numpy(), "level": target, "output": output,
                "rank": np.arange(1, len(top) + 1), "probability": top[prob_column(target)].to_numpy(),
                "label": top[label_column(target)].to_numpy().astype(int),
            })
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def export_gradcam(
    cams: Sequence[GradCAM],
    selection: pd.DataFrame,
    load: Callable[[str], tuple[np.ndarray, np.ndarray]],
    out_dir: Path,
    *,
    resize: str,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Write an overlay PNG and a float32 .npy heatmap at image resolution per selected (image, level), and index.csv.

    Args:
        cams: one GradCAM per fold model.
        selection: from `select_top`.
        load: key -> (the radiograph as uint8 gray (H, W), the model input (C, S, S) float32).
        out_dir: the gradcam folder; files go to `<level>/<rank>_<key>.png|.npy` inside it.
        resize: the data config's resize mode, to map heatmaps back onto the radiograph.
        batch_size: images per Grad-CAM batch.

    Returns:
        the index: key, patient, level, rank, probability, label, file (the overlay), heatmap (the .npy).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    starts = range(0, len(selection), batch_size)
    for start in tqdm(starts, desc="grad-cam", unit="batch", disable=len(starts) < 2):
        batch = selection.iloc[start : start + batch_size]
        loaded = [load(key) for key in batch["key"]]
        inputs = torch.from_numpy(np.stack([tensor for _, tensor in loaded]))
        heats = bagged_gradcam(cams, inputs, batch["output"].tolist()).numpy()
        for (_, row), (gray, _), heat in zip(batch.iterrows(), loaded, heats, strict=True):
            rows.append(_write_one(row, gray, heat, out_dir, resize))
    index = pd.DataFrame(rows, columns=["key", "patient", "level", "rank", "probability", "label", "file", "heatmap"])
    index.to_csv(out_dir / "index.csv", index=False)
    return index


def _write_one(row: pd.Series, gray: np.ndarray, heat: np.ndarray, out_dir: Path, resize: str) -> dict:
    full = to_image_resolution(heat, gray.shape[0], gray.shape[1], resize)
    stem = Path(str(row["level"])) / f"{int(row['rank']):04d}_{row['key']}"
    (out_dir / stem.parent).mkdir(parents=True, exist_ok=True)
    np.save(out_dir / stem.with_suffix(".npy"), full)
    png = out_dir / stem.with_suffix(".png")
    encoded, picture = cv2.imencode(".png", overlay(gray, full))
    if not encoded:
        raise HnpError(f"could not encode {png}")
    png.write_bytes(picture.tobytes())  # Python opens the file: cv2.imwrite crashed on a non-UTF-8 folder name
    return {
        "key": row["key"], "patient": row["patient"], "level": row["level"], "rank": int(row["rank"]),
        "probability": float(row["probability"]), "label": int(row["label"]),
        "file": str(stem.with_suffix(".png")), "heatmap": str(stem.with_suffix(".npy")),
    }
