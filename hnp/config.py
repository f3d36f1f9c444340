"""Experiment configuration: frozen dataclasses per stage, filled from YAML, overridden with `--set key=value`.

Usage:
    cfg = load_config("paper", overrides=["optim.lr=1e-4", "train.epochs=3"])   # a built-in config, by name
    cfg = load_config("my-experiment.yaml")                                      # or a YAML file of your own
    save_config(cfg, run_dir / "config.yaml")

The built-in configs (`paper`, `local-3090`, `tiny`) ship inside the package (`hnp/configs/*.yaml`), so they are
found from an installed copy as well as from a source tree.

An unknown key, in the file or in an override, is an error that names the key (dotted path) and, where one is
close, the key that was probably meant.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hnp.errors import HnpError


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; always off at evaluation. Flips and rotations are never offered:
    a mirrored or rotated radiograph confuses the levels (paper, Methods 2.3)."""

    enabled: bool = False
    scale: float = 0.05  # random zoom in [1 - scale, 1 + scale]
    shift: float = 0.05  # random translation, fraction of the image side
    brightness: float = 0.1  # additive jitter, fraction of the intensity range
    contrast: float = 0.1  # multiplicative jitter around 1


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 456  # EfficientNet-B5's native resolution
    channels: int = 3  # 3 = gray replicated for ImageNet stems, 1 = a single-channel stem
    resize: str = "stretch"  # "stretch" to a square, or "pad" (keep aspect, pad to a square)
    clahe: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8
    loader: str = "dali"  # "dali" or "torch" (webdataset + OpenCV)
    batch_size: int = 16
    num_threads: int = 4  # DALI CPU threads, or torch DataLoader workers
    # Where DALI decodes and preprocesses when training on a GPU: "gpu" (nvJPEG "mixed" decode, CLAHE and resize on
    # the GPU) or "cpu" (on num_threads CPU threads, so only the model-size batch goes to the GPU and the training
    # kernels have the GPU to themselves). Without a GPU, DALI runs on the CPU either way.
    dali_device: str = "gpu"
    shuffle_buffer: int = 2048
    # Normalization in [0, 1] units, per channel; ImageNet's by default (pretrained stems). One channel uses the
    # average of three values.
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Study batches (model.fusion other than "none"), training only: the probability of leaving each film of a study
    # out of an epoch's batch (at least one film always stays), so that the model learns to fuse any subset of views.
    view_dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("data.resize", self.resize, ("stretch", "pad"))
        _check_choice("data.loader", self.loader, ("dali", "torch"))
        _check_choice("data.dali_device", self.dali_device, ("gpu", "cpu"))
        _check_choice("data.channels", self.channels, (1, 3))
        _check_positive("data.image_size", self.image_size)
        _check_positive("data.batch_size", self.batch_size)
        if not 0.0 <= self.view_dropout < 1.0:
            raise HnpError(f"data.view_dropout: expected a probability in [0, 1), got {self.view_dropout}")
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean) or min(self.std) <= 0:
            raise HnpError(
                f"data.mean/data.std: expected 1 or 3 values each, std positive; got {self.mean}, {self.std}"
            )


FUSION_MODES: tuple[str, ...] = ("none", "mean", "attention")
FUSION_TRAINED: tuple[str, ...] = ("all", "head")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "efficientnet_b5"  # any timm model name
    pretrained: str = "hub"  # "hub" (timm/Hugging Face download), "none", or a local weights file
    task: str = "levels"  # "any" (paper's baseline), "levels" (main task), "levels_age" (multitask)
    age_loss_weight: float = 0.1  # weight of the age regression loss in "levels_age"
    pos_weight: tuple[float, ...] | None = None  # per-level BCE pos_weight, LEVELS order
    drop_rate: float = 0.4
    # Multi-view fusion (train/fusion.py): "none" scores each film alone (the paper's model); "mean" and
    # "attention" score a study from all its films, pooled by their mean or by learned attention weights.
    fusion: str = "none"
    fusion_dim: int = 256  # width of the film tokens the fusion head pools
    fusion_layers: int = 1  # "attention": self-attention layers across a study's films before the pooling
    # An image-level run folder (model.fusion "none", the same shards): each fusion fold starts from that run's
    # fold of the same number, backbone and per-film head, with the pooled head at zero ("" = from `pretrained`).
    fusion_init: str = ""
    # What a fusion run trains: "all", or "head" with fusion_init: the image run's backbone and per-film head stay
    # as they are (frozen, batch norm statistics too) and only the fusion layers learn how to combine the films.
    fusion_train: str = "all"

    def __post_init__(self) -> None:
        _check_choice("model.task", self.task, ("any", "levels", "levels_age"))
        _check_choice("model.fusion", self.fusion, FUSION_MODES)
        _check_positive("model.fusion_dim", self.fusion_dim)
        if self.fusion_layers < 0:
            raise HnpError(f"model.fusion_layers: must be 0 or more, got {self.fusion_layers}")
        if self.fusion_init and self.fusion == "none":
            raise HnpError("model.fusion_init: starts a fusion model from an image-level run; set model.fusion too")
        _check_choice("model.fusion_train", self.fusion_train, FUSION_TRAINED)
        if self.fusion_train == "head" and not self.fusion_init:
            raise HnpError("model.fusion_train: head trains the fusion layers on a trained image model's films; "
                           "set model.fusion_init to that image-level run")
        if self.pos_weight is not None and len(self.pos_weight) != 5:
            raise HnpError(f"model.pos_weight: expected 5 values (one per level), got {len(self.pos_weight)}")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-5
    weight_decay: float = 0.0
    t_0: int = 1  # epochs until the first warm restart (stepped per iteration)
    t_mult: int = 2
    eta_min: float = 1e-7


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    amp: str = "bf16"  # "bf16", "fp16" (with a grad scaler) or "off"
    channels_last: bool = True
    grad_accum: int = 1
    compile: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("train.amp", self.amp, ("bf16", "fp16", "off"))
        _check_positive("train.epochs", self.epochs)
        _check_positive("train.grad_accum", self.grad_accum)


