"""Multi-view fusion: one prediction per study from all its films (`model.fusion: mean | attention`).

The paper (Kim et al. 2022, Discussion) names the next step: a projection hides three-dimensional structure, and
"X-ray images obtained from multiple directions could be a solution". Its patients have 1 to 6 films (AP, lateral,
both obliques, flexion, extension); scored one at a time and averaged, a sign that only shows as a difference
between two films (instability: the angle between FLEX and EXT) can never be seen. Here:

1. one shared timm backbone runs over the real films of a batch of studies, packed (N, C, S, S): no padding;
2. each film becomes a token: its pooled features projected to `fusion_dim`, plus a learned embedding of its view
   (`hnp.levels.view_id`: AP ... OTHER, and one for "no view"), through a small MLP, so that a token can carry
   view-specific channels (FLEX's angle apart from EXT's);
3. `attention`: `fusion_layers` of self-attention across the study's tokens (a FLEX film can see its EXT film),
   then attention pooling: a weight per film from a learned score, softmax over the present films (Ilse, Tomczak
   & Welling, "Attention-based deep multiple instance learning", ICML 2018); `mean`: the masked mean of the
   tokens, every present film weighted equally;
4. the study's logits: the mean of its films' own logits (a linear head on each film's features: the paper's
   per-film score, averaged as it averages them) plus the task head on the pooled token (`levels`, `levels_age`,
   `any`: `train.model.output_names`), which adds what the films say together.

Training supervises both: in training mode the model returns `FusionTrainingOutput`, and the loss
(`train.model.TaskLoss`) adds to the study's loss on the fused logits the loss of every film's own logits against
its study's labels: the image model's signal, one label per film. Trained on the fused logits alone, the
backbone learned from one label per study, five times fewer, and scored below the image model (BENCHMARKS.md,
"Fusion against the image-level model"). In eval mode the model returns the fused logits, as an image model
returns its logits (torchvision's Inception returns its auxiliary logits the same way, in training only).

Training drops views at random (`data.view_dropout`, in `pipeline.studies`), so that any subset of a study's films
works at test time.

`model.fusion_init` starts each fold from the same fold of an image-level run on the same shards: its backbone,
its classifier as the per-film head, and the pooled head at zero, so that training begins at that run's scores
(the mean of its films' logits) and fusion adds to them (`start_fold_from_image_run`). With `model.fusion_train:
head` those stay frozen and only the fusion layers learn (`FusionModel.freeze_film_scorer`): the fused score is then
the image run's per-patient mean plus what the films say together, a paired comparison of the two aggregations.

    model = build_fusion_model(cfg.model, channels=1)
    logits = model(films, views, mask)            # films (N, C, S, S); views, mask (B, V) -> (B, outputs)
    fused = model.fuse(films, views, mask)        # .logits and .weights (B, V): each film's share in the pooling
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from hnp.config import ExperimentConfig, ModelConfig
from hnp.errors import HnpError
from hnp.levels import VIEW_SLOTS

if TYPE_CHECKING:
    from pipeline.loader import Loader
    from train.model import FoldCheckpoint

ATTENTION_HEADS = 4


class FusionTrainingOutput(NamedTuple):
    """What a fusion model returns in training mode (a named tuple: DDP and autocast pass it through)."""

    logits: torch.Tensor  # (B, outputs): the fused logits
    film_logits: torch.Tensor  # (N, outputs): each film's own logits
    film_study: torch.Tensor  # (N,) int64: the study (row of `logits`) each film belongs to


@dataclass(frozen=True)
class FusedOutput:
    logits: torch.Tensor  # (B, outputs): the films' mean logits plus the pooled head's
    weights: torch.Tensor  # (B, V): each present film's weight in the pooling (rows sum to 1), 0 in empty slots
    film_logits: torch.Tensor  # (N, outputs): each film's own logits


class FusionModel(nn.Module):
    """A shared backbone, view embeddings, pooling over a study's films, and the task head.

    Args:
        backbone: a timm model without classifier (`num_classes=0`): (N, C, S, S) -> (N, features).
        features: the backbone's feature width.
        outputs: the task's outputs (`train.model.output_names`).
        mode: "mean" or "attention".
        dim: token width.
        layers: self-attention layers across films ("attention" only).
        drop_rate: dropout before the head's last layer.
    """

    def __init__(self, backbone: nn.Module, features: int, outputs: int, mode: str, dim: int, layers: int,
                 drop_rate: float) -> None:
        super().__init__()
        self.mode = mode
        self.backbone = backbone
        self.project = nn.Sequential(nn.Linear(features, dim), nn.LayerNorm(dim))
        self.view_embedding = nn.Embedding(VIEW_SLOTS, dim)
        self.mixer = None
        self.score = None
        if mode == "attention":
            heads = ATTENTION_HEADS if dim % ATTENTION_HEADS == 0 else 1
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                               norm_first=True)
            # no nested tensors: a study's padded slots are masked, and the output then keeps its (B, V, dim) shape
            self.mixer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
            self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))
        self.tokens = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Dropout(drop_rate),
                                  nn.Linear(dim, outputs))
        self.film_head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(features, outputs))
        self.film_scorer_frozen = False

    def freeze_film_scorer(self) -> None:
        """Train the fusion layers only (`model.fusion_train: head`): the backbone and the per-film head keep their
        weights, and stay in eval mode so that batch norm keeps its statistics and dropout stays off."""
        self.film_scorer_frozen = True
        for part in (self.backbone, self.film_head):
            part.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> FusionModel:
        super().train(mode)
        if self.film_scorer_frozen:
            self.backbone.eval()
            self.film_head.eval()
        return self

    def forward(self, films: torch.Tensor, views: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor | FusionTrainingOutput:
        """(B, outputs) logits of a batch of studies; in training mode `FusionTrainingOutput` (the film logits too).

        Args:
            films: (N, C, S, S), the present films study after study (N = mask.sum()).
            views: (B, V) view ids; only the present slots are read.
            mask: (B, V) bool, True where a slot holds a film; every study has at least one.
        """
        fused = self.fuse(films, views, mask)
        if not self.training:
            return fused.logits
        film_study = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]  # (N,)
        return FusionTrainingOutput(fused.logits, fused.film_logits, film_study)

    def fuse(self, films: torch.Tensor, views: torch.Tensor, mask: torch.Tensor) -> FusedOutput:
        """The logits and each film's pooling weight (see `forward` for the arguments)."""
        features = self.backbone(films)  # (N, features)
        film_logits = self.film_head(features)  # (N, outputs)
        tokens = self.project(features) + self.view_embedding(views[mask])  # (N, dim)
        grid = tokens.new_zeros((*mask.shape, tokens.shape[-1]))  # (B, V, dim)
        grid[mask] = tokens.to(grid.dtype)
        if self.mixer is not None:
            grid = self.mixer(grid, src_key_padding_mask=~mask)
        grid = self.tokens(grid).masked_fill(~mask[..., None], 0.0)  # empty slots never reach the pooling
        weights = self.pooling_weights(grid, mask)  # (B, V)
        pooled = (weights[..., None].to(grid.dtype) * grid).sum(dim=1)  # (B, dim)
        head = self.head(pooled)  # (B, outputs)
        return FusedOutput(logits=head + _mean_per_study(film_logits.to(head.dtype), mask), weights=weights,
                           film_logits=film_logits)

    @torch.no_grad()
    def start_from_image_model(self, image_model: nn.Module) -> None:
        """Take an image-level timm model's backbone and its classifier as the per-film head, and zero the pooled
        head's last layer: the fused logits start as the mean of that model's logits over the study's films."""
        classifier = image_model.get_classifier()
        prefix = f"{image_model.pretrained_cfg.get('classifier', 'classifier')}."
        backbone = {k: v for k, v in image_model.state_dict().items() if not k.startswith(prefix)}
        self.backbone.load_state_dict(backbone)  # strict: the same timm model without its classifier
        self.film_head[-1].load_state_dict(classifier.state_dict())
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def pooling_weights(self, grid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, V) weights over the present films, rows summing to 1: learned scores (attention) or equal (mean)."""
        if self.score is None:
            return mask.float() / mask.sum(dim=1, keepdim=True)
        scores = self.score(grid).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)


def _mean_per_study(film_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, K) values of the packed films -> (B, K) the mean over each study's films (`mask` (B, V))."""
    grid = film_values.new_zeros((*mask.shape, film_values.shape[-1]))  # (B, V, K)
    grid[mask] = film_values
    return grid.sum(dim=1) / mask.sum(dim=1, keepdim=True).to(film_values.dtype)


