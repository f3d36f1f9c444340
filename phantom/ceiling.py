"""The ceiling of a phantom: the best ROC AUC any model could reach on it, from the generator's own probabilities.

The ideal observer knows the generator (`phantom.signs`) and, for one radiograph or for all of a patient's films
together, everything they show of the signs at each level (which signs, how severe), and the patient's age. Its
probability of HNP at a level is the posterior

    P(HNP | age, shown) = prior * L_hnp / (prior * L_hnp + (1 - prior) * L_other)

with the age-dependent prior of `phantom.anatomy.level_probabilities` and the likelihoods of
`phantom.signs.level_likelihoods`. Given age and the signs a film shows, nothing else in its pixels depends on the
labels (hidden signs are not drawn, pose, exposure and the healthy anatomy are drawn independently of them), so no
model can beat this posterior's AUC in expectation; a model that sees only pixels has to guess age from the spine,
so it may fall short of it even with unlimited data. "any" uses 1 - prod(1 - P) (levels are independent given age).

`hnp phantom` writes `ceiling.json`, per split ("train", "test", "all"), per scope and per target (LEVELS, then
"any"). The scopes:

- "image": every radiograph on its own;
- "patient": all of a patient's films together: the ceiling of any per-patient model, a fusion model's included;
- "film_mean": each of a patient's films scored on its own, then averaged: the ceiling of the paper's protocol
  (an image model's per-patient mean). "patient" minus "film_mean" is the most that fusing the films can add over
  a perfect image model; the rest of a model's gap to "patient" is what its films' own scores lack.

    {"format": "hnp-phantom-ceiling", "version": 2, "difficulty": "paper", "prevalence": "paper", "seed": 0,
     "patients": 600, "images": 3101,
     "splits": {"test": {"image": {"L1-2": {"auc": 0.74, "n": 310, "n_pos": 12}, ..., "any": {...}},
                         "patient": {...}, "film_mean": {...}},
                "train": {...}, "all": {...}}}

"auc" is null where a split has only one class at that target.

    from phantom.ceiling import ceiling_auc, read_ceiling
    doc = read_ceiling(Path("demo/phantom/ceiling.json"))
    ceiling_auc(doc, "L4-5", scope="patient", split="test")

`hnp eval --truth <phantom>/truth.parquet` puts a model's test AUC beside the ceiling (`beside_ceiling`): the
`ceiling` block of metrics.json, a report.md section and console lines. The block is None without --truth, and
{"missing": "ceiling.json"} where the truth has no ceiling.json beside it; else

    {"file": "ceiling.json", "difficulty": "paper", "prevalence": "paper", "split": "test",
     "targets": {"L1-2": {"image": {"model": 0.61, "ceiling": 0.74, "n_model": 310, "n_ceiling": 310},
                          "patient": {..., "film_mean_ceiling": 0.82}}, ..., "any": {...}}}

with "model" the AUC of the model's bagged probability per image (`predictions_images`; None for a fusion model)
and per patient (the patient mean, or a fusion model's study score: `predictions_patients`), "ceiling" the
phantom's test-split ceiling of the same scope, "film_mean_ceiling" the test split's "film_mean" ceiling, and the
row counts each was computed on (they differ only if some test radiographs were not sharded).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from hnp.errors import HnpError
from hnp.files import atomic_write_text
from hnp.levels import LEVELS
from hnp.predictions import label_column, prob_column
from phantom.anatomy import Patient, age_fraction, level_probabilities
from phantom.signs import level_likelihoods

CEILING_FILE = "ceiling.json"
CEILING_FORMAT = "hnp-phantom-ceiling"
CEILING_VERSION = 2  # 2: the "film_mean" scope
SCOPES: tuple[str, ...] = ("image", "patient", "film_mean")
CEILING_SPLITS: tuple[str, ...] = ("train", "test", "all")
TARGETS: tuple[str, ...] = (*LEVELS, "any")


def posterior(patient: Patient, films: Iterable[str], base: np.ndarray) -> np.ndarray:
    """(5,) the ideal observer's P(HNP) per level, LEVELS order, from what these films of the patient show.

    Args:
        patient: the patient (age, signs, preset).
        films: the views looked at together: one view for a radiograph, the patient's views for the patient.
        base: (5,) the data set's prevalence before age modulation (`phantom.anatomy.base_prevalence`).
    """
    prior = level_probabilities(patient.age, base)
    hnp, other = level_likelihoods(patient.signs, age_fraction(patient.age), films, patient.difficulty)
    joint_hnp, joint_other = prior * hnp, (1.0 - prior) * other
    total = joint_hnp + joint_other
    return np.divide(joint_hnp, total, out=prior.copy(), where=total > 0)


def any_posterior(level_posteriors: np.ndarray) -> np.ndarray:
    """P(HNP at one level or more) from per-level posteriors (..., 5): levels are independent given age."""
    return 1.0 - np.prod(1.0 - level_posteriors, axis=-1)


def target_auc(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """ROC AUC with its counts; AUC None when only one class is present.

    Args:
        labels: (N,) 0/1.
        scores: (N,) the posterior.
    """
    labels = np.asarray(labels, dtype=int)
    n_pos = int(labels.sum())
    auc = float(roc_auc_score(labels, scores)) if 0 < n_pos < len(labels) else None
    return {"auc": auc, "n": int(len(labels)), "n_pos": n_pos}


def scope_aucs(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per target (LEVELS, "any"), the posterior's AUC over the rows of `frame`.

    Args:
        frame: one row per image or patient with `label_<level>` and `posterior_<level>` for every level, and
            optionally `posterior_any` (else "any" is scored by `any_posterior` of the levels').
    """
    labels = frame[[f"label_{level}" for level in LEVELS]].to_numpy()
    posteriors = frame[[f"posterior_{level}" for level in LEVELS]].to_numpy()
    result = {level: target_auc(labels[:, k], posteriors[:, k]) for k, level in enumerate(LEVELS)}
    any_scores = frame["posterior_any"].to_numpy() if "posterior_any" in frame else any_posterior(posteriors)
    result["any"] = target_auc(labels.max(axis=1, initial=0), any_scores)
    return result


