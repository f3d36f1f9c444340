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


class AngleReader(torch.nn.Module):
    """A stand-in backbone that reads one number off each film: the segment angle the film is (1, 1, 1) of."""

    num_features = 1

    def forward(self, films: torch.Tensor) -> torch.Tensor:
        return films.flatten(1)


def flexion_extension_studies(count: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(films, views, mask, labels) of studies of a FLEX and an EXT film, as the phantom draws instability: each
    film's angle is uniform on [-1, 1]; an unstable segment (label 1) shifts EXT's by 1, wrapped into the same
    range, so either film alone, and the mean of the two, looks the same in both classes."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    flexion = torch.rand(count, generator=generator) * 2 - 1
    extension = torch.remainder(flexion + labels + 0.05 * torch.randn(count, generator=generator) + 1, 2) - 1
    films = torch.stack([flexion, extension], dim=1).reshape(-1, 1, 1, 1)
    views = torch.tensor([view_id("FLEX"), view_id("EXT")]).expand(count, 2)
    return films, views, torch.ones(count, 2, dtype=torch.bool), labels.float()


@pytest.mark.parametrize("mode", FUSION)
def test_fusion_learns_a_sign_seen_only_between_two_films_where_the_films_mean_cannot(mode: str) -> None:
    # What the paper's per-film mean can never see: instability, a difference between FLEX and EXT. The pooled
    # head learns it from the films' angles (AUC near 1); the mean of the films' own scores stays at chance.
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(0)
    model = FusionModel(AngleReader(), features=1, outputs=1, mode=mode, dim=16, layers=1, drop_rate=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        films_, views, mask, labels = flexion_extension_studies(64, generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(films_, views, mask).logits[:, 0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    films_, views, mask, labels = flexion_extension_studies(2000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = model.eval().fuse(films_, views, mask)
    film_mean = fused.film_logits[:, 0].reshape(-1, 2).mean(dim=1)
    assert roc_auc_score(labels, fused.logits[:, 0]) > 0.9
    assert abs(roc_auc_score(labels, film_mean) - 0.5) < 0.08  # 0.47 here: chance, 2000 studies