def build_fusion_model(cfg: ModelConfig, channels: int) -> FusionModel:
    """The fusion model of `cfg` (`cfg.fusion` "mean" or "attention"), its backbone from `cfg.pretrained` as the
    image model's (`train.model.build_backbone`)."""
    from train.model import build_backbone, output_names

    backbone = build_backbone(cfg, channels, num_classes=0)  # timm: pooled features, no classifier
    return FusionModel(backbone, backbone.num_features, len(output_names(cfg.task)), cfg.fusion, cfg.fusion_dim,
                       cfg.fusion_layers, cfg.drop_rate)


def check_fusion_init(cfg: ExperimentConfig, dataset_identity: str) -> None:
    """Before any fold starts: each fold of the run `model.fusion_init` names is an image-level model of this
    backbone, task and channels, trained on these shards (`hnp.shard_format.Dataset.identity`): its validation
    fold is then this fold's, and none of this fold's validation patients trained it."""
    for fold in range(cfg.folds):
        path = image_fold_checkpoint(cfg.model, fold)
        problem = _init_mismatch(_load_image_fold(path), cfg, fold, dataset_identity)
        if problem:
            raise HnpError(f"model.fusion_init: {path}: {problem}")


def start_fold_from_image_run(model: FusionModel, cfg: ModelConfig, fold: int) -> None:
    """Start `model` from fold `fold` of the image-level run `cfg.fusion_init` (checked by `check_fusion_init`), its
    film scorer frozen where `cfg.fusion_train` is "head"."""
    model.start_from_image_model(_load_image_fold(image_fold_checkpoint(cfg, fold)).model)
    if cfg.fusion_train == "head":
        model.freeze_film_scorer()


