"""`hnp eval` of a fusion run: each test study predicted once by every fold model from all its films, the folds
bagged per study, the studies averaged per patient; youden-oof thresholds from per-study out-of-fold predictions;
a map per film of the top studies' fused prediction (eval/fusion_explain.py, checked by hand in
tests/test_fusion_explain.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from support.runs import build_run, tiny_config
from support.studies import build_study_shards

from eval.fusion_eval import FILMS_TABLE, STUDIES_TABLE
from eval.predict import predict_patient
from eval.samples import read_sample_meta
from hnp.cli import main
from hnp.errors import HnpError
from hnp.levels import LEVELS, VIEWS
from hnp.predictions import label_column, prob_column
from hnp.shard_format import read_dataset
from pipeline import split_shards
from pipeline.studies import build_study_loader, read_studies
from train.model import load_checkpoint

MAP_LAYER = "blocks.2"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fusioneval")
    shards = build_study_shards(folder, copies=4, folds=2)
    cfg = tiny_config()
    cfg = type(cfg)(**{**cfg.__dict__, "folds": 2, "model": type(cfg.model)(**{
        **cfg.model.__dict__, "fusion": "attention", "fusion_dim": 16})})
    run = build_run(folder, shards, cfg)
    out = folder / "report"
    code = main(["eval", "--run", str(run), "--shards", str(shards), "--out", str(out), "--bootstrap", "20",
                 "--threshold", "youden-oof", "--gradcam-top", "2", "--gradcam-method", "hirescam",
                 "--gradcam-layer", MAP_LAYER, "--no-wandb"])
    assert code == 0
    return {"shards": shards, "run": run, "report": out}


def test_every_test_study_is_predicted_once_and_bagged_over_the_folds(world: dict[str, Path]) -> None:
    studies = pd.read_parquet(world["report"] / STUDIES_TABLE)
    index = read_dataset(world["shards"]).split_studies(["test"])
    assert studies["key"].tolist() == sorted(study.key for study in index)  # every study once, nothing else
    films = read_sample_meta(split_shards(world["shards"], ["test"])).set_index("key")
    for study, (_, row) in zip(sorted(index, key=lambda s: s.key), studies.iterrows(), strict=True):
        assert row["view"] == "+".join(films.loc[list(study.films), "view"])
        for level in LEVELS:  # the study's labels are each of its films' labels
            assert (films.loc[list(study.films), label_column(level)] == row[label_column(level)]).all()
    for level in LEVELS:
        bagged = studies[[prob_column(level, 0), prob_column(level, 1)]].mean(axis=1)
        pd.testing.assert_series_equal(studies[prob_column(level)], bagged, check_names=False)
    assert not (world["report"] / "predictions_images.parquet").exists()


def test_a_study_row_is_the_fold_model_on_all_its_films(world: dict[str, Path]) -> None:
    model = load_checkpoint(world["run"] / "fold1" / "best.pt")
    study = max(read_studies(world["shards"], ["test"]), key=lambda s: len(s.films))  # all seven views
    batch = next(iter(build_study_loader(model.config.data, [study], training=False)))
    with torch.no_grad():
        direct = torch.sigmoid(model.model(batch["image"], batch["view"], batch["mask"]))[0]
    row = pd.read_parquet(world["report"] / STUDIES_TABLE).set_index("key").loc[study.key]
    torch.testing.assert_close(torch.tensor([row[prob_column(level, 1)] for level in LEVELS]), direct,
                               atol=1e-5, rtol=0)


def test_patients_are_the_mean_of_their_studies(world: dict[str, Path]) -> None:
    studies = pd.read_parquet(world["report"] / STUDIES_TABLE)
    patients = pd.read_parquet(world["report"] / "predictions_patients.parquet").set_index("patient")
    means = studies.groupby("patient")[[prob_column(level) for level in LEVELS]].mean()
    pd.testing.assert_frame_equal(patients.loc[means.index, means.columns], means, check_dtype=False)
    assert patients["n_images"].max() == 2  # the patient with two studies: two rows bagged
    metrics = json.loads((world["report"] / "metrics.json").read_text())
    assert metrics["fusion"] == "attention" and metrics["n_studies"] == len(studies)


def test_predict_fuses_one_patients_films_as_eval_does(world: dict[str, Path], tmp_path: Path) -> None:
    study = max(read_studies(world["shards"], ["test"]), key=lambda s: len(s.films))
    paths = []
    for film in study.films:
        paths.append(tmp_path / f"{film.key}.jpg")
        paths[-1].write_bytes(film.read("jpg"))
    views = [VIEWS[v] for v in study.views]
    result = predict_patient(world["run"], paths, views=views, device="cpu")
    row = pd.read_parquet(world["report"] / STUDIES_TABLE).set_index("key").loc[study.key]
    for level in LEVELS:
        assert result["targets"][level]["probability"] == pytest.approx(row[prob_column(level)], abs=1e-5)
    assert len(result["film_weights"]) == len(paths) and sum(result["film_weights"]) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(HnpError, match="--views: a fusion run .attention. needs the view of each image, 7 given"):
        predict_patient(world["run"], paths, views=views[:-1], device="cpu")


def test_each_test_film_has_its_pooling_weight_in_the_report(world: dict[str, Path], tmp_path: Path) -> None:
    films = pd.read_parquet(world["report"] / FILMS_TABLE)
    index = read_dataset(world["shards"]).split_studies(["test"])
    assert sorted(films["film"]) == sorted(film for study in index for film in study.films)  # every film once
    sums = films.groupby("key")["weight"].sum()
    assert sums.to_numpy() == pytest.approx(1.0, abs=1e-5)
    study = max(read_studies(world["shards"], ["test"]), key=lambda s: len(s.films))
    paths = []
    for film in study.films:
        paths.append(tmp_path / f"{film.key}.jpg")
        paths[-1].write_bytes(film.read("jpg"))
    result = predict_patient(world["run"], paths, views=[VIEWS[v] for v in study.views], device="cpu")
    assert films.set_index("key").loc[study.key, "weight"].tolist() == pytest.approx(result["film_weights"], abs=1e-5)
    report = (world["report"] / "report.md").read_text()
    assert "## Film weights per view (fusion)" in report
    studies = len(read_dataset(world["shards"]).split_studies(["test"]))
    assert f"{studies} test studies ({len(films)} films) of " in report  # not "N test images": they are studies
    assert "## Cross-validation (out-of-fold, study level;" in report


def test_eval_of_a_fusion_run_maps_every_film_of_the_top_studies(world: dict[str, Path]) -> None:
    index = pd.read_csv(world["report"] / "gradcam" / "index.csv")
    studies = {s.key: s for s in read_dataset(world["shards"]).split_studies(["test"])}
    ranked = pd.read_parquet(world["report"] / "predictions_studies.parquet")
    for level, part in index.groupby("level"):
        top = ranked.sort_values([prob_column(level), "key"], ascending=[False, True]).head(2)["key"].tolist()
        assert list(dict.fromkeys(part["study"])) == top  # the two most confident studies, in rank order
        for study, films in part.groupby("study"):
            assert sorted(films["key"]) == sorted(studies[study].films)  # each of its films once
            assert films["weight"].sum() == pytest.approx(1.0, abs=1e-4)
            assert films["drop"].isna().all() == (len(films) == 1)
    for row in index.itertuples():
        heat = np.load(world["report"] / "gradcam" / row.heatmap)
        assert heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1
        assert (world["report"] / "gradcam" / row.file).is_file()
    report = (world["report"] / "report.md").read_text()
    assert f"hirescam at {MAP_LAYER}, per film of the fused prediction" in report
    assert "## Which film carries the fused prediction" in report
    page = (world["report"] / "report.html").read_text()
    assert all(f'src="gradcam/{file}"' in page for file in index["file"])  # every film in the gallery
