"""Class activation maps of the fold models for the test images they are most confident about.

The maps come from pytorch-grad-cam (`grad-cam` on PyPI, https://github.com/jacobgil/pytorch-grad-cam); this
module picks the method and the layers, bags the fold models' maps and writes them. Methods (`METHODS`):

- `gradcam`: Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391) weights each channel of a
  layer's activations by the spatial mean of the gradient of the target logit, sums them, keeps the positive part.
  The paper used it at the last convolution layer of EfficientNet-B5.
- `hirescam`: HiResCAM (Draelos & Carin 2020, https://arxiv.org/abs/2011.08891) multiplies activations and
  gradients element-wise before summing over channels: no spatial averaging, so each cell keeps its own evidence.
- `layercam`: LayerCAM (Jiang et al., IEEE TIP 2021, https://ieeexplore.ieee.org/document/9462463): as HiResCAM
  but only the positive gradients; made for the shallower, finer layers.
- `gradcam++`: Grad-CAM++ (Chattopadhyay et al., WACV 2018, https://arxiv.org/abs/1710.11063).

With several layers, each layer's map is scaled to [0, 1] at the input resolution and the maps are averaged
(pytorch-grad-cam's rule).

Layers (`resolve_layers`): `auto` picks, among the model's stage outputs (timm's `feature_info`) and its last
convolution, the deepest one whose map has at least `min_cells` cells along each side at the model's input size:
on `test_efficientnet` at 128 px that is `blocks.2` (16 x 16), where the last convolution has 4 x 4, too coarse to
point at one of five discs; on EfficientNet-B5 at 456 px, `blocks.4` (29 x 29). `last-conv` is the paper's choice;
a comma-separated list of module names picks those layers.

Example::

    model = timm.create_model("test_efficientnet", num_classes=5, in_chans=1).eval()
    cam = ClassActivationMap(model, method="layercam", layers=resolve_layers(model, "auto", (1, 128, 128)))
    heat = cam(images, target=3)            # (B, H, W) in [0, 1], L4-5's logit, at the input resolution

Selection (`select_top`): per level, the K test images with the highest bagged probability at that level, ties
broken by sample key so the choice is deterministic. Levels are handled independently: one image may be among the
top K of several levels and then gets one heatmap per level. The `any` task has one output and one list; for the
level tasks the derived "any" score has no logit of its own and gets no list.

With several fold models, the exported heatmap is the mean of the folds' heatmaps (each scaled to [0, 1]),
scaled to [0, 1] again: the explanation of the bagged prediction, as the probability is the folds' mean.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from eval.map_options import AUTO_LAYER, LAST_CONV, METHOD_NAMES, MIN_CELLS
from hnp.bars import progress_bar
from hnp.errors import HnpError
from hnp.files import atomic_write_bytes
from hnp.predictions import KEY, PATIENT, label_column, model_targets, prob_column

METHODS: dict[str, type[BaseCAM]] = dict(zip(METHOD_NAMES, (GradCAM, HiResCAM, LayerCAM, GradCAMPlusPlus),
                                              strict=True))


def last_conv_layer(model: torch.nn.Module) -> str:
    """Name of the last `Conv2d` registered in the model ("conv_head" for timm EfficientNets)."""
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    if not names:
        raise HnpError("class activation map: the model has no Conv2d layer")
    return names[-1]


def map_sizes(model: torch.nn.Module, layers: Sequence[str],
              input_shape: tuple[int, int, int]) -> dict[str, tuple[int, int]]:
    """Each layer's output (height, width) for one input of `input_shape` (C, H, W): one forward pass on zeros.

    Args:
        model: the network (its parameters' device is used).
        layers: module names.
        input_shape: the model input without the batch axis.
    """
    modules = _named_layers(model, layers)
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
            sizes.setdefault(name, (int(output.shape[-2]), int(output.shape[-1])))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: sizes[name] for name in layers}


def resolve_layers(model: torch.nn.Module, spec: str | None, input_shape: tuple[int, int, int],
                   min_cells: int = MIN_CELLS) -> tuple[str, ...]:
    """The layer(s) a map is taken at (see the module docstring).

    Args:
        model: the network.
        spec: `auto` (or None), `last-conv`, or comma-separated module names.
        input_shape: the model input (C, H, W), which sets each layer's map size.
        min_cells: for `auto`, the fewest cells along each side of the map.
    """
    if spec in (None, "", AUTO_LAYER):
        candidates = [info["module"] for info in getattr(model, "feature_info", [])] + [last_conv_layer(model)]
        sizes = map_sizes(model, candidates, input_shape)
        fine_enough = [name for name in candidates if min(sizes[name]) >= min_cells]
        if not fine_enough:
            raise HnpError(f"class activation map: no layer of the model has {min_cells} cells along each side at "
                           f"input {input_shape[1]}x{input_shape[2]} (sizes {sizes}); name one with --gradcam-layer")
        return (max(fine_enough, key=candidates.index),)
    if spec == LAST_CONV:
        return (last_conv_layer(model),)
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    _named_layers(model, names)  # raises naming an unknown layer
    return names


def _named_layers(model: torch.nn.Module, names: Sequence[str]) -> dict[str, torch.nn.Module]:
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            close = [other for other in modules if other.endswith(name.split(".")[-1])][:3]
            hint = f"; try {close}" if close else ""
            raise HnpError(f"class activation map: no layer {name!r} in the model{hint}")
    return {name: modules[name] for name in names}


class ClassActivationMap:
    """One model's maps by one method at one or more layers, for a batch and one output index per image.

    Runs in float32 outside any autocast region (low-precision gradients make noisy maps), on the device the
    model's parameters are on, also when called under `torch.no_grad`. The model is put in eval mode; its
    weights are not changed (the parameter gradients the backward pass leaves are cleared).

    Args:
        model: a classifier returning logits (B, outputs).
        method: a key of METHODS.
        layers: module names (`resolve_layers`).
    """

    def __init__(self, model: torch.nn.Module, method: str, layers: Sequence[str]) -> None:
        if method not in METHODS:
            raise HnpError(f"class activation map: unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.model, self.method, self.layers = model.eval(), method, tuple(layers)
        self._modules = list(_named_layers(model, self.layers).values())

    def describe(self) -> str:
        """E.g. "layercam at blocks.2", as the report names it."""
        return f"{self.method} at {', '.join(self.layers)}"

    def __call__(self, images: torch.Tensor, target: int | Sequence[int]) -> torch.Tensor:
        """Heatmaps (B, H, W) on the CPU at the input's resolution, each scaled to [0, 1].

        Args:
            images: (B, C, H, W) model input.
            target: the output index (logit) to explain, one for all images or one per image.
        """
        device = next(self.model.parameters()).device
        images = images.to(device=device, dtype=torch.float32)
        outputs = torch.as_tensor(target).expand(images.shape[0]).tolist()
        cam = METHODS[self.method](self.model, self._modules)
        try:
            with torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
                maps = cam(images, [ClassifierOutputTarget(output) for output in outputs])
        finally:
            cam.activations_and_grads.release()  # its hooks would otherwise stay on the model
            self.model.zero_grad(set_to_none=True)
        return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)).clamp_(0.0, 1.0)


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Divide each map (B, H, W) by its maximum; maps with no positive value stay zero."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return (maps.clamp_min(0) / peak[:, None, None]).clamp(0.0, 1.0)


def bagged_maps(cams: Sequence[ClassActivationMap], images: torch.Tensor, target: int | Sequence[int]) -> torch.Tensor:
    """Mean of the fold models' heatmaps, scaled to [0, 1]: (B, H, W) on the CPU."""
    total = sum(cam(images, target) for cam in cams)
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


def map_targets(task: str) -> dict[str, int]:
    """Targets that get maps (the model's own; the derived "any" has no logit): target -> output index."""
    return {target: output for output, target in enumerate(model_targets(task))}


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
    cams: Sequence[ClassActivationMap],
    selection: pd.DataFrame,
    load: Callable[[str], tuple[np.ndarray, np.ndarray]],
    out_dir: Path,
    *,
    resize: str,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Write an overlay PNG and a float32 .npy heatmap at image resolution per selected (image, level), and index.csv.

    Args:
        cams: one map maker per fold model.
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
    for start in progress_bar(starts, desc="grad-cam", unit="batch", disable=len(starts) < 2):
        batch = selection.iloc[start : start + batch_size]
        loaded = [load(key) for key in batch["key"]]
        inputs = torch.from_numpy(np.stack([tensor for _, tensor in loaded]))
        heats = bagged_maps(cams, inputs, batch["output"].tolist()).numpy()
        for (_, row), (gray, _), heat in zip(batch.iterrows(), loaded, heats, strict=True):
            rows.append(_write_one(row, gray, heat, out_dir, resize))
    index = pd.DataFrame(rows, columns=["key", "patient", "level", "rank", "probability", "label", "file", "heatmap"])
    index.to_csv(out_dir / "index.csv", index=False)
    return index


def _write_one(row: pd.Series, gray: np.ndarray, heat: np.ndarray, out_dir: Path, resize: str) -> dict:
    stem = Path(str(row["level"])) / f"{int(row['rank']):04d}_{row['key']}"
    return {
        "key": row["key"], "patient": row["patient"], "level": row["level"], "rank": int(row["rank"]),
        "probability": float(row["probability"]), "label": int(row["label"]),
        **write_map(gray, heat, out_dir, stem, resize),
    }


def write_map(gray: np.ndarray, heat: np.ndarray, out_dir: Path, stem: Path, resize: str) -> dict[str, str]:
    """The heatmap at the radiograph's resolution as `<stem>.npy` (float32) and its overlay as `<stem>.png`, under
    `out_dir`; returns their paths relative to it as `file` (the overlay) and `heatmap`.

    Args:
        gray: the radiograph, uint8 (H, W).
        heat: the map on the model input, (S, S) in [0, 1].
        out_dir: the gradcam folder.
        stem: the files' path relative to `out_dir`, without suffix.
        resize: the data config's resize mode (`to_image_resolution`).
    """
    full = to_image_resolution(heat, gray.shape[0], gray.shape[1], resize)
    (out_dir / stem.parent).mkdir(parents=True, exist_ok=True)
    heatmap = io.BytesIO()  # numpy's own file write loses the reason of a failed write (a full disk): Python writes
    np.save(heatmap, full)
    atomic_write_bytes(out_dir / stem.with_suffix(".npy"), heatmap.getvalue())
    png = out_dir / stem.with_suffix(".png")
    encoded, picture = cv2.imencode(".png", overlay(gray, full))
    if not encoded:
        raise HnpError(f"could not encode {png}")
    atomic_write_bytes(png, picture.tobytes())  # Python opens the file: cv2.imwrite crashed on a non-UTF-8 folder name
    return {"file": str(stem.with_suffix(".png")), "heatmap": str(stem.with_suffix(".npy"))}