def image_fold_checkpoint(cfg: ModelConfig, fold: int) -> Path:
    return Path(cfg.fusion_init) / f"fold{fold}" / "best.pt"


def _load_image_fold(path: Path) -> FoldCheckpoint:
    from train.model import load_checkpoint

    try:
        return load_checkpoint(path)
    except HnpError as err:
        raise HnpError(f"model.fusion_init: {err} (an image-level run trained on these shards: "
                       "runs/<name> of `hnp train` with model.fusion none)") from err


def _init_mismatch(start: FoldCheckpoint, cfg: ExperimentConfig, fold: int, dataset_identity: str) -> str:
    """Why fold `fold` of `cfg` cannot start from checkpoint `start`, or "" when it can."""
    if start.fusion != "none":
        return f"a fusion model (model.fusion: {start.fusion}); start from an image-level run"
    if start.fold != fold:
        return f"holds fold {start.fold}, not fold {fold}"
    for key, theirs, ours in (("model.name", start.config.model.name, cfg.model.name),
                              ("model.task", start.config.model.task, cfg.model.task),
                              ("data.channels", start.config.data.channels, cfg.data.channels)):
        if theirs != ours:
            return f"{key} is {theirs!r} there and {ours!r} here"
    if start.dataset != dataset_identity:
        return (f"trained on shards {start.dataset or '(not recorded)'}, not these ({dataset_identity}): its folds "
                "may hold other patients, and this fold's validation patients may have trained it")
    return ""


def is_study_batch(batch: dict[str, Any]) -> bool:
    """Whether a loader batch holds studies (`pipeline.studies`) rather than single images."""
    return "mask" in batch


def model_inputs(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> tuple[torch.Tensor, ...]:
    """What the model of a batch takes, on `device`: (images,) for an image batch, (films, views, mask) for a study
    batch (`FusionModel.forward`).

    Args:
        batch: from `pipeline.build_loader` or `pipeline.studies.build_study_loader`.
        device: the model's device.
        channels_last: hand the images over in channels_last memory format.
    """
    images = batch["image"].to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if not is_study_batch(batch):
        return (images,)
    return images, batch["view"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)


def build_fold_loader(cfg: ExperimentConfig, shards: Path, splits: Sequence[str], *, training: bool, rank: int = 0,
                      world_size: int = 1, seed: int = 0, device: Any = "cpu") -> Loader:
    """The loader of the named splits for the model of `cfg`: study batches (`pipeline.studies`) for a fusion
    model, image batches (`pipeline.build_loader`) otherwise.

    Args:
        cfg: the experiment config (`model.fusion` decides, `data` configures the loader).
        shards: the shard folder.
        splits: split names, e.g. a fold's training splits.
        training: see `pipeline.build_loader`.
        rank: this process's rank.
        world_size: number of ranks.
        seed: run seed.
        device: where the batches go.
    """
    args = {"training": training, "rank": rank, "world_size": world_size, "seed": seed, "device": device}
    if cfg.model.fusion == "none":
        from pipeline import build_loader, split_shards

        return build_loader(cfg.data, split_shards(shards, list(splits)), **args)
    from pipeline.studies import build_study_loader, read_studies

    return build_study_loader(cfg.data, read_studies(shards, list(splits)), **args)
