"""The network: a timm backbone whose classifier is the task head, its loss, and the fold checkpoint format.

Tasks (Kim et al. 2022, Methods 2.3 and Table 5) and the model's output columns:
    any         1 logit: HNP at one level or more (the paper's baseline)
    levels      5 logits, LEVELS order (the main task)
    levels_age  5 logits + 1 age regression output, in standardized years (the paper's multitask)

Usage:
    model = build_model(cfg.model, channels=cfg.data.channels)
    probs, age = outputs_to_predictions(model(images), cfg.model.task)   # (N, 5) probabilities, (N,) years
    fold = load_checkpoint("runs/paper/fold0/best.pt")                    # FoldCheckpoint, model in eval mode
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from hnp.config import ExperimentConfig, ModelConfig, build_dataclass, config_to_dict
from hnp.errors import HnpError
from hnp.predictions import model_targets
from train.checkpoint import load_torch_file

# Age is regressed in standardized units so its loss is on the scale of the BCE terms.
AGE_CENTER = 50.0
AGE_SCALE = 15.0


def output_names(task: str) -> tuple[str, ...]:
    """What each of the model's outputs is, in order: the task's targets (`hnp.predictions.model_targets`),
    then "age" for levels_age."""
    return (*model_targets(task), "age") if task == "levels_age" else model_targets(task)


def build_model(cfg: ModelConfig, channels: int) -> nn.Module:
    """A timm backbone with one output per task column, or for `cfg.fusion` other than "none" the fusion model
    (`train.fusion`), which scores a study from all its films.

    Args:
        cfg: model name, task, dropout, fusion and where the starting weights come from: "hub" (timm's pretrained
            download), "none" (random init) or a local file holding a state dict (no network needed).
        channels: input channels, 1 (gray) or 3 (gray replicated for ImageNet stems).
    """
    if cfg.fusion != "none":
        from train.fusion import build_fusion_model  # it builds its backbone here: imported when used

        return build_fusion_model(cfg, channels)
    return build_backbone(cfg, channels, num_classes=len(output_names(cfg.task)))


def build_backbone(cfg: ModelConfig, channels: int, num_classes: int) -> nn.Module:
    """The timm model `cfg.name` with `num_classes` outputs (0: its pooled features), weights per `cfg.pretrained`.

    Args:
        cfg: the model config.
        channels: input channels.
        num_classes: classifier outputs; 0 leaves the classifier out.
    """
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": channels, "drop_rate": cfg.drop_rate}
    if cfg.pretrained == "hub":
        return _create(cfg.name, pretrained=True, **kwargs)
    model = _create(cfg.name, pretrained=False, **kwargs)
    if cfg.pretrained != "none":
        load_pretrained_file(model, Path(cfg.pretrained))
    return model


def _create(name: str, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise HnpError(f"model.name: {name!r} is not a timm model") from err
        raise HnpError(f"model {name!r}: could not create it: {err}") from err


def load_pretrained_file(model: nn.Module, path: Path) -> None:
    """Load backbone weights from a local file into `model`, leaving its new task head as initialized.

    The file holds a state dict (or a dict with `state_dict`, `model_state` or `model`). A 3-channel stem is
    summed to 1 channel when the model is gray-only, the way timm adapts pretrained stems.

    Args:
        model: a timm model built with pretrained=False.
        path: the weights file.
    """
    if not path.is_file():
        raise HnpError(f"model.pretrained: {path}: no such file (use 'hub', 'none' or a weights file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable or foreign files
        raise HnpError(f"model.pretrained: {path}: not a readable torch weights file: {err}") from err
    state = _unwrap_state_dict(state, path)
    cfg = model.pretrained_cfg
    classifier = cfg.get("classifier", "classifier")
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    stem_key = f"{cfg.get('first_conv', 'conv_stem')}.weight"
    target = model.state_dict()
    if stem_key in state and stem_key in target and state[stem_key].shape[1] != target[stem_key].shape[1]:
        state[stem_key] = timm.models.adapt_input_conv(target[stem_key].shape[1], state[stem_key])
    _check_compatible(state, target, classifier, path)
    model.load_state_dict(state, strict=False)


def _unwrap_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in ("model_state", "state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HnpError(f"model.pretrained: {path}: expected a state dict of tensors")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def _check_compatible(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], classifier: str,
                      path: Path) -> None:
    """Refuse files for another architecture: every backbone tensor must be present with the same shape."""
    missing = [k for k in target if k not in state and not k.startswith(f"{classifier}.")]
    unexpected = [k for k in state if k not in target]
    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for what, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("shape differs", mismatched)) if keys)
        raise HnpError(f"model.pretrained: {path}: weights do not fit this model ({detail})")


def task_targets(batch: dict[str, Any], task: str) -> torch.Tensor:
    """The (N, outputs) target matrix of a batch: 0/1 labels, plus standardized age for levels_age."""
    if task == "any":
        return batch["any"].unsqueeze(1)
    if task == "levels":
        return batch["labels"]
    age = (batch["age"] - AGE_CENTER) / AGE_SCALE
    return torch.cat([batch["labels"], age.unsqueeze(1)], dim=1)


def outputs_to_predictions(outputs: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Turn model outputs into (N, labels) probabilities and, for levels_age, (N,) predicted age in years."""
    outputs = outputs.float()
    n_labels = len(model_targets(task))
    probs = torch.sigmoid(outputs[:, :n_labels])
    age = outputs[:, n_labels] * AGE_SCALE + AGE_CENTER if task == "levels_age" else None
    return probs, age


