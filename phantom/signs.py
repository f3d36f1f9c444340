"""The radiographic signs of a disc herniation the phantom plants, how likely and how severe they are, and which views
show them: the difficulty presets of `hnp phantom --difficulty`.

Kim et al. 2022 (Discussion) list what a plain film can show of a herniation: disc-space narrowing, traction
osteophytes, endplate (subchondral) sclerosis, abnormal alignment and instability, facet joint changes and
compensatory scoliosis; and that many herniations show nothing ("the texture of the disk does not appear on the
X-ray"). Each sign at each level is drawn independently given the level's HNP label and the patient's age:

    silent   ~ Bernoulli(silent)                       for a herniated level: it then carries no sign at all
    planted  ~ Bernoulli(p_hnp)                        at a herniated level that is not silent
             ~ Bernoulli(p_young + (p_old - p_young) z) elsewhere: degeneration without herniation, rising with age
    severity ~ loc + scale * Beta(a, b), in [0, 1]     with one distribution for herniated levels, one for the others
    magnitude = low + (high - low) * severity          in the sign's unit (SIGN_UNITS)
    side     ~ a fair coin, "L" or "R"

z is the age on [0, 1] over 18..90 years (`phantom.anatomy.age_fraction`). A sign shows in a film only if the film's
view shows it (`SignModel.views`, `SignModel.show`); the renderer draws nothing of it elsewhere. This module owns
both directions of that model: the sampler (`sample_signs`) and the probabilities the ceiling is computed from
(`level_likelihoods`), so the two cannot drift apart.

    from phantom.signs import DIFFICULTIES, sample_signs
    signs = sample_signs(rng, labels=(0, 0, 0, 1, 0), age=61, difficulty=DIFFICULTIES["paper"])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy.special import betaln, xlog1py, xlogy

from hnp.errors import HnpError
from hnp.levels import LEVELS

SIGNS: tuple[str, ...] = ("narrowing", "listhesis", "instability", "osteophyte", "sclerosis", "scoliosis", "facet")
SIGN_UNITS: dict[str, str] = {
    "narrowing": "fraction of the disc height lost",
    "listhesis": "mm the vertebra above slips forward (anterolisthesis)",
    "instability": "degrees of abnormal angular change between flexion and extension",
    "osteophyte": "mm a traction spur reaches out from each endplate corner",
    "sclerosis": "mm thickness of the dense band along both endplates",
    "scoliosis": "degrees of coronal tilt at the level (the disc closes on the side given)",
    "facet": "mm radius of the enlarged, dense facet joint (on the side given)",
}
SIDES: tuple[str, str] = ("L", "R")
LATERAL_FAMILY: tuple[str, ...] = ("LAT", "FLEX", "EXT")
FRONTAL_FAMILY: tuple[str, ...] = ("AP", "OBL_L", "OBL_R")
ALL_VIEWS: tuple[str, ...] = ("AP", "LAT", "OBL_L", "OBL_R", "FLEX", "EXT")
SHOW_RULES: tuple[str, ...] = ("any", "all", "side")


@dataclass(frozen=True)
class Severity:
    """Severity on [0, 1] as `loc + scale * Beta(a, b)`.

    Args:
        a, b: the Beta shape parameters.
        loc, scale: the interval [loc, loc + scale] inside [0, 1] the severity lives on.
    """

    a: float = 1.0
    b: float = 1.0
    loc: float = 0.0
    scale: float = 1.0

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return self.loc + self.scale * rng.beta(self.a, self.b, shape)


def severity_density(severity: np.ndarray, laws: Iterable[Severity]) -> np.ndarray:
    """Density of each column's severity law at `severity` (..., S), one law per column, in one vectorised step
    (scipy.stats' per-call overhead would cost a fifth of the rendering time).

    Args:
        severity: (..., S) values.
        laws: S severity distributions.
    """
    a, b, loc, scale = (np.array(values) for values in zip(*((s.a, s.b, s.loc, s.scale) for s in laws), strict=True))
    x = (severity - loc) / scale
    inside = (x >= 0.0) & (x <= 1.0)
    x = np.clip(x, 0.0, 1.0)
    log_density = xlogy(a - 1, x) + xlog1py(b - 1, -x) - betaln(a, b) - np.log(scale)
    with np.errstate(over="ignore"):  # a support edge with a or b < 1: an infinite density, as scipy.stats gives
        return np.where(inside, np.exp(log_density), 0.0)


@dataclass(frozen=True)
class SignModel:
    """One sign's probabilities, severities and visibility in a preset.

    Args:
        p_hnp: probability at a herniated level that is not silent.
        p_young, p_old: probability at a level without herniation at age 18 and at age 90 (linear in between).
        hnp, other: severity distributions at herniated levels and at the others.
        magnitude: (low, high) of the drawn effect in the sign's unit, severity 0 to 1.
        views: the views whose films carry the sign.
        show: "any": a film of any of `views` shows it; "all": only films of all `views` together show it (each
            alone looks normal); "side": `views` is (left view, right view) and only the view of the sign's side
            shows it.
    """

    p_hnp: float = 0.0
    p_young: float = 0.0
    p_old: float = 0.0
    hnp: Severity = field(default_factory=Severity)
    other: Severity = field(default_factory=Severity)
    magnitude: tuple[float, float] = (0.0, 0.0)
    views: tuple[str, ...] = ()
    show: str = "any"

    def __post_init__(self) -> None:
        if self.show not in SHOW_RULES or (self.show == "side" and len(self.views) != 2):
            raise ValueError(f"show must be one of {SHOW_RULES} ('side' with two views), got {self.show!r}")

    def probability(self, hnp: np.ndarray, z: float) -> np.ndarray:
        """P(planted) per level given HNP (before silencing) and the age fraction z."""
        return np.where(hnp, self.p_hnp, self.p_young + (self.p_old - self.p_young) * z)

    def drawn_in(self, view: str, side: str) -> bool:
        """Whether a film of this view carries the planted sign in its pixels."""
        if self.show == "side":
            return view == self.views[SIDES.index(side)]
        return view in self.views

    def shown_by(self, films: Iterable[str], side: str) -> bool:
        """Whether this set of films, looked at together, shows the planted sign."""
        films = set(films)
        if self.show == "all":
            return set(self.views) <= films
        return any(self.drawn_in(view, side) for view in films)


@dataclass(frozen=True)
class Difficulty:
    """A preset: the sign models, the share of silent herniations and the flexion/extension segment play.

    Args:
        name: as given to --difficulty.
        summary: one line for --help and the docs.
        signs: a SignModel per name in SIGNS.
        silent: share of herniated levels that carry no sign at all.
        segment_play: in FLEX and EXT films each level's angle deviates from its share of the motion by an amount
            uniform on +-segment_play degrees, the same in both films of a stable segment (instability shifts the
            EXT film's by its magnitude, wrapped into the same range, so either film alone looks alike).
        segment_jitter: standard deviation (degrees) of a per-film wobble on top, so stable pairs are not exact.
    """

    name: str
    summary: str
    signs: dict[str, SignModel]
    silent: float = 0.0
    segment_play: float = 0.0
    segment_jitter: float = 0.0
    _shown: dict[frozenset[str], np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if tuple(self.signs) != SIGNS:
            raise ValueError(f"{self.name}: signs must be given in SIGNS order {SIGNS}")

    @property
    def models(self) -> tuple[SignModel, ...]:
        return tuple(self.signs.values())

    def shown_table(self, films: Iterable[str]) -> np.ndarray:
        """(7, 2) bool: whether these films together show a planted sign (SIGNS rows) of each side (SIDES columns).
        Cached per set of views: there are at most 63."""
        key = frozenset(films)
        if key not in self._shown:
            self._shown[key] = np.array([[model.shown_by(key, side) for side in SIDES] for model in self.models])
        return self._shown[key]


@dataclass(frozen=True)
class LevelSigns:
    """A patient's signs: per level (LEVELS order, rows) and sign (SIGNS order, columns).

    Args:
        planted: (5, 7) bool.
        severity: (5, 7) in [0, 1]; 0 where not planted.
        magnitude: (5, 7) in each sign's unit (SIGN_UNITS); 0 where not planted.
        side: (5, 7) "L" or "R" (drawn for every cell; it matters for planted facet and scoliosis signs).
        silent: (5,) bool, herniated levels that carry no sign.
    """

    planted: np.ndarray
    severity: np.ndarray
    magnitude: np.ndarray
    side: np.ndarray
    silent: np.ndarray

    def signed(self, sign: str, view: str, difficulty: Difficulty) -> np.ndarray:
        """(5,) magnitude of `sign` that a film of `view` draws, 0 where it draws nothing."""
        j = SIGNS.index(sign)
        model = difficulty.models[j]
        drawn = [self.planted[k, j] and model.drawn_in(view, self.side[k, j]) for k in range(len(LEVELS))]
        return np.where(drawn, self.magnitude[:, j], 0.0)

    def visible(self, films: Iterable[str], difficulty: Difficulty) -> np.ndarray:
        """(5, 7) bool: planted and shown by this set of films (one film: what that radiograph shows)."""
        shown = difficulty.shown_table(films)  # (7, 2)
        return self.planted & shown[np.arange(len(SIGNS)), (self.side == SIDES[1]).astype(int)]


def sample_signs(rng: np.random.Generator, labels: tuple[int, ...], z: float, difficulty: Difficulty) -> LevelSigns:
    """Draw every sign at every level (the same number of draws whatever the labels, for stable streams).

    Args:
        rng: the patient's generator.
        labels: (5,) HNP per level, LEVELS order.
        z: the patient's age fraction on [0, 1].
        difficulty: the preset.
    """
    shape = (len(LEVELS), len(SIGNS))
    hnp = np.array(labels, dtype=bool)
    silent = hnp & (rng.random(len(LEVELS)) < difficulty.silent)
    p = np.stack([model.probability(hnp, z) for model in difficulty.models], axis=1)
    planted = (rng.random(shape) < p) & ~silent[:, None]
    severity_hnp = np.stack([m.hnp.sample(rng, (len(LEVELS),)) for m in difficulty.models], axis=1)
    severity_other = np.stack([m.other.sample(rng, (len(LEVELS),)) for m in difficulty.models], axis=1)
    severity = np.where(planted, np.where(hnp[:, None], severity_hnp, severity_other), 0.0)
    low, high = np.array([m.magnitude for m in difficulty.models]).T
    magnitude = np.where(planted, low + (high - low) * severity, 0.0)
    side = np.where(rng.random(shape) < 0.5, SIDES[0], SIDES[1])
    return LevelSigns(planted=planted, severity=severity, magnitude=magnitude, side=side, silent=silent)


def level_likelihoods(signs: LevelSigns, z: float, films: Iterable[str],
                      difficulty: Difficulty) -> tuple[np.ndarray, np.ndarray]:
    """P(what these films show of each level's signs | HNP) and (| no HNP), given the age: the evidence model.

    A sign the films show contributes p * density(severity); one they do not show (absent, or planted where these
    films cannot see it) contributes 1 - p * coverage. A herniated level is silent with probability `silent`, and
    then shows nothing. The factor 1/2 of a sign's side, common to both hypotheses, is left out.

    Args:
        signs: the patient's signs.
        z: the patient's age fraction.
        films: the views looked at together (one view: one radiograph).
        difficulty: the preset the signs were drawn from.

    Returns:
        (5,) likelihoods under HNP and (5,) under no HNP, LEVELS order.
    """
    films = tuple(films)
    models = difficulty.models
    shown = signs.visible(films, difficulty)  # (5, 7)
    coverage = difficulty.shown_table(films).mean(axis=1)  # (7,): P(shown | planted) over the side's coin
    p_hnp = np.array([model.p_hnp for model in models])
    p_other = np.array([model.probability(np.array(False), z) for model in models])
    density_hnp = severity_density(signs.severity, (m.hnp for m in models))
    density_other = severity_density(signs.severity, (m.other for m in models))
    hnp_terms = np.where(shown, p_hnp * density_hnp, 1.0 - p_hnp * coverage)
    other_terms = np.where(shown, p_other * density_other, 1.0 - p_other * coverage)
    nothing_shown = ~shown.any(axis=1)
    likelihood_hnp = difficulty.silent * nothing_shown + (1.0 - difficulty.silent) * hnp_terms.prod(axis=1)
    return likelihood_hnp, other_terms.prod(axis=1)


def _absent() -> SignModel:
    return SignModel()


# `easy`: the phantom as it was before presets. Every herniated disc is clearly narrowed in every view; spurs and
# sclerosis often come with it; older healthy discs sometimes carry small spurs. Nothing is silent.
EASY = Difficulty(
    name="easy",
    summary="every herniation narrows its disc clearly in every view (the pre-preset phantom; ceiling AUC 1.0)",
    signs={
        "narrowing": SignModel(p_hnp=1.0, magnitude=(0.32, 0.55), views=ALL_VIEWS),
        "listhesis": _absent(),
        "instability": _absent(),
        "osteophyte": SignModel(p_hnp=0.6, p_young=0.0, p_old=0.08, hnp=Severity(loc=0.375, scale=0.625),
                                other=Severity(loc=0.0, scale=0.25), magnitude=(1.0, 5.0), views=ALL_VIEWS),
        "sclerosis": SignModel(p_hnp=0.6, magnitude=(3.5, 3.5), views=ALL_VIEWS),
        "scoliosis": _absent(),
        "facet": _absent(),
    },
)

# `paper`: signs that real films show, each in the views that would show it, often absent, often present without a
# herniation (more so with age), with overlapping severities; a quarter of herniations carry no sign at all.
_MILD, _SEVERE = Severity(a=2.0, b=3.0), Severity(a=3.0, b=2.0)
PAPER = Difficulty(
    name="paper",
    summary="signs split over the views, degeneration without herniation, silent herniations "
            "(tuned to the paper's AUC range at demo scale)",
    silent=0.25,
    segment_play=6.0,
    segment_jitter=0.6,
    signs={
        "narrowing": SignModel(p_hnp=0.55, p_young=0.03, p_old=0.2, hnp=_SEVERE, other=_MILD,
                               magnitude=(0.3, 0.6), views=LATERAL_FAMILY),
        "listhesis": SignModel(p_hnp=0.3, p_young=0.01, p_old=0.08, hnp=_SEVERE, other=_MILD,
                               magnitude=(4.0, 9.0), views=LATERAL_FAMILY),
        "instability": SignModel(p_hnp=0.35, p_young=0.03, p_old=0.06, magnitude=(5.0, 7.0),
                                 views=("FLEX", "EXT"), show="all"),
        "osteophyte": SignModel(p_hnp=0.5, p_young=0.03, p_old=0.25, hnp=_SEVERE, other=_MILD,
                                magnitude=(3.5, 8.0), views=FRONTAL_FAMILY),
        "sclerosis": SignModel(p_hnp=0.35, p_young=0.02, p_old=0.12, hnp=_SEVERE, other=_MILD,
                               magnitude=(2.5, 5.0), views=("AP", "LAT", "FLEX", "EXT")),
        "scoliosis": SignModel(p_hnp=0.35, p_young=0.02, p_old=0.05, hnp=_SEVERE, other=_MILD,
                               magnitude=(5.0, 10.0), views=FRONTAL_FAMILY),
        "facet": SignModel(p_hnp=0.45, p_young=0.02, p_old=0.12, hnp=_SEVERE, other=_MILD,
                           magnitude=(4.0, 7.0), views=("OBL_L", "OBL_R"), show="side"),
    },
)

# `instability`: the one `paper` sign no film shows alone, on its own: a herniated segment (and a few degenerated
# ones) moves abnormally between flexion and extension. A film, or the mean of a patient's films scored one at a
# time, tells nothing beyond the age; only a model that compares the FLEX and EXT films can score it (issue 16).
INSTABILITY = Difficulty(
    name="instability",
    summary="instability only (FLEX against EXT): no film alone, nor the mean of the films' scores, shows a "
            "herniation; the benchmark of multi-view fusion",
    segment_play=PAPER.segment_play,
    segment_jitter=PAPER.segment_jitter,
    signs={sign: (SignModel(p_hnp=0.8, p_young=0.02, p_old=0.06, magnitude=PAPER.signs[sign].magnitude,
                            views=("FLEX", "EXT"), show="all") if sign == "instability" else _absent())
           for sign in SIGNS},
)

DIFFICULTIES: dict[str, Difficulty] = {d.name: d for d in (EASY, PAPER, INSTABILITY)}


def difficulty_preset(name: str) -> Difficulty:
    """The preset called `name`.

    Args:
        name: one of DIFFICULTIES.
    """
    if name not in DIFFICULTIES:
        raise HnpError(f"unknown difficulty {name!r}: choose one of {', '.join(DIFFICULTIES)}")
    return DIFFICULTIES[name]
