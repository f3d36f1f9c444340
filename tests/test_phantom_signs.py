"""hnp phantom --difficulty paper: each sign is in the pixels exactly where the truth says a film shows it.

For every sign, a measurement on the rendered image alone (tests/support/phantom_pixels.py; the truth only says
where to look) separates the films that show the sign from those that do not (ROC AUC well above 0.9), and finds
nothing in the views that should hide it: there, planted and absent signs measure alike (AUC near 0.5). Those
comparisons use only levels where the film shows no other sign, since signs of one level come together with the
herniation (the truth's correlation, not a leak). Instability is measured on each patient's FLEX and EXT pair.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from support import phantom_pixels as px

from hnp.levels import LEVELS
from phantom.anatomy import base_prevalence, sample_patient
from phantom.generate import PhantomConfig, generate
from phantom.render import render_view
from phantom.signs import PAPER, SIGNS
from phantom.truth import read_truth_table
from phantom.views import LORDOSIS_SHARE

SINGLE_FILM_SIGNS = ("narrowing", "listhesis", "osteophyte", "sclerosis", "scoliosis", "facet")
HIDDEN_TOLERANCE = 0.12  # |AUC - 0.5| where a view hides a sign: about 3 standard errors at the smallest counts


@pytest.fixture(scope="module")
def paper_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1000 full-size radiographs of 200 patients, balanced prevalence, every sign often planted."""
    out = tmp_path_factory.mktemp("phantom") / "paper"
    generate(PhantomConfig(out=out, patients=200, seed=11, prevalence="balanced", difficulty="paper", workers=2),
             progress=False)
    return out