class TaskLoss(nn.Module):
    """BCE-with-logits over the label columns (optional per-level pos_weight against the imbalance), plus
    `age_loss_weight` times the MSE of the standardized age for levels_age.

    Args:
        cfg: the model config (task, pos_weight, age_loss_weight).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.task = cfg.task
        self.age_loss_weight = cfg.age_loss_weight
        pos_weight = None
        if cfg.pos_weight is not None:
            # "any" has a single column: the per-level weights do not apply, so use their mean.
            values = cfg.pos_weight if cfg.task != "any" else (sum(cfg.pos_weight) / len(cfg.pos_weight),)
            pos_weight = torch.tensor(values, dtype=torch.float32)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, outputs: torch.Tensor | tuple, targets: torch.Tensor) -> torch.Tensor:
        """The loss of (B, outputs) logits against (B, outputs) targets; of a fusion model's training output
        (`train.fusion.FusionTrainingOutput`): the fused logits' loss plus its films' own logits' loss, each film
        against its study's targets."""
        if isinstance(outputs, tuple):
            logits, film_logits, film_study = outputs
            return self(logits, targets) + self(film_logits, targets[film_study])
        outputs = outputs.float()
        n_labels = len(model_targets(self.task))
        loss = nn.functional.binary_cross_entropy_with_logits(outputs[:, :n_labels], targets[:, :n_labels],
                                                              pos_weight=self.pos_weight)
        if self.task == "levels_age":
            loss = loss + self.age_loss_weight * nn.functional.mse_loss(outputs[:, n_labels], targets[:, n_labels])
        return loss


@dataclass(frozen=True)
class FoldCheckpoint:
    """One fold's best model, as `hnp eval` consumes it."""

    model: nn.Module  # eval mode, CPU
    config: ExperimentConfig
    fold: int
    epoch: int
    val_auc: dict[str, float]  # {target: AUC}
    thresholds: dict[str, float]  # {target: Youden-J threshold}
    dataset: str  # identity of the shards it trained on (hnp.shard_format.Dataset.identity); "" if not recorded

    @property
    def outputs(self) -> tuple[str, ...]:
        """What each model output is (`output_names`)."""
        return output_names(self.config.model.task)

    @property
    def fusion(self) -> str:
        """"none" for the image-level model, else how it fuses a study's films (`train.fusion`)."""
        return self.config.model.fusion


def checkpoint_dict(model: nn.Module, cfg: ExperimentConfig, fold: int, epoch: int, val_auc: dict[str, float],
                    thresholds: dict[str, float], dataset: str = "") -> dict[str, Any]:
    """The `best.pt` contents (DESIGN.md, run contract)."""
    return {"model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": config_to_dict(cfg), "fold": fold, "epoch": epoch,
            "val_auc": dict(val_auc), "thresholds": dict(thresholds), "dataset": dataset}


def load_checkpoint(path: str | Path) -> FoldCheckpoint:
    """Rebuild a fold's model from its `best.pt`, with no network access.

    Args:
        path: a `runs/<name>/fold{k}/best.pt` file.
    """
    path = Path(path)
    if not path.is_file():
        raise HnpError(f"{path}: checkpoint not found")
    raw = load_torch_file(path)
    missing = [k for k in ("model_state", "config", "fold", "epoch", "val_auc", "thresholds")
               if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise HnpError(f"{path}: not a fold checkpoint, missing {', '.join(missing)}")
    cfg = build_dataclass(ExperimentConfig, raw["config"], prefix="")
    # The trained weights replace whatever the run started from, so never download or read those again.
    model = build_model(replace(cfg.model, pretrained="none"), channels=cfg.data.channels)
    model.load_state_dict(raw["model_state"])
    return FoldCheckpoint(model=model.eval(), config=cfg, fold=int(raw["fold"]), epoch=int(raw["epoch"]),
                          val_auc=dict(raw["val_auc"]), thresholds=dict(raw["thresholds"]),
                          dataset=str(raw.get("dataset", "")))  # not recorded before the shards had identities
