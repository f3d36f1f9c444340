from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch

from hnp.config import ExperimentConfig, ModelConfig, load_config
from hnp.errors import HnpError
from hnp.levels import LEVELS
from train.checkpoint import atomic_torch_save
from train.model import (
    TaskLoss,
    build_model,
    checkpoint_dict,
    load_checkpoint,
    output_names,
    outputs_to_predictions,
    task_targets,
)

TINY = ModelConfig(name="test_efficientnet", pretrained="none", drop_rate=0.0)


@pytest.mark.parametrize(("task", "channels", "columns"), [
    ("any", 1, ("any",)),
    ("levels", 3, LEVELS),
    ("levels_age", 1, (*LEVELS, "age")),
])
def test_each_task_has_its_outputs(task: str, channels: int, columns: tuple[str, ...]) -> None:
    model = build_model(replace(TINY, task=task), channels=channels)
    assert output_names(task) == columns
    assert model(torch.zeros(2, channels, 64, 64)).shape == (2, len(columns))


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    labels = torch.tensor([[0, 0, 1, 1, 0]] * n, dtype=torch.float32)
    return {"labels": labels, "any": labels.amax(dim=1), "age": torch.full((n,), 65.0)}


@pytest.mark.parametrize("task", ["any", "levels", "levels_age"])
def test_targets_loss_and_predictions_agree_on_columns(task: str) -> None:
    targets = task_targets(_batch(), task)
    assert targets.shape == (4, len(output_names(task)))
    outputs = torch.zeros_like(targets)
    loss = TaskLoss(replace(TINY, task=task, pos_weight=(1.0, 2.0, 3.0, 4.0, 5.0)))(outputs, targets)
    assert torch.isfinite(loss) and loss > 0
    probs, age = outputs_to_predictions(outputs, task)
    assert torch.allclose(probs, torch.full_like(probs, 0.5))
    assert (age is not None) == (task == "levels_age")
    if age is not None:
        assert torch.allclose(age, torch.full((4,), 50.0))  # zero output = the age centre


def test_age_target_round_trips_to_years() -> None:
    targets = task_targets(_batch(), "levels_age")
    _, age = outputs_to_predictions(targets, "levels_age")
    assert torch.allclose(age, torch.full((4,), 65.0))


def test_local_pretrained_file_loads_backbone_and_sums_rgb_stem(tmp_path: Path) -> None:
    source = timm.create_model("test_efficientnet", pretrained=False, num_classes=1000, in_chans=3)
    path = tmp_path / "imagenet.pth"
    torch.save(source.state_dict(), path)
    model = build_model(replace(TINY, pretrained=str(path)), channels=1)
    assert torch.allclose(model.conv_stem.weight, source.conv_stem.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.bn2.weight, source.bn2.weight)
    assert model.classifier.out_features == 5  # the 1000-class head was skipped, not loaded


def test_pretrained_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(HnpError, match="no such file"):
        build_model(replace(TINY, pretrained=str(tmp_path / "missing.pth")), channels=3)
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(HnpError, match="resnet.pth: weights do not fit"):
        build_model(replace(TINY, pretrained=str(other)), channels=3)
    with pytest.raises(HnpError, match="not a timm model"):
        build_model(replace(TINY, name="no_such_net"), channels=3)


def test_checkpoint_round_trip_rebuilds_the_model_offline(tmp_path: Path) -> None:
    cfg = load_config("tiny")
    assert isinstance(cfg, ExperimentConfig)
    model = build_model(cfg.model, cfg.data.channels)
    auc = dict(zip(LEVELS, (0.5, 0.6, 0.7, 0.8, 0.9), strict=True))
    thresholds = dict.fromkeys(LEVELS, 0.3)
    saved = checkpoint_dict(model, cfg, fold=2, epoch=3, val_auc=auc, thresholds=thresholds, dataset="0123abcd")
    path = atomic_torch_save(saved, tmp_path / "fold2" / "best.pt")
    fold = load_checkpoint(path)
    assert (fold.fold, fold.epoch, fold.val_auc, fold.thresholds, fold.dataset) == (2, 3, auc, thresholds, "0123abcd")
    assert fold.config == cfg and fold.outputs == LEVELS and not fold.model.training
    x = torch.randn(2, 1, 64, 64)
    assert torch.allclose(fold.model(x), model.eval()(x))
    assert list(tmp_path.joinpath("fold2").iterdir()) == [path]  # no temporary file left behind
    # a best.pt written before checkpoints recorded their shards still loads
    del saved["dataset"]
    torch.save(saved, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").dataset == ""


def test_load_checkpoint_rejects_other_files(tmp_path: Path) -> None:
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(HnpError, match="missing model_state"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(HnpError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
