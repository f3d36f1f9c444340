"""The expected ceiling of a phantom preset: the ideal observer's ROC AUC per level, per radiograph and per patient,
over a large simulated population (patients are drawn, not rendered: seconds, not minutes); per patient both from all
films together and as the mean of each film's own posterior (the paper's per-image mean with a perfect image model).

    python bench/phantom_ceiling.py --difficulty paper --prevalence paper --patients 20000

Prints a Markdown table for BENCHMARKS.md / docs/phantom.md: per level, the AUC of P(HNP | age, what one film
shows) over all radiographs, per view, and of P(HNP | age, what all of a patient's films show) over patients beside
the patient mean of the first, plus each sign's share of herniated and of healthy levels a patient's films show.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from tqdm import tqdm

from hnp.levels import LEVELS
from phantom.anatomy import PHANTOM_VIEWS, PREVALENCE_MODES, Patient, base_prevalence, sample_patient
from phantom.ceiling import film_mean, posterior, scope_aucs
from phantom.signs import DIFFICULTIES, SIGNS, difficulty_preset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--difficulty", choices=tuple(DIFFICULTIES), default="paper")
    parser.add_argument("--prevalence", choices=PREVALENCE_MODES, default="paper")
    parser.add_argument("--patients", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def posterior_columns(patient: Patient, films: tuple[str, ...], base: np.ndarray) -> dict[str, float]:
    """`posterior_<level>`: the ideal observer's P(HNP) per level from these films of the patient."""
    return {f"posterior_{lv}": p for lv, p in zip(LEVELS, posterior(patient, films, base), strict=True)}


def simulate(difficulty: str, prevalence: str, patients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                 np.ndarray, np.ndarray]:
    """Image rows, patient rows (labels and posteriors), and each patient's signs shown (N, 5, 7) with labels."""
    preset, base = difficulty_preset(difficulty), base_prevalence(prevalence)
    rng = np.random.default_rng(seed)
    images, people, shown, labels = [], [], [], []
    for index in tqdm(range(patients), desc="patients", mininterval=2):
        patient = sample_patient(rng, base, preset)
        label = {f"label_{level}": y for level, y in zip(LEVELS, patient.labels, strict=True)}
        images += [{"patient": index, "view": view, **label, **posterior_columns(patient, (view,), base)}
                   for view in patient.views]
        people.append({**label, **posterior_columns(patient, patient.views, base)})
        shown.append(patient.signs.visible(patient.views, preset))
        labels.append(patient.labels)
    return pd.DataFrame(images), pd.DataFrame(people), np.array(shown), np.array(labels, dtype=bool)


def main(args: argparse.Namespace) -> None:
    images, patients, shown, labels = simulate(args.difficulty, args.prevalence, args.patients, args.seed)
    columns = {"all radiographs": scope_aucs(images)}
    columns |= {view: scope_aucs(images[images["view"] == view]) for view in PHANTOM_VIEWS}
    columns["patient (all films)"] = scope_aucs(patients)
    columns["patient (mean of films)"] = scope_aucs(film_mean(images))
    print(f"difficulty {args.difficulty}, prevalence {args.prevalence}, {args.patients} patients "
          f"({len(images)} radiographs), seed {args.seed}: ideal observer's ROC AUC")
    print("| target | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for target in (*LEVELS, "any"):
        cells = [columns[name][target]["auc"] for name in columns]
        print(f"| {target} | " + " | ".join("–" if a is None else f"{a:.3f}" for a in cells) + " |")
    print("\nshare of levels whose patient's films show the sign")
    print("| sign | herniated levels | other levels |")
    print("|---|---:|---:|")
    for j, sign in enumerate(SIGNS):
        print(f"| {sign} | {shown[..., j][labels].mean():.1%} | {shown[..., j][~labels].mean():.1%} |")
    print(f"| any sign | {shown.any(axis=2)[labels].mean():.1%} | {shown.any(axis=2)[~labels].mean():.1%} |")


if __name__ == "__main__":
    main(parse_args())
