"""The fusion model (`train.fusion`): one backbone over the real films only, masked pooling whose output does not
depend on padding, view embeddings that matter, and `model.fusion: none` the image-level model it always was."""

from __future__ import annotations

import pytest
import timm
import torch

from hnp.config import ModelConfig
from hnp.levels import view_id
from train.fusion import FusionModel, build_fusion_model, model_inputs
from train.model import TaskLoss, build_model

SIZE = 32
FUSION = ("mean", "attention")


def fusion_model(mode: str, task: str = "levels") -> FusionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(name="test_efficientnet", pretrained="none", task=task, drop_rate=0.0, fusion=mode,
                      fusion_dim=32)
    return build_fusion_model(cfg, channels=1).eval()


def study_batch(studies: list[tuple[torch.Tensor, list[str]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(films, views, mask) of studies given as (films (k, 1, S, S), their views), packed as the loaders pack them."""
    slots = max(len(views) for _, views in studies)
    mask = torch.zeros(len(studies), slots, dtype=torch.bool)
    view_ids = torch.full((len(studies), slots), -1, dtype=torch.int64)
    for b, (_, views) in enumerate(studies):
        mask[b, :len(views)] = True
        view_ids[b, :len(views)] = torch.tensor([view_id(view) for view in views])
    return torch.cat([films for films, _ in studies]), view_ids, mask


def films(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", FUSION)
@torch.no_grad()
def test_a_study_scores_the_same_however_its_batch_is_padded(mode: str) -> None:
    model = fusion_model(mode)
    single = (films(1, 1), ["LAT"])
    three = (films(3, 2), ["AP", "FLEX", "EXT"])
    six = (films(6, 3), ["AP", "LAT", "OBL_L", "OBL_R", "FLEX", "EXT"])
    alone = model(*study_batch([single]))
    for batch in ([single, six], [six, single, three], [three, single]):
        padded = model(*study_batch(batch))
        torch.testing.assert_close(padded[[i for i, s in enumerate(batch) if s is single][0]], alone[0])
    torch.testing.assert_close(model(*study_batch([six, three]))[1], model(*study_batch([three]))[0])


@pytest.mark.parametrize("mode", FUSION)
@torch.no_grad()
def test_the_backbone_runs_on_the_real_films_only(mode: str) -> None:
    model = fusion_model(mode)
    seen: list[int] = []
    model.backbone.register_forward_hook(lambda _module, args, _out: seen.append(args[0].shape[0]))
    inputs = study_batch([(films(1, 1), ["AP"]), (films(5, 2), ["AP", "LAT", "OBL_L", "FLEX", "EXT"])])
    model(*inputs)
    assert seen == [6]  # 2 x 5 slots, 6 films


@pytest.mark.parametrize("mode", FUSION)
@torch.no_grad()
def test_pooling_weights_cover_the_present_films_only(mode: str) -> None:
    model = fusion_model(mode)
    _, _, mask = inputs = study_batch([(films(2, 1), ["FLEX", "EXT"]), (films(4, 2), ["AP", "LAT", "AP", "OTHER"])])
    weights = model.fuse(*inputs).weights
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
    if mode == "mean":
        torch.testing.assert_close(weights[0, :2], torch.full((2,), 0.5))


@pytest.mark.parametrize("mode", FUSION)
@torch.no_grad()
def test_the_view_embedding_reaches_the_prediction_and_film_order_does_not(mode: str) -> None:
    model = fusion_model(mode)
    torch.nn.init.normal_(model.view_embedding.weight)  # trained embeddings differ per view
    pair = films(2, 4)
    flex_ext = model(*study_batch([(pair, ["FLEX", "EXT"])]))
    assert not torch.allclose(flex_ext, model(*study_batch([(pair, ["AP", "AP"])])))
    torch.testing.assert_close(model(*study_batch([(pair.flip(0), ["EXT", "FLEX"])])), flex_ext)


def test_levels_age_and_any_heads_have_their_outputs() -> None:
    inputs = study_batch([(films(2, 1), ["AP", "LAT"])])
    assert fusion_model("attention", "levels_age")(*inputs).shape == (1, 6)
    assert fusion_model("mean", "any")(*inputs).shape == (1, 1)


def test_fusion_none_is_the_image_level_timm_model() -> None:
    cfg = ModelConfig(name="test_efficientnet", pretrained="none", task="levels", drop_rate=0.0)
    torch.manual_seed(0)
    model = build_model(cfg, channels=1).eval()
    torch.manual_seed(0)
    reference = timm.create_model("test_efficientnet", num_classes=5, in_chans=1, drop_rate=0.0).eval()
    assert type(model) is type(reference)
    images = films(3, 5)
    batch = {"image": images, "labels": torch.zeros(3, 5)}
    with torch.no_grad():
        torch.testing.assert_close(model(*model_inputs(batch, torch.device("cpu"))), reference(images))


def test_in_training_the_loss_adds_each_films_own_loss_against_its_studys_labels() -> None:
    model = fusion_model("attention").train()
    inputs = study_batch([(films(2, 5), ["AP", "LAT"]), (films(3, 6), ["FLEX", "EXT", "AP"])])
    out = model(*inputs)
    assert out.logits.shape == (2, 5) and out.film_logits.shape == (5, 5)
    assert out.film_study.tolist() == [0, 0, 1, 1, 1]  # each film's study, in the packed order
    targets = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 1, 0, 1]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(out.logits, targets) + bce(out.film_logits, targets[[0, 0, 1, 1, 1]])
    loss = TaskLoss(ModelConfig(name="test_efficientnet", task="levels"))(out, targets)
    torch.testing.assert_close(loss, expected)
    model.eval()
    with torch.no_grad():  # in eval mode the model returns the fused logits alone
        torch.testing.assert_close(model(*inputs), model.fuse(*inputs).logits)


@pytest.mark.parametrize("mode", FUSION)
@torch.no_grad()
def test_started_from_an_image_model_a_study_scores_its_films_mean_logits_under_that_model(mode: str) -> None:
    torch.manual_seed(1)
    image_model = build_model(ModelConfig(name="test_efficientnet", pretrained="none", drop_rate=0.0),
                              channels=1).eval()
    model = fusion_model(mode)
    model.start_from_image_model(image_model)
    three, two = films(3, 7), films(2, 8)
    fused = model(*study_batch([(three, ["AP", "FLEX", "EXT"]), (two, ["LAT", "AP"])]))
    expected = torch.stack([image_model(three).mean(dim=0), image_model(two).mean(dim=0)])
    torch.testing.assert_close(fused, expected)