@dataclass(frozen=True)
class RayConfig:
    workers_per_fold: int = 1
    use_gpu: bool = True
    gpus_per_worker: float = 1.0  # fractions let several folds share one GPU
    cpus_per_worker: float = 4.0
    max_concurrent_folds: int = 4
    storage_path: str = ""  # local folder or cloud URI for Ray checkpoints; "" = <out>/ray
    max_failures: int = 3


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "offline"  # "offline", "online" or "off"
    project: str = "hnp-xray"
    entity: str = ""

    def __post_init__(self) -> None:
        _check_choice("wandb.mode", self.mode, ("offline", "online", "off"))


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "hnp"
    folds: int = 4
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise HnpError(f"folds: cross-validation needs at least 2 folds, got {self.folds}")


def builtin_configs() -> dict[str, Path]:
    """The configs that ship with hnp, by name: {"paper": .../hnp/configs/paper.yaml, ...}."""
    folder = importlib.resources.files("hnp") / "configs"
    return {entry.name.removesuffix(".yaml"): Path(str(entry)) for entry in folder.iterdir()
            if entry.name.endswith(".yaml")}


def config_path(name_or_path: str | Path) -> Path:
    """A YAML file: `name_or_path` itself when it exists, else the built-in config of that name.

    Raises:
        HnpError: neither, naming the built-in configs.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = builtin_configs()
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]
    raise HnpError(f"{name_or_path}: no such config file, and not a built-in config "
                   f"({', '.join(sorted(builtin))})")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML config (or start from defaults when `path` is None) and apply `key=value` overrides.

    Args:
        path: a YAML file whose nesting mirrors ExperimentConfig, or the name of a built-in config ("tiny").
        overrides: dotted keys with YAML values, e.g. ``["optim.lr=1e-4", "data.augment.enabled=true"]``.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(config_path(path))
    for item in overrides:
        _apply_override(raw, item)
    return build_dataclass(ExperimentConfig, raw, prefix="")


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config, so a run records exactly what it ran with."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists), for YAML, Ray's config dicts and W&B."""
    return _plain(dataclasses.asdict(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans, which would turn
    `wandb.mode: off` into False."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Loader) or {}
    except yaml.YAMLError as err:
        raise HnpError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise HnpError(f"{path}: expected a mapping of config sections at the top level")
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise HnpError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-4")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise HnpError(f"--set {item!r}: {part} is a value, not a section")
    node[leaf] = yaml.load(text, Loader=_Yaml12Loader)


def build_dataclass(cls: type, raw: Any, prefix: str) -> Any:
    """Fill dataclass `cls` from a dict, recursing into nested dataclasses and checking every key."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise HnpError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in raw if key not in names]
    if unknown:
        raise HnpError(_unknown_key_message(prefix, str(unknown[0]), names))
    values = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in raw.items()}
    return cls(**values)


def _unknown_key_message(prefix: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(names)}"
    return f"unknown config key {prefix}{key}{hint}"


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Turn a YAML value into the field's type, or raise an error naming the key."""
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise HnpError(f"{key}: expected a list, got {value!r}")
        item_type = typing.get_args(hint)[0]
        return tuple(_coerce(item_type, item, key) for item in value)
    return _coerce_scalar(hint, value, key)


def _coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise HnpError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise HnpError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        # YAML reads "3e-5" as a string (it wants "3.0e-5"), so numbers in strings are parsed here.
        try:
            if not isinstance(value, bool):
                return float(value)
        except (TypeError, ValueError):
            pass
        raise HnpError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise HnpError(f"{key}: expected a string, got {value!r}")
    return value


def _check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise HnpError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _check_positive(key: str, value: int) -> None:
    if value <= 0:
        raise HnpError(f"{key}: must be positive, got {value}")
