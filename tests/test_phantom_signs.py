"""hnp phantom --difficulty paper: each sign is in the pixels exactly where the truth says a film shows it.

For every sign, a measurement on the rendered image alone (tests/support/phantom_pixels.py; the truth only says
where to look) separates the films that show the sign from those that do not (ROC AUC well above 0.9), and finds
nothing in the views that should hide it: there, planted and absent signs measure alike (AUC near 0.5). Those
comparisons use only levels where the film shows no other sign, since signs of one level come together with the
herniation (the truth's correlation, not a leak). Instability is measured on each patient's FLEX and EXT pair.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from support import phantom_pixels as px

from hnp.levels import LEVELS
from phantom.generate import PhantomConfig, generate
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


def segment_deviation(wedges: np.ndarray) -> np.ndarray:
    """(5,) each level's angle minus its share (LORDOSIS_SHARE) of the motion the other four levels imply."""
    share = LORDOSIS_SHARE[1:]
    deviation = []
    for k in range(len(LEVELS)):
        others = np.delete(np.arange(len(LEVELS)), k)
        deviation.append(wedges[k] - share[k] * np.median(wedges[others] / share[others]))
    return np.array(deviation)


def test_instability_shows_only_in_the_flex_and_ext_pair(paper_set: Path, measured: pd.DataFrame) -> None:
    """Flexion minus extension angle per level, against the share of the whole spine's motion, separates unstable
    segments; either film alone does not. Narrowed discs are left out: they lose wedge in extension (a stiffer
    segment), which the narrowing's own measurement accounts for."""
    patients = read_truth_table(paper_set / "truth_patients.parquet", "patients").set_index(
        ["patient", "level", "sign"])
    films = measured[measured["view"].isin(["FLEX", "EXT"])]
    pairs, singles = [], []
    for patient, group in films.groupby("patient"):
        wedges = {view: g.set_index("level").loc[list(LEVELS), "wedge"].to_numpy() for view, g in group.groupby("view")}
        flags = [(patients.loc[(patient, level, "instability"), "observed"],
                  patients.loc[(patient, level, "instability"), "planted"],
                  patients.loc[(patient, level, "narrowing"), "planted"]) for level in LEVELS]
        if len(wedges) == 2:
            deviation = segment_deviation(wedges["EXT"] - wedges["FLEX"])
            pairs += [(observed, abs(d)) for (observed, _, narrowed), d in zip(flags, deviation, strict=True)
                      if not narrowed]
        for single in wedges.values():
            singles += [(planted, abs(d)) for (_, planted, narrowed), d in zip(flags, segment_deviation(single),
                                                                            strict=True) if not narrowed]
    pairs, singles = np.array(pairs), np.array(singles)
    assert pairs[:, 0].sum() >= 30 and singles[:, 0].sum() >= 40
    pair_auc, single_auc = roc_auc_score(pairs[:, 0], pairs[:, 1]), roc_auc_score(singles[:, 0], singles[:, 1])
    assert pair_auc > 0.9, f"FLEX/EXT pairs: AUC {pair_auc:.3f}"
    assert abs(single_auc - 0.5) < HIDDEN_TOLERANCE, f"one FLEX or EXT film alone: AUC {single_auc:.3f}"
