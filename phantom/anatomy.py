"""Synthetic patients: age, sex, per-level HNP labels, views taken, the spine all their images share, and the signs
of herniation and degeneration it carries (`phantom.signs`).

Everything here is in millimetres and draws only from the `numpy.random.Generator` it is given, so a patient is a
pure function of its seed. Age is a confounder, as in life: it raises the HNP prevalence at every level, narrows
every disc a little, and (in the `paper` preset) brings degenerative signs without any herniation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hnp.errors import HnpError
from hnp.levels import LEVELS, PAPER_PREVALENCE, VIEWS
from phantom.signs import Difficulty, LevelSigns, sample_signs

PREVALENCE_MODES: tuple[str, ...] = ("paper", "balanced")
BALANCED_PREVALENCE = 0.4  # every level, so a few dozen patients already hold positives at L1-2
PHANTOM_VIEWS: tuple[str, ...] = tuple(v for v in VIEWS if v != "OTHER")
# How many images a patient has (1..6). The paper averages 5.2 images per patient (180,271 / 34,661).
IMAGE_COUNT_PROBS: tuple[float, ...] = (0.03, 0.04, 0.07, 0.11, 0.30, 0.45)
VIEW_WEIGHTS: tuple[float, ...] = (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)  # AP and LAT are taken most often

AGE_MIN, AGE_MAX = 18, 90
AGE_BETA = (2.2, 2.4)  # age = AGE_MIN + (AGE_MAX - AGE_MIN) * Beta(a, b): mean about 52 years
AGE_PREVALENCE_SLOPE = 1.5  # prevalence factor 1 + slope * (z - mean z), z = age on [0, 1]: 0.28x at 18, 1.8x at 90
AGE_NARROWING = 0.15  # every disc loses up to 15% of its height by age 90

# Rows: T12, L1..L5. Vertebral body height, width (frontal) and depth (sagittal) in mm.
BODY_HEIGHT = np.array([24.0, 25.0, 26.0, 27.0, 27.0, 26.0])
BODY_WIDTH = np.array([40.0, 42.0, 44.0, 46.0, 48.0, 50.0])
BODY_DEPTH = np.array([31.0, 32.0, 33.0, 34.0, 35.0, 35.0])
# Disc heights (mm) of a young adult: T12-L1, then LEVELS order. L5-S1 is a little lower than L4-5.
DISC_HEIGHT = np.array([7.0, 8.5, 9.5, 10.5, 11.5, 10.5])


@dataclass(frozen=True)
class Anatomy:
    """One patient's spine in mm before any sign, shared by all their views.

    Args:
        body_height: (6,) vertebral body heights, T12 and L1..L5.
        body_width: (6,) frontal widths (AP view).
        body_depth: (6,) sagittal depths (lateral view).
        disc_height: (6,) disc heights at the disc centre: T12-L1, then L1-2..L5-S1 (LEVELS order); age narrows them.
        lordosis: T12-S1 lordosis in degrees of the neutral lateral view.
        scoliosis: (6,) frontal joint angles in degrees (small, random).
        segment_play: (5,) each level's angle deviation (degrees) in flexion and extension films, LEVELS order.
    """

    body_height: np.ndarray
    body_width: np.ndarray
    body_depth: np.ndarray
    disc_height: np.ndarray
    lordosis: float
    scoliosis: np.ndarray
    segment_play: np.ndarray


@dataclass(frozen=True)
class Patient:
    """One synthetic patient: what goes into the manifest plus what the images are drawn from.

    Args:
        age: years, AGE_MIN..AGE_MAX.
        sex: "M" or "F".
        labels: HNP per level, LEVELS order, 0/1.
        views: the views taken, in VIEWS order, 1 to 6 of them.
        anatomy: the spine all views show.
        signs: the signs at each level (which views draw them: `difficulty`).
        difficulty: the preset the signs come from.
    """

    age: int
    sex: str
    labels: tuple[int, ...]
    views: tuple[str, ...]
    anatomy: Anatomy
    signs: LevelSigns
    difficulty: Difficulty


def base_prevalence(mode: str) -> np.ndarray:
    """Per-level prevalence before age modulation: the paper's Table 1, or BALANCED_PREVALENCE everywhere.

    Args:
        mode: one of PREVALENCE_MODES.
    """
    if mode == "paper":
        return np.array(PAPER_PREVALENCE)
    if mode == "balanced":
        return np.full(len(LEVELS), BALANCED_PREVALENCE)
    raise HnpError(f"unknown prevalence mode {mode!r}: choose one of {', '.join(PREVALENCE_MODES)}")


def age_fraction(age: float) -> float:
    """Age mapped onto [0, 1] over AGE_MIN..AGE_MAX."""
    return (age - AGE_MIN) / (AGE_MAX - AGE_MIN)


def level_probabilities(age: int, base: np.ndarray) -> np.ndarray:
    """HNP probability per level at this age; averaged over the age distribution it equals `base`.

    Args:
        age: years.
        base: (5,) prevalence per level, LEVELS order.
    """
    mean_fraction = AGE_BETA[0] / sum(AGE_BETA)
    factor = 1.0 + AGE_PREVALENCE_SLOPE * (age_fraction(age) - mean_fraction)
    return np.clip(base * factor, 0.0, 0.95)


def sample_patient(rng: np.random.Generator, base: np.ndarray, difficulty: Difficulty) -> Patient:
    """Draw a patient: age, sex, labels given age, the views taken, the spine, and its signs given age and labels.

    Args:
        rng: the patient's own generator.
        base: (5,) prevalence per level before age modulation (see `base_prevalence`).
        difficulty: the preset of the signs.
    """
    age = int(round(AGE_MIN + (AGE_MAX - AGE_MIN) * rng.beta(*AGE_BETA)))
    sex = "F" if rng.random() < 0.5 else "M"
    labels = tuple(int(x) for x in rng.random(len(LEVELS)) < level_probabilities(age, base))
    count = int(rng.choice(len(IMAGE_COUNT_PROBS), p=IMAGE_COUNT_PROBS)) + 1
    chosen = set(rng.choice(PHANTOM_VIEWS, size=count, replace=False, p=VIEW_WEIGHTS).tolist())
    views = tuple(v for v in PHANTOM_VIEWS if v in chosen)
    anatomy = sample_anatomy(rng, age, difficulty.segment_play)
    signs = sample_signs(rng, labels, age_fraction(age), difficulty)
    return Patient(age=age, sex=sex, labels=labels, views=views, anatomy=anatomy, signs=signs, difficulty=difficulty)


def sample_anatomy(rng: np.random.Generator, age: int, segment_play: float = 0.0) -> Anatomy:
    """Draw a spine without signs: body sizes, disc heights narrowed a little by age, curves, segment play.

    Args:
        rng: the patient's generator.
        age: years; every disc loses up to AGE_NARROWING of its height by AGE_MAX.
        segment_play: half-range (degrees) of each level's flexion/extension angle deviation.
    """
    size = rng.normal(1.0, 0.05)  # the patient's build scales all bones together
    disc = DISC_HEIGHT * rng.normal(1.0, 0.05) * rng.normal(1.0, 0.04, DISC_HEIGHT.shape)
    return Anatomy(
        body_height=BODY_HEIGHT * size * rng.normal(1.0, 0.03, BODY_HEIGHT.shape),
        body_width=BODY_WIDTH * size * rng.normal(1.0, 0.03, BODY_WIDTH.shape),
        body_depth=BODY_DEPTH * size * rng.normal(1.0, 0.03, BODY_DEPTH.shape),
        disc_height=disc * size * (1.0 - AGE_NARROWING * age_fraction(age)),
        lordosis=float(rng.normal(55.0, 8.0)),
        scoliosis=rng.normal(0.0, 1.5) * np.sin(np.linspace(0.0, np.pi, 6) + rng.uniform(0, np.pi)),
        segment_play=segment_play * rng.uniform(-1.0, 1.0, len(LEVELS)),
    )