def measure_image(image: np.ndarray, truth: dict, facet_boxes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every measurement at every level of one radiograph, (5,) each, LEVELS order."""
    soft_and_bone = px.contrast(image, truth)
    heights = np.array([px.disc_height(image, truth, level) for level in LEVELS])
    wedges = np.array([px.wedge(image, truth, level) for level in LEVELS])
    return {
        "narrowing": -px.relative_to_other_levels(heights),
        "listhesis": np.array([px.anterior_step(image, truth, level) for level in LEVELS]),
        "osteophyte": np.array([px.lateral_excess(image, truth, level, soft_and_bone) for level in LEVELS]),
        "sclerosis": np.array([px.endplate_band(image, truth, level, soft_and_bone) for level in LEVELS]),
        "scoliosis": np.abs(wedges),
        "facet": np.array([px.spot_brightness(image, facet_boxes[level], soft_and_bone) for level in LEVELS]),
        "wedge": wedges,
        "body_angle": np.array([px.body_angle(image, truth, level) for level in LEVELS]),
    }


@pytest.fixture(scope="module")
def measured(paper_set: Path) -> pd.DataFrame:
    """One row per radiograph x level: the view, every measurement, and per sign planted/visible from the truth."""
    images = read_truth_table(paper_set / "truth.parquet", "images")
    signs = read_truth_table(paper_set / "truth_signs.parquet", "signs")
    wide = signs.pivot_table(index=["row", "level"], columns="sign", values=["planted", "visible"], aggfunc="first")
    facet = signs[signs["sign"] == "facet"].set_index(["row", "level"])[["x0", "y0", "x1", "y1"]]
    rows = []
    for truth in images.to_dict("records"):
        image = cv2.imread(str(paper_set / truth["image_path"]), cv2.IMREAD_GRAYSCALE)
        boxes = {level: facet.loc[(truth["row"], level)].to_numpy() for level in LEVELS}
        values = measure_image(image, truth, boxes)
        for k, level in enumerate(LEVELS):
            flags = wide.loc[(truth["row"], level)]
            rows.append({"row": truth["row"], "patient": truth["patient"], "view": truth["view"], "level": level,
                         **{name: v[k] for name, v in values.items()},
                         **{f"planted_{s}": bool(flags[("planted", s)]) for s in SIGNS},
                         **{f"visible_{s}": bool(flags[("visible", s)]) for s in SIGNS}})
    return pd.DataFrame(rows)


def others_visible(frame: pd.DataFrame, sign: str) -> pd.Series:
    """Whether the film shows any sign but `sign` at the row's level."""
    return frame[[f"visible_{s}" for s in SIGNS if s != sign]].any(axis=1)


@pytest.mark.parametrize("sign", SINGLE_FILM_SIGNS)
def test_a_sign_shows_where_the_truth_says_and_nowhere_else(measured: pd.DataFrame, sign: str) -> None:
    model = PAPER.signs[sign]
    drawing = measured["view"].isin(model.views)
    shown = measured[drawing]
    assert 40 <= shown[f"visible_{sign}"].sum() < len(shown)
    visible_auc = roc_auc_score(shown[f"visible_{sign}"], shown[sign])
    assert visible_auc > 0.9, f"{sign}: measured AUC {visible_auc:.3f} where the views show it"
    hidden = measured[~drawing & ~others_visible(measured, sign)]
    assert hidden[f"planted_{sign}"].sum() >= 40
    hidden_auc = roc_auc_score(hidden[f"planted_{sign}"], hidden[sign])
    assert abs(hidden_auc - 0.5) < HIDDEN_TOLERANCE, f"{sign}: AUC {hidden_auc:.3f} in views that hide it"


def test_a_facet_shows_only_in_the_oblique_of_its_side(measured: pd.DataFrame) -> None:
    obliques = measured[measured["view"].isin(["OBL_L", "OBL_R"]) & ~others_visible(measured, "facet")]
    other_side = obliques[obliques["planted_facet"] & ~obliques["visible_facet"]]
    absent = obliques[~obliques["planted_facet"]]
    assert len(other_side) >= 30
    labels = np.r_[np.ones(len(other_side)), np.zeros(len(absent))]
    auc = roc_auc_score(labels, np.r_[other_side["facet"], absent["facet"]])
    assert abs(auc - 0.5) < HIDDEN_TOLERANCE, f"a facet on the other side measures AUC {auc:.3f}"


def segment_deviation(angles: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(5,) each level's angle minus its share (LORDOSIS_SHARE) of the motion that the `reference` levels among the
    other four imply (all four if none is a reference)."""
    share = LORDOSIS_SHARE[1:]
    deviation = []
    for k in range(len(LEVELS)):
        others = [j for j in range(len(LEVELS)) if j != k]
        used = [j for j in others if reference[j]] or others
        deviation.append(angles[k] - share[k] * np.median(angles[used] / share[used]))
    return np.array(deviation)


def segment_angles(group: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One film's (5,) segment angles, the mean of the gap's wedge and the bodies' edge angle (two independent
    estimates), and which levels look unnarrowed (disc height >= 0.8 of the others'): a narrowed disc loses wedge
    in extension, so it would bend the whole spine's motion the others are compared with."""
    film = group.set_index("level").loc[list(LEVELS)]
    return (film["wedge"] + film["body_angle"]).to_numpy() / 2, -film["narrowing"].to_numpy() >= 0.8


@pytest.fixture(scope="module")
def instability_scores(paper_set: Path, measured: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per scored level, (truth flag, |deviation|): "pair" from each patient's EXT minus FLEX angles (flag: the
    pair shows instability), "single" from each FLEX or EXT film alone (flag: instability planted). Narrowed discs
    are not scored: they lose wedge in extension (a stiffer segment), which is the narrowing's own sign."""
    patients = read_truth_table(paper_set / "truth_patients.parquet", "patients").set_index(
        ["patient", "level", "sign"])
    films = measured[measured["view"].isin(["FLEX", "EXT"])]
    pairs, singles = [], []
    for patient, group in films.groupby("patient"):
        angles = {view: segment_angles(g) for view, g in group.groupby("view")}
        reference = np.logical_and.reduce([unnarrowed for _, unnarrowed in angles.values()])
        scored = [(k, patients.loc[(patient, level, "instability"), "observed"],
                   patients.loc[(patient, level, "instability"), "planted"]) for k, level in enumerate(LEVELS)
                  if not patients.loc[(patient, level, "narrowing"), "planted"]]
        if len(angles) == 2:
            deviation = segment_deviation(angles["EXT"][0] - angles["FLEX"][0], reference)
            pairs += [(observed, abs(deviation[k])) for k, observed, _ in scored]
        for single, _ in angles.values():
            deviation = segment_deviation(single, reference)
            singles += [(planted, abs(deviation[k])) for k, _, planted in scored]
    return {"pair": np.array(pairs), "single": np.array(singles)}


def test_instability_shows_in_the_flex_and_ext_pair(instability_scores: dict[str, np.ndarray]) -> None:
    """Extension minus flexion angle per level, against its share of the whole spine's motion, separates unstable
    segments."""
    pairs = instability_scores["pair"]
    assert pairs[:, 0].sum() >= 30
    auc = roc_auc_score(pairs[:, 0], pairs[:, 1])
    assert auc > 0.9, f"FLEX/EXT pairs: AUC {auc:.3f}"


def test_one_flex_or_ext_film_alone_does_not_show_instability(instability_scores: dict[str, np.ndarray]) -> None:
    singles = instability_scores["single"]
    assert singles[:, 0].sum() >= 40
    auc = roc_auc_score(singles[:, 0], singles[:, 1])
    assert abs(auc - 0.5) < HIDDEN_TOLERANCE, f"one FLEX or EXT film alone: AUC {auc:.3f}"


@pytest.mark.parametrize(("sign", "view"), [("osteophyte", "AP"), ("osteophyte", "OBL_R"), ("sclerosis", "LAT"),
                                            ("sclerosis", "EXT"), ("facet", "OBL_L")])
def test_the_box_holds_what_a_local_sign_changes(sign: str, view: str) -> None:
    """The same film with and without one sign at full severity: the pixels it changes lie in its truth box (grown
    by the blur's reach). Signs that move the vertebrae (narrowing, listhesis, tilt) change the whole chain."""
    rng = np.random.default_rng(8)
    base = sample_patient(rng, base_prevalence("balanced"), PAPER)
    k, j = LEVELS.index("L4-5"), SIGNS.index(sign)
    planted = np.zeros_like(base.signs.planted)
    planted[k, j] = True
    high = PAPER.models[j].magnitude[1]
    sick = replace(base, signs=replace(base.signs, planted=planted, severity=planted * 1.0,
                                       magnitude=planted * high, side=np.full(planted.shape, "L")))
    healthy = replace(sick, signs=replace(sick.signs, planted=np.zeros_like(planted)))
    with_sign = render_view(sick, view, np.random.default_rng(1), (512, 400))
    without = render_view(healthy, view, np.random.default_rng(1), (512, 400))
    changed = np.abs(with_sign.pixels.astype(int) - without.pixels.astype(int)) > 8
    x0, y0, x1, y1 = with_sign.boxes[k, j]
    reach = 4  # pixels: blur (sigma up to 1.6) and JPEG blocks
    yy, xx = np.mgrid[:512, :400]
    inside = (xx >= x0 - reach) & (xx <= x1 + reach) & (yy >= y0 - reach) & (yy <= y1 + reach)
    assert changed.sum() > 30, f"{sign} changed {changed.sum()} pixels in {view}"
    assert changed[inside].sum() >= 0.98 * changed.sum(), f"{sign} in {view}: {changed[~inside].sum()} pixels outside"
