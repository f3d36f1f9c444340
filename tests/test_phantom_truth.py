"""hnp phantom's truth tables and ceiling: the tables follow their contract and agree with the manifest, the
visibility rules hold view by view, and the ceiling, recomputed independently by simulation from the generator,
matches what ceiling.json says; all of a patient's films beat one film where views carry different signs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from hnp.errors import HnpError
from hnp.levels import LEVEL_COLUMNS, LEVELS
from phantom.anatomy import PHANTOM_VIEWS, age_fraction, base_prevalence, sample_patient
from phantom.ceiling import ceiling_auc, film_mean, posterior, read_ceiling, scope_aucs
from phantom.generate import PhantomConfig, generate
from phantom.signs import PAPER, SIGNS, difficulty_preset
from phantom.truth import TRUTH_COLUMNS, TRUTH_FILES, read_truth_table

SMALL = (128, 100)
# Which views show each sign of the `paper` preset, written out here rather than read from phantom.signs, so a
# change of the rules there has to be made on purpose in both places. Facets: the oblique of their side only.
PAPER_VIEWS = {
    "narrowing": {"LAT", "FLEX", "EXT"},
    "listhesis": {"LAT", "FLEX", "EXT"},
    "instability": set(),  # only a FLEX and an EXT film together
    "osteophyte": {"AP", "OBL_L", "OBL_R"},
    "sclerosis": {"AP", "LAT", "FLEX", "EXT"},
    "scoliosis": {"AP", "OBL_L", "OBL_R"},
    "facet": {"OBL_L", "OBL_R"},
}


@pytest.fixture(scope="module")
def paper_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "paper"
    generate(PhantomConfig(out=out, patients=60, seed=5, size=SMALL, prevalence="balanced", difficulty="paper",
                           test_fraction=0.3), progress=False)
    return out


@pytest.fixture(scope="module")
def tables(paper_small: Path) -> dict[str, pd.DataFrame]:
    return {kind: read_truth_table(paper_small / name, kind) for kind, name in TRUTH_FILES.items()}


def test_paper_truth_and_ceiling_bytes_do_not_depend_on_workers(paper_small: Path, tmp_path: Path) -> None:
    generate(PhantomConfig(out=tmp_path / "again", patients=60, seed=5, size=SMALL, prevalence="balanced",
                           difficulty="paper", test_fraction=0.3, workers=2), progress=False)
    for name in ("ceiling.json", *TRUTH_FILES.values()):
        assert (paper_small / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_tables_have_their_columns_rows_in_manifest_order_and_no_identifiers(
        paper_small: Path, tables: dict[str, pd.DataFrame]) -> None:
    manifest = pd.read_parquet(paper_small / "manifest.parquet")
    for kind, frame in tables.items():
        assert list(frame.columns) == list(TRUTH_COLUMNS[kind]), kind
        text = frame.astype(str).to_numpy().ravel()
        assert not set(manifest["patient_id"]) & set(text) and not set(manifest["study_id"]) & set(text), kind
    images, signs = tables["images"], tables["signs"]
    assert images["row"].tolist() == list(range(len(manifest)))
    assert images["image_path"].tolist() == manifest["image_path"].tolist()
    assert images["view"].tolist() == manifest["view"].tolist()
    assert (images["patient"] == manifest["image_path"].str.extract(r"^images/p(\d{6})_\d\.jpg$")[0].astype(int)).all()
    assert len(signs) == len(images) * len(LEVELS) * len(SIGNS)
    assert signs["row"].tolist() == np.repeat(images["row"], len(LEVELS) * len(SIGNS)).tolist()
    assert signs["image_path"].tolist() == np.repeat(images["image_path"], len(LEVELS) * len(SIGNS)).tolist()
    assert signs["level"].tolist()[:35] == list(np.repeat(LEVELS, len(SIGNS)))
    assert signs["sign"].tolist()[:35] == list(SIGNS) * len(LEVELS)


def test_a_patients_latent_state_is_the_same_in_every_table(paper_small: Path, tables: dict[str, pd.DataFrame]) -> None:
    manifest = pd.read_parquet(paper_small / "manifest.parquet").assign(patient=tables["images"]["patient"])
    patients, signs = tables["patients"], tables["signs"]
    hnp = patients.drop_duplicates(["patient", "level"]).pivot(index="patient", columns="level", values="hnp")
    labels = manifest.drop_duplicates("patient").set_index("patient")[list(LEVEL_COLUMNS)]
    assert (hnp[list(LEVELS)].to_numpy() == labels.to_numpy().astype(bool)).all()
    per_image = signs.merge(patients, on=["patient", "level", "sign"], suffixes=("", "_patient"))
    assert len(per_image) == len(signs)
    for column in ("planted", "severity", "magnitude", "side"):
        assert (per_image[column] == per_image[f"{column}_patient"]).all(), column
    silent = patients[patients["silent"]]
    assert silent["hnp"].all() and not silent["planted"].any() and len(silent) > 0
    assert patients["posterior"].between(0, 1).all() and tables["images"].filter(like="posterior_").stack().between(
        0, 1).all()


def test_visibility_follows_the_views(tables: dict[str, pd.DataFrame]) -> None:
    signs = tables["signs"].merge(tables["images"][["row", "view"]], on="row")
    facet_side_view = np.where(signs["side"] == "L", "OBL_L", "OBL_R")
    shows = [view in PAPER_VIEWS[sign] for view, sign in zip(signs["view"], signs["sign"], strict=True)]
    expected = signs["planted"] & np.array(shows)
    expected &= (signs["sign"] != "facet") | (signs["view"] == facet_side_view)
    assert (signs["visible"] == expected).all()
    assert signs["visible"].sum() > 100 and (signs["planted"] & ~signs["visible"]).sum() > 100
    patients = tables["patients"]
    views = patients["views"].str.split(",")
    unstable = patients[patients["sign"] == "instability"]
    has_pair = unstable["views"].str.contains("FLEX") & unstable["views"].str.contains("EXT")
    assert (unstable["observed"] == (unstable["planted"] & has_pair)).all()
    others = patients["sign"] != "instability"
    shown_somewhere = signs.groupby(["patient", "level", "sign"])["visible"].any()
    joined = patients[others].join(shown_somewhere, on=["patient", "level", "sign"])
    assert (joined["observed"] == joined["visible"]).all()
    assert views.map(len).between(1, 6).all()


def test_severities_magnitudes_sides_and_boxes(tables: dict[str, pd.DataFrame]) -> None:
    signs = tables["signs"].merge(tables["images"][["row", "height", "width"]], on="row")
    planted = signs[signs["planted"]]
    assert planted["severity"].between(0, 1).all() and (signs.loc[~signs["planted"], "severity"] == 0).all()
    for sign, model in PAPER.signs.items():
        magnitude = planted.loc[planted["sign"] == sign, "magnitude"]
        assert magnitude.between(*model.magnitude).all() and len(magnitude) > 0, sign
    sided = planted["sign"].isin(["facet", "scoliosis"])
    assert planted.loc[sided, "side"].isin(["L", "R"]).all() and (signs.loc[~signs.index.isin(
        planted[sided].index), "side"] == "").all()
    assert ((signs["x0"] >= 0) & (signs["x1"] <= signs["width"]) & (signs["y0"] >= 0)
            & (signs["y1"] <= signs["height"])).all()
    assert (signs["x1"] > signs["x0"]).all() and (signs["y1"] > signs["y0"]).all()
    # narrowing's box is the disc: its centre is the disc centre of truth.parquet
    images = tables["images"].set_index("row")
    discs = signs[signs["sign"] == "narrowing"]
    for level in LEVELS:
        rows = discs[discs["level"] == level]
        x = images.loc[rows["row"], f"{level}_x"].to_numpy()
        inside = (rows["x0"] < x) & (x < rows["x1"])
        assert inside.all(), level


def test_ceiling_json_matches_the_truth_tables(paper_small: Path, tables: dict[str, pd.DataFrame]) -> None:
    document = read_ceiling(paper_small / "ceiling.json")
    assert (document["difficulty"], document["prevalence"], document["patients"]) == ("paper", "balanced", 60)
    images, patients = tables["images"], tables["patients"]
    manifest = pd.read_parquet(paper_small / "manifest.parquet")
    frame = images.assign(split=manifest["split"], **{f"label_{lv}": manifest[c]
                                                      for lv, c in zip(LEVELS, LEVEL_COLUMNS, strict=True)})
    people = patients.drop_duplicates(["patient", "level"]).pivot(index=["patient", "split"], columns="level",
                                                                  values=["hnp", "posterior"])
    people = pd.DataFrame({"split": people.index.get_level_values("split"),
                           **{f"label_{lv}": people[("hnp", lv)].to_numpy().astype(int) for lv in LEVELS},
                           **{f"posterior_{lv}": people[("posterior", lv)].to_numpy() for lv in LEVELS}})
    for split in ("train", "test"):
        expected = {"image": scope_aucs(frame[frame["split"] == split]),
                    "patient": scope_aucs(people[people["split"] == split]),
                    "film_mean": scope_aucs(film_mean(frame[frame["split"] == split]))}
        for scope, targets in expected.items():
            for target, entry in targets.items():
                assert document["splits"][split][scope][target] == pytest.approx(entry), (split, scope, target)
    assert ceiling_auc(document, "L4-5", "patient", "test") == document["splits"]["test"]["patient"]["L4-5"]["auc"]


def test_easy_narrows_every_herniation_in_every_film_and_its_ceiling_is_one(tmp_path: Path) -> None:
    generate(PhantomConfig(out=tmp_path / "easy", patients=40, seed=2, size=SMALL, prevalence="balanced"),
             progress=False)
    signs = read_truth_table(tmp_path / "easy" / "truth_signs.parquet", "signs")
    patients = read_truth_table(tmp_path / "easy" / "truth_patients.parquet", "patients")
    hnp = signs.merge(patients[["patient", "level", "sign", "hnp"]], on=["patient", "level", "sign"])
    narrowing = hnp[hnp["sign"] == "narrowing"]
    assert (narrowing["visible"] == narrowing["hnp"]).all() and narrowing["hnp"].sum() > 100
    images = read_truth_table(tmp_path / "easy" / "truth.parquet", "images")
    manifest = pd.read_parquet(tmp_path / "easy" / "manifest.parquet")
    for level, column in zip(LEVELS, LEVEL_COLUMNS, strict=True):
        assert (images[f"posterior_{level}"] == manifest[column]).all(), level
    document = read_ceiling(tmp_path / "easy" / "ceiling.json")
    for scope in ("image", "patient", "film_mean"):
        assert all(document["splits"]["all"][scope][t]["auc"] == 1.0 for t in (*LEVELS, "any")), scope


def test_the_ceiling_reader_refuses_what_it_cannot_trust(paper_small: Path, tmp_path: Path) -> None:
    good = json.loads((paper_small / "ceiling.json").read_text())
    cases = {"not json": "{", "no format": json.dumps({"version": 1}),
             "other version": json.dumps({**good, "version": 99}),
             "missing target": json.dumps({**good, "splits": {**good["splits"], "test": {
                 "image": good["splits"]["test"]["image"], "patient": {}}}})}
    messages = {"not json": "cannot read a ceiling file", "no format": "not a phantom ceiling file",
                "other version": "version 99", "missing target": "splits.test.patient lacks L1-2"}
    for name, text in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        with pytest.raises(HnpError, match=messages[name]) as error:
            read_ceiling(path)
        assert str(path) in str(error.value)
    with pytest.raises(HnpError, match="no ceiling for target 'L6-7'"):
        ceiling_auc(good, "L6-7")


def test_a_truth_table_reader_names_the_missing_columns(paper_small: Path, tmp_path: Path) -> None:
    with pytest.raises(HnpError, match="not a phantom truth_signs.parquet"):
        read_truth_table(paper_small / "truth.parquet", "signs")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(HnpError, match="junk.parquet: not a readable Parquet file"):
        read_truth_table(tmp_path / "junk.parquet", "images")


def simulated_evidence(patients: int, seed: int) -> dict[str, pd.DataFrame]:
    """Patients drawn from the generator (no pixels), one row per (image, level) and per (patient, level): the
    label, the analytic posterior, and features a generic learner sees: age, the views looked at, and per sign
    whether those films show it and how severe it is. Balanced prevalence: every level has the same prior and
    sign models, so levels pool."""
    base, rng = base_prevalence("balanced"), np.random.default_rng(seed)
    rows: dict[str, list] = {"image": [], "patient": []}
    for _ in range(patients):
        patient = sample_patient(rng, base, PAPER)
        for scope, films in [("image", (view,)) for view in patient.views] + [("patient", patient.views)]:
            shown = patient.signs.visible(films, PAPER)
            post = posterior(patient, films, base)
            views = [float(v in films) for v in PHANTOM_VIEWS]
            for k in range(len(LEVELS)):
                rows[scope].append([patient.labels[k], post[k], age_fraction(patient.age), *views, *shown[k],
                                    *np.where(shown[k], patient.signs.severity[k], -1.0)])
    columns = ["label", "posterior", "age", *PHANTOM_VIEWS, *(f"shown_{s}" for s in SIGNS),
               *(f"severity_{s}" for s in SIGNS)]
    return {scope: pd.DataFrame(values, columns=columns) for scope, values in rows.items()}


@pytest.fixture(scope="module")
def simulated() -> dict[str, pd.DataFrame]:
    return simulated_evidence(patients=5000, seed=17)


def test_the_posterior_is_calibrated_against_the_generator(simulated: dict[str, pd.DataFrame]) -> None:
    """In every decile of the analytic posterior, the share of herniated levels the generator drew is the
    posterior's mean within 4 binomial standard errors: the likelihoods are those the sampler uses."""
    for scope, frame in simulated.items():
        deciles = pd.qcut(frame["posterior"], 10, duplicates="drop")
        groups = frame.groupby(deciles, observed=True)
        observed, predicted, count = groups["label"].mean(), groups["posterior"].mean(), groups.size()
        error = 4 * np.sqrt(predicted * (1 - predicted) / count) + 0.01
        assert ((observed - predicted).abs() < error).all(), (scope, pd.DataFrame({"observed": observed,
                                                                                 "predicted": predicted}))