def film_mean(images: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: the mean of its films' own posteriors, per level and for "any" (each film's "any"
    first, then the mean, as an image model's "any" is averaged), with the patient's split and labels.

    Args:
        images: one row per radiograph: `patient`, `label_<level>`, `posterior_<level>` (and `split`, kept).
    """
    posteriors = [f"posterior_{level}" for level in LEVELS]
    films = images.assign(posterior_any=any_posterior(images[posteriors].to_numpy()))
    firsts = {column: "first" for column in ["split", *(f"label_{level}" for level in LEVELS)] if column in images}
    means = {column: "mean" for column in [*posteriors, "posterior_any"]}
    return films.groupby("patient", sort=False).agg({**firsts, **means})


def ceiling_document(images: pd.DataFrame, patients: pd.DataFrame, about: dict[str, Any]) -> dict[str, Any]:
    """The ceiling.json document.

    Args:
        images: one row per radiograph: `patient`, `split`, `label_<level>`, `posterior_<level>` (its own evidence).
        patients: one row per patient: `split`, labels and posteriors (all of the patient's films together).
        about: the data set's description (difficulty, prevalence, seed, ...), stored at the top level.
    """
    scopes = {"image": images, "patient": patients, "film_mean": film_mean(images)}
    splits = {}
    for split in CEILING_SPLITS:
        def rows(frame: pd.DataFrame, split: str = split) -> pd.DataFrame:
            return frame if split == "all" else frame[frame["split"] == split]

        splits[split] = {scope: scope_aucs(rows(frame)) for scope, frame in scopes.items()}
    return {"format": CEILING_FORMAT, "version": CEILING_VERSION, **about, "splits": splits}


def write_ceiling(path: Path, document: dict[str, Any]) -> None:
    """Write ceiling.json atomically."""
    atomic_write_text(path, json.dumps(document, indent=1) + "\n")


def read_ceiling(path: Path) -> dict[str, Any]:
    """Read and check a ceiling.json written by `hnp phantom`.

    Args:
        path: the file.

    Returns:
        the document (see the module docstring); `doc["splits"][split][scope][target]["auc"]`.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HnpError(f"{path}: cannot read a ceiling file: {err}") from err
    if not isinstance(document, dict) or document.get("format") != CEILING_FORMAT:
        raise HnpError(f"{path}: not a phantom ceiling file (no \"format\": \"{CEILING_FORMAT}\"); "
                       "it is written by hnp phantom")
    if document.get("version") != CEILING_VERSION:
        raise HnpError(f"{path}: ceiling format version {document.get('version')!r}, this hnp reads "
                       f"version {CEILING_VERSION}: generate the phantom again with hnp phantom")
    for split in CEILING_SPLITS:
        for scope in SCOPES:
            entries = document.get("splits", {}).get(split, {}).get(scope, {})
            missing = [t for t in TARGETS if not isinstance(entries.get(t), dict) or "auc" not in entries[t]]
            if missing:
                raise HnpError(f"{path}: splits.{split}.{scope} lacks {', '.join(missing)}")
    return document


def ceiling_auc(document: dict[str, Any], target: str, scope: str = "patient", split: str = "test") -> float | None:
    """One ceiling AUC from a document of `read_ceiling`; None where that split has one class only.

    Args:
        document: from `read_ceiling`.
        target: a level ("L1-2" ... "L5-S1") or "any".
        scope: "image", "patient" or "film_mean".
        split: "train", "test" or "all".
    """
    if target not in TARGETS or scope not in SCOPES or split not in CEILING_SPLITS:
        raise HnpError(f"no ceiling for target {target!r}, scope {scope!r}, split {split!r}: targets are "
                       f"{', '.join(TARGETS)}; scopes {', '.join(SCOPES)}; splits {', '.join(CEILING_SPLITS)}")
    return document["splits"][split][scope][target]["auc"]


def ceiling_beside_truth(truth_path: Path) -> Path:
    """Where `hnp phantom` put the ceiling of the phantom whose truth.parquet is `truth_path`."""
    return Path(truth_path).parent / CEILING_FILE


def beside_ceiling(truth_path: Path, images: pd.DataFrame | None, patients: pd.DataFrame) -> dict[str, Any]:
    """A model's test AUC per target and scope beside the phantom's ceiling (format: the module docstring).

    Args:
        truth_path: the phantom's truth.parquet; its ceiling.json is read from the same folder.
        images: one row per test image with `label_<target>` and `prob_<target>` (`hnp.predictions`'s columns);
            None for a fusion model, which scores no image alone: its per-image "model" and "n_model" are None.
        patients: the same per test patient.
    """
    path = ceiling_beside_truth(truth_path)
    if not path.is_file():
        return {"missing": CEILING_FILE}
    document = read_ceiling(path)
    frames = {"image": images, "patient": patients}
    targets = {}
    for target in (t for t in TARGETS if prob_column(t) in patients):  # the "any" task predicts "any" only
        targets[target] = {}
        for scope, frame in frames.items():
            model = (target_auc(frame[label_column(target)].to_numpy(), frame[prob_column(target)].to_numpy())
                     if frame is not None else {"auc": None, "n": None})
            ceiling = document["splits"]["test"][scope][target]
            targets[target][scope] = {"model": model["auc"], "ceiling": ceiling["auc"], "n_model": model["n"],
                                      "n_ceiling": ceiling["n"]}
        targets[target]["patient"]["film_mean_ceiling"] = document["splits"]["test"]["film_mean"][target]["auc"]
    return {"file": CEILING_FILE, "difficulty": document.get("difficulty"), "prevalence": document.get("prevalence"),
            "split": "test", "targets": targets}


def _auc_text(auc: float | None) -> str:
    return "n/a" if auc is None else f"{auc:.3f}"


def count_warning(block: dict[str, Any]) -> list[str]:
    """A line where the model's test rows are not the ceiling's (radiographs not sharded, or another phantom)."""
    counts = block["targets"]["any"]  # every task reports "any"
    differ = [f"{s['n_model']} {scope}s scored, the ceiling's {s['n_ceiling']}" for scope, s in counts.items()
              if s["n_model"] is not None and s["n_model"] != s["n_ceiling"]]
    return [f"warning: {'; '.join(differ)}: not the same test set"] if differ else []


def ceiling_lines(block: dict[str, Any]) -> list[str]:
    """Console lines: per target, the model's AUC / the ceiling, per patient and per image."""
    if "missing" in block:
        return [f"ceiling: no {block['missing']} beside the truth table, so no ceiling to compare with "
                "(hnp phantom writes it)"]
    lines = [f"ceiling of the {block['difficulty']} phantom, test split: AUC model / ceiling (per patient: and the "
             "ceiling of a mean of the films' own scores)"]
    for target, scopes in block["targets"].items():
        patient, image = scopes["patient"], scopes["image"]
        lines.append(f"{target:>6}  per patient {_auc_text(patient['model'])} / {_auc_text(patient['ceiling'])} "
                     f"(film mean {_auc_text(patient['film_mean_ceiling'])})   "
                     f"per image {_auc_text(image['model'])} / {_auc_text(image['ceiling'])}")
    return lines + count_warning(block)


def ceiling_markdown(block: dict[str, Any]) -> str:
    """The report.md section: the model's test AUC beside the ceiling, per target and scope."""
    if "missing" in block:
        return (f"No `{block['missing']}` beside the truth table: no ceiling to compare with (`hnp phantom` writes "
                "it next to `truth.parquet`).")
    lines = ["| Target | Model per patient | Ceiling per patient | Ceiling of the film mean | Model per image | "
             "Ceiling per image | Patients |", "|---|---:|---:|---:|---:|---:|---:|"]
    for target, scopes in block["targets"].items():
        patient, image = scopes["patient"], scopes["image"]
        lines.append(f"| {target} | {_auc_text(patient['model'])} | {_auc_text(patient['ceiling'])} | "
                     f"{_auc_text(patient['film_mean_ceiling'])} | {_auc_text(image['model'])} | "
                     f"{_auc_text(image['ceiling'])} | {patient['n_model']} |")
    warning = "".join(f"\n\n**{line}**" for line in count_warning(block))
    return (f"The best ROC AUC any model could reach on this `{block['difficulty']}` phantom's test split (the "
            "generator's own posterior: `docs/phantom.md`), beside the model's. Per patient: all of a patient's "
            "films together (the model: the mean of its image probabilities, or a fusion model's study score). "
            "The ceiling of the film mean is the best a mean of the films' own scores can reach (the paper's "
            "protocol): the per-patient ceiling's excess over it is what only fusing the films can add (in "
            "expectation; on a small test set either may come out higher)." + _fusion_note(block) + "\n\n"
            + "\n".join(lines) + warning)


def _fusion_note(block: dict[str, Any]) -> str:
    scores_images = any(scopes["image"]["model"] is not None for scopes in block["targets"].values())
    return "" if scores_images else " A fusion model scores studies, not images: it has no per-image AUC."