def test_no_learner_beats_the_ceiling_and_all_films_beat_one(simulated: dict[str, pd.DataFrame]) -> None:
    """A gradient-boosted classifier trained on half the simulated evidence scores, on the other half, at most
    the analytic posterior's AUC (it is the ceiling) and close to it (the ceiling is within reach of a learner
    that sees the signs); both say a patient's films together carry clearly more than one film."""
    aucs = {}
    for scope, frame in simulated.items():
        half = len(frame) // 2
        learner = HistGradientBoostingClassifier(max_iter=100, random_state=0)
        with threadpool_limits(limits=1):  # OpenMP threads on a busy 2-core machine cost minutes, not seconds
            learner.fit(frame.iloc[:half].drop(columns=["label", "posterior"]), frame["label"].iloc[:half])
        held_out = frame.iloc[half:]
        learned = roc_auc_score(held_out["label"], learner.predict_proba(held_out.drop(
            columns=["label", "posterior"]))[:, 1])
        ceiling = roc_auc_score(held_out["label"], held_out["posterior"])
        assert ceiling - 0.03 < learned < ceiling + 0.005, (scope, learned, ceiling)
        aucs[scope] = (learned, ceiling)
    assert aucs["patient"][1] > aucs["image"][1] + 0.05 and aucs["patient"][0] > aucs["image"][0] + 0.05, aucs


def test_the_instability_preset_shows_nothing_to_the_films_mean_and_much_to_the_patients_films_together() -> None:
    # The fusion benchmark: each film's ideal posterior, averaged per patient, scores no better than the age alone;
    # the FLEX and EXT films compared score far above it.
    preset, base = difficulty_preset("instability"), base_prevalence("balanced")
    assert [sign for sign, model in preset.signs.items() if model.p_hnp > 0] == ["instability"]

    def per_level(prefix: str, values: object) -> dict[str, object]:
        return {f"{prefix}_{level}": value for level, value in zip(LEVELS, values, strict=True)}

    rng = np.random.default_rng(0)
    films, people = [], []
    for index in range(1500):
        patient = sample_patient(rng, base, preset)
        labels = per_level("label", patient.labels)
        films += [{"patient": index, **labels, **per_level("posterior", posterior(patient, (view,), base))}
                  for view in patient.views]
        people.append({**labels, **per_level("posterior", posterior(patient, patient.views, base)),
                       **per_level("age", posterior(patient, (), base))})  # no film: the age's prior alone
    films, people = pd.DataFrame(films), pd.DataFrame(people)
    mean, together = scope_aucs(film_mean(films)), scope_aucs(people)
    for level in LEVELS:
        age_only = roc_auc_score(people[f"label_{level}"], people[f"age_{level}"])
        assert abs(mean[level]["auc"] - age_only) < 0.02, level
        assert together[level]["auc"] > mean[level]["auc"] + 0.15, level
