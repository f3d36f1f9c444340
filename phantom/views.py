"""Per-view geometry of a phantom radiograph, in millimetres, before pose and rasterisation.

A view projects the patient's `Anatomy` into 2-D shapes: vertebral bodies chained along a curve with the discs as
gaps between their endplates, posterior elements drawn the way each view shows them (AP: pedicle rings, transverse
processes, spinous processes; LAT/FLEX/EXT: pedicles, articular pillars, spinous processes and the lordosis curve,
which flexion flattens and extension deepens; OBL_L/OBL_R: a rough "scottie dog" per level), the sacrum and
pelvis, and soft tissue (torso outline, paraspinal muscle, psoas, bowel gas).

Coordinates: x to the image right, y down, origin at the "anchor" (midway between the L1 centre and the S1
endplate). In lateral views the patient faces left, so anterior is -x. A vertebra's local frame has y along the
spine axis (down) and x across it; `theta` rotates local into view coordinates, positive when the axis, going
down, leans to -x.

What a film draws of the patient's signs (`DrawnSigns`, from `drawn_signs`) changes the layout: narrowed discs,
a forward slip of the vertebra above a level, extra joint angles (flexion/extension segment play and instability,
coronal tilt), endplate spurs and sclerosis, enlarged facets. The layout also returns where each sign lies around
its disc (`ViewLayout.regions`), whether or not this film draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hnp.levels import LEVELS
from phantom.anatomy import Anatomy, Patient
from phantom.signs import SIDES, SIGNS

LATERAL_VIEWS = ("LAT", "FLEX", "EXT")
# Share of the T12-S1 lordosis taken by each joint, T12-L1 .. L5-S1 (the lower joints carry most of it).
LORDOSIS_SHARE = np.array([0.05, 0.08, 0.12, 0.18, 0.24, 0.33])
LORDOSIS_FACTOR = {"LAT": 1.0, "FLEX": 0.3, "EXT": 1.35}
# Whole-spine tilt: standing, the sacrum slopes more than L1 (sacral slope ~40 deg); flexion tips the spine forward.
TRUNK_LEAN_DEG = {"LAT": -13.0, "FLEX": -22.0, "EXT": -5.0}
MIN_DISC_EDGE_MM = 1.5  # a wedged disc keeps at least this height at its narrow edge
TRANSVERSE_MM = np.array([0.0, 10.0, 14.0, 20.0, 17.0, 15.0])  # transverse process length, T12 and L1..L5
CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False)),
                   np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False))], axis=1)

# Linear attenuation-like brightness of each tissue; the renderer adds the bone layer onto the soft layer.
AIR, FAT, TISSUE, MUSCLE, GAS = 0.03, 0.2, 0.24, 0.29, 0.13
BODY, CORTEX, SCLEROSIS, POSTERIOR, FORAMEN = 0.42, 0.66, 0.9, 0.36, 0.28
FACET_FILL, FACET_RIM = 0.72, 0.92  # a hypertrophic, sclerotic facet joint
HARD_DISC_EDGE_MM = 0.4  # extra joint angles (segment play, tilt) may close a disc edge down to this, not below
# Where each sign lies around its disc, in the disc's frame (across, along): across centre as a multiple of the
# half-width, then the half-extents across and along as (multiple of the half-width or half-height, mm beyond).
# The facet joint sits over the pedicle column of the oblique view's "scottie dog" (its eye is at 0.3 x width).
# The margins hold the largest magnitude of the `paper` preset (phantom.signs): a 9 mm slip, 8 mm spurs reaching
# 5.5 mm into the body, 5 mm sclerosis bands, a 7 mm facet.
SIGN_REGIONS: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "narrowing": (0.0, (1.0, 0.0), (1.0, 0.0)),
    "listhesis": (0.0, (1.0, 6.0), (1.0, 5.0)),
    "instability": (0.0, (1.0, 0.0), (1.0, 0.0)),
    "osteophyte": (0.0, (1.0, 9.0), (1.0, 6.5)),
    "sclerosis": (0.0, (1.0, 0.0), (1.0, 6.0)),
    "scoliosis": (0.0, (1.0, 0.0), (1.0, 0.0)),
    "facet": (0.6, (0.0, 8.0), (0.0, 8.0)),
}


@dataclass(frozen=True)
class Shape:
    """A polygon (filled, with an optional cortical rim) or an open polyline, in mm.

    Args:
        points: (N, 2) vertices.
        value: brightness it paints.
        line: 0 for a filled polygon, else the thickness (mm) of an open polyline.
        rim: brightness of a thin outline drawn over the fill; 0 for none.
    """

    points: np.ndarray
    value: float
    line: float = 0.0
    rim: float = 0.0


@dataclass(frozen=True)
class DiscGeometry:
    """A disc space: centre, axis angle (radians, as `theta`), half-height along the axis and half-width across."""

    center: np.ndarray
    theta: float
    half_height: float
    half_width: float


@dataclass(frozen=True)
class ViewLayout:
    """Everything one view draws: `soft` tissue shapes, `bone` shapes in paint order, the 5 discs (LEVELS), and
    `regions`: per level and sign (LEVELS x SIGNS), the (4, 2) corners of the box where the sign lies, in mm."""

    soft: list[Shape]
    bone: list[Shape]
    discs: tuple[DiscGeometry, ...]
    regions: tuple[tuple[np.ndarray, ...], ...]


@dataclass(frozen=True)
class DrawnSigns:
    """What one film draws of its patient's signs, per level (LEVELS order); 0 where it draws nothing.

    Args:
        narrowing: fraction of the disc height lost.
        listhesis: mm the vertebra above sits forward of the one below (lateral views).
        joint_tilt: degrees added to the level's joint angle: flexion/extension segment play (with instability
            in the EXT film), coronal scoliosis tilt.
        osteophyte: mm of the endplate spurs.
        sclerosis: mm thickness of the endplate sclerosis bands.
        facet: mm radius of the enlarged facet joint.
    """

    narrowing: np.ndarray
    listhesis: np.ndarray
    joint_tilt: np.ndarray
    osteophyte: np.ndarray
    sclerosis: np.ndarray
    facet: np.ndarray


def drawn_signs(patient: Patient, view: str, rng: np.random.Generator) -> DrawnSigns:
    """What a film of `view` draws of the patient's signs (`phantom.signs` decides which views draw which).

    In FLEX and EXT films every level's angle deviates by the patient's segment play (plus a per-film jitter);
    an unstable level's EXT deviation is shifted by the instability magnitude and wrapped back into the play's
    range, so each film alone has the same distribution of angles as a stable spine.

    Args:
        patient: whose signs.
        view: the film's view.
        rng: the film's generator (the jitter).
    """
    signs, difficulty = patient.signs, patient.difficulty

    def drawn(sign: str) -> np.ndarray:
        return signs.signed(sign, view, difficulty)

    def direction(sign: str) -> np.ndarray:  # "L" -> +1, "R" -> -1
        return np.where(signs.side[:, SIGNS.index(sign)] == SIDES[0], 1.0, -1.0)

    tilt = drawn("scoliosis") * direction("scoliosis")
    play = difficulty.segment_play
    if view in ("FLEX", "EXT") and play > 0:
        deviation = patient.anatomy.segment_play
        if view == "EXT":
            deviation = np.mod(deviation + direction("instability") * drawn("instability") + play, 2 * play) - play
        tilt = tilt + deviation + rng.normal(0.0, difficulty.segment_jitter, len(LEVELS))
    return DrawnSigns(narrowing=drawn("narrowing"), listhesis=drawn("listhesis"), joint_tilt=tilt,
                      osteophyte=drawn("osteophyte"), sclerosis=drawn("sclerosis"), facet=drawn("facet"))


@dataclass(frozen=True)
class _Chain:
    centers: np.ndarray  # (6, 2) body centres, T12 and L1..L5
    thetas: np.ndarray  # (6,)
    widths: np.ndarray  # (6,) projected body widths
    sacrum_origin: np.ndarray  # (2,) S1 endplate centre
    sacrum_theta: float
    discs: tuple[DiscGeometry, ...]  # T12-L1 then LEVELS order


def rotation(theta: float) -> np.ndarray:
    """2x2 matrix turning a local frame by `theta` (see module docstring)."""
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """(24, 2) points of an axis-aligned ellipse."""
    return CIRCLE * (ax, ay) + (cx, cy)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _rounded(points: np.ndarray, passes: int = 2) -> np.ndarray:
    """Chaikin corner cutting of a closed polygon: bones have no sharp corners."""
    for _ in range(passes):
        following = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * following, 0.25 * points + 0.75 * following], axis=1).reshape(-1, 2)
    return points


def _moved(shapes: list[Shape], origin: np.ndarray, theta: float) -> list[Shape]:
    turn = rotation(theta)
    return [replace(s, points=s.points @ turn.T + origin) for s in shapes]


def _mirrored(shapes: list[Shape]) -> list[Shape]:
    return [replace(s, points=s.points * (-1.0, 1.0)) for s in shapes]


def build_layout(anatomy: Anatomy, drawn: DrawnSigns, view: str, rng: np.random.Generator) -> ViewLayout:
    """Project a patient's spine, with what this film draws of its signs, into one view.

    Args:
        anatomy: the patient's spine (mm).
        drawn: what this film draws of the signs (`drawn_signs`).
        view: AP, LAT, OBL_L, OBL_R, FLEX or EXT.
        rng: the image's generator (soft-tissue and bowel-gas variation).
    """
    family = "LAT" if view in LATERAL_VIEWS else view[:3]
    discs_mm = anatomy.disc_height * np.append(1.0, 1.0 - drawn.narrowing)
    if family == "LAT":
        widths = anatomy.body_depth
        joints = anatomy.lordosis * LORDOSIS_FACTOR[view] * LORDOSIS_SHARE
        chain = _build_chain(anatomy, discs_mm, widths, joints, np.radians(TRUNK_LEAN_DEG[view]), drawn)
    else:
        widths = anatomy.body_width if family == "AP" else 0.5 * (anatomy.body_width + anatomy.body_depth)
        chain = _build_chain(anatomy, discs_mm, widths, anatomy.scoliosis, 0.0, drawn)
    bone = _bones(chain, anatomy, drawn, family)
    soft = _soft_tissue(chain, family, rng)
    discs = chain.discs[1:]
    regions = tuple(tuple(_sign_region(disc, sign) for sign in SIGNS) for disc in discs)
    if view == "OBL_R":  # the mirror image of OBL_L
        soft, bone = _mirrored(soft), _mirrored(bone)
        discs = tuple(replace(d, center=d.center * (-1.0, 1.0), theta=-d.theta) for d in discs)
        regions = tuple(tuple(corners * (-1.0, 1.0) for corners in level) for level in regions)
    return ViewLayout(soft=soft, bone=bone, discs=discs, regions=regions)


def _sign_region(disc: DiscGeometry, sign: str) -> np.ndarray:
    """(4, 2) corners of the box around `disc` where `sign` lies (SIGN_REGIONS), in layout mm."""
    centre_across, (across_factor, across_mm), (along_factor, along_mm) = SIGN_REGIONS[sign]
    half_across = across_factor * disc.half_width + across_mm
    half_along = along_factor * disc.half_height + along_mm
    local = _rect(-half_across, -half_along, half_across, half_along) + (centre_across * disc.half_width, 0.0)
    return local @ rotation(disc.theta).T + disc.center


def _build_chain(anatomy: Anatomy, discs_mm: np.ndarray, widths: np.ndarray, joints_deg: np.ndarray, lean: float,
                 drawn: DrawnSigns) -> _Chain:
    """Stack T12..L5 and the sacrum, each disc a gap of its height at its centre, turned by its joint angle.

    The vertebra below a slipped level (`drawn.listhesis`) sits that far back (+x), so the one above is forward.
    """
    heights = anatomy.body_height
    # A wedged disc must not close at its narrow edge: a narrowed disc loses some of its wedge (as in life).
    across = np.append(widths[1:], widths[-1])
    limit = np.degrees(2 * np.arctan((discs_mm - MIN_DISC_EDGE_MM) / across))
    hard_limit = np.degrees(2 * np.arctan((discs_mm - HARD_DISC_EDGE_MM) / across))
    tilt = np.append(0.0, drawn.joint_tilt)
    joints = np.radians(np.clip(np.clip(joints_deg, -limit, limit) + tilt, -hard_limit, hard_limit))
    slips = np.append(0.0, drawn.listhesis)
    thetas = joints.sum() / 2 + lean - np.concatenate([[0.0], np.cumsum(joints)])  # (7,): T12..L5, sacrum
    centers = [np.zeros(2)]
    discs = []
    for i in range(6):
        down = rotation(thetas[i])[:, 1]
        mid = 0.5 * (thetas[i] + thetas[i + 1])
        mid_down, mid_across = rotation(mid)[:, 1], rotation(mid)[:, 0]
        endplate = centers[i] + down * heights[i] / 2
        center = endplate + mid_down * discs_mm[i] / 2 + mid_across * slips[i] / 2
        half_width = 0.5 * (widths[i] + widths[min(i + 1, 5)]) / 2
        discs.append(DiscGeometry(center=center, theta=float(mid), half_height=discs_mm[i] / 2, half_width=half_width))
        next_endplate = center + mid_down * discs_mm[i] / 2 + mid_across * slips[i] / 2
        if i < 5:
            centers.append(next_endplate + rotation(thetas[i + 1])[:, 1] * heights[i + 1] / 2)
    anchor = 0.5 * (centers[1] + next_endplate)
    return _Chain(
        centers=np.array(centers) - anchor,
        thetas=thetas[:6],
        widths=widths,
        sacrum_origin=next_endplate - anchor,
        sacrum_theta=float(thetas[6]),
        discs=tuple(replace(d, center=d.center - anchor) for d in discs),
    )


def _body(w: float, h: float, waist: float) -> Shape:
    c = 1.5  # chamfered corners
    pts = [(-w / 2 + c, -h / 2), (w / 2 - c, -h / 2), (w / 2, -h / 2 + c), (w / 2 - waist, 0), (w / 2, h / 2 - c),
           (w / 2 - c, h / 2), (-w / 2 + c, h / 2), (-w / 2, h / 2 - c), (-w / 2 + waist, 0), (-w / 2, -h / 2 + c)]
    return Shape(np.array(pts), BODY, rim=CORTEX)


def _bones(chain: _Chain, anatomy: Anatomy, drawn: DrawnSigns, family: str) -> list[Shape]:
    """All bone shapes in paint order: pelvis, sacrum, per vertebra its body and posterior elements, then the
    enlarged facet joints (over the posterior elements they belong to)."""
    shapes = _pelvis(chain, family)
    for i in range(6):
        w, h = chain.widths[i], anatomy.body_height[i]
        local = _posterior_under(family, w, h, i) + [_body(w, h, waist=1.0 if family == "LAT" else 2.5)]
        local += _posterior_over(family, w, h)
        local += _degeneration_upper(drawn, i, w, h, family) + _degeneration_lower(drawn, i, w, h, family)
        shapes += _moved(local, chain.centers[i], chain.thetas[i])
    s1 = _degeneration_lower(drawn, 6, chain.widths[5], 0.0, family)  # S1 endplate: origin at the endplate
    shapes += _moved(s1, chain.sacrum_origin, chain.sacrum_theta)
    return shapes + _facets(chain.discs[1:], drawn.facet)


def _posterior_under(family: str, w: float, h: float, index: int) -> list[Shape]:
    """Posterior elements the vertebral body is painted over."""
    if family == "LAT":
        x = w / 2
        pedicle = np.array([[x - 1, -h / 2 + 1], [x + 9, -h / 2 + 2], [x + 9, -h / 2 + 10], [x - 1, -h / 2 + 11]])
        # articular pillar: superior process up, inferior process down, with a facet joint gap to the neighbours
        pillar = np.array([[x + 7, -h / 2 - 3], [x + 12, -h / 2 - 1], [x + 16, 0], [x + 15, h / 2 + 2],
                           [x + 11, h / 2 + 1], [x + 7, h / 2 - 6], [x + 6, 0]])
        spinous = np.array([[x + 15, -h / 2 + 4], [x + 36, -h / 2 + 6], [x + 40, h / 2 - 9], [x + 35, h / 2 - 5],
                            [x + 15, h / 2 - 3]])
        return [Shape(pedicle, POSTERIOR, rim=0.52), Shape(pillar, POSTERIOR, rim=0.55),
                Shape(spinous, POSTERIOR - 0.04, rim=0.5)]
    length = TRANSVERSE_MM[index] * (1.0 if family == "AP" else 0.6)
    shapes = []
    for side in (-1.0, 1.0) if family == "AP" else (1.0,):
        if length > 0:
            tp = np.array([[w / 2 - 6, -h / 2 + 4], [w / 2 + length, -h / 2 + 6], [w / 2 + length, -h / 2 + 9.5],
                           [w / 2 - 6, -h / 2 + 11]]) * (side, 1.0)
            shapes.append(Shape(tp, POSTERIOR - 0.05, rim=0.5))
        else:  # T12 carries the 12th rib instead of a transverse process
            rib = np.array([[w / 2 - 2, -h / 2 + 6], [w / 2 + 30, h / 2 + 6], [w / 2 + 62, h / 2 + 40]]) * (side, 1.0)
            shapes.append(Shape(rib, 0.22, line=4.5))
    return shapes


def _posterior_over(family: str, w: float, h: float) -> list[Shape]:
    """Posterior elements seen through the body: AP pedicle rings and spinous process, the oblique scottie dog."""
    if family == "AP":
        px = w / 2 - 9
        return [Shape(ellipse(-px, -h / 2 + 8.5, 3.5, 6.0), BODY + 0.06, rim=0.85),
                Shape(ellipse(px, -h / 2 + 8.5, 3.5, 6.0), BODY + 0.06, rim=0.85),
                Shape(ellipse(0.0, h / 2 - 7.0, 2.8, 6.5), BODY + 0.1, rim=0.8)]
    if family == "OBL":
        ex, ey = 0.3 * w, -h / 2 + 8.5  # the dog's eye: the pedicle
        dog = np.array([[ex - 4, ey - 4], [ex + 1, ey - 15], [ex + 5, ey - 4],  # ear: superior articular process
                        [ex + 7, ey - 3], [w / 2 + 9, ey - 2], [w / 2 + 9, ey + 2], [ex + 5, ey + 5],  # nose
                        [ex + 3, h / 2 - 9], [ex + 4, h / 2 + 3], [ex - 1, h / 2 + 4],  # neck, front leg
                        [ex - 4, h / 2 - 6], [-0.3 * w, h / 2 - 6], [-0.3 * w - 2, h / 2 + 4],  # body, hind leg
                        [-0.3 * w - 6, h / 2 + 3], [-0.3 * w - 5, h / 2 - 13], [ex - 5, h / 2 - 14]])  # tail
        return [Shape(dog, BODY + 0.08, rim=0.7), Shape(ellipse(ex, ey, 4.0, 5.0), BODY + 0.12, rim=0.9)]
    return []


def _degeneration_upper(drawn: DrawnSigns, i: int, w: float, h: float, family: str) -> list[Shape]:
    """Spurs and sclerosis at the lower endplate of vertebra i (T12=0), next to disc level i-1 (LEVELS index)."""
    if i == 0:
        return []
    return _endplate_signs(drawn.osteophyte[i - 1], drawn.sclerosis[i - 1], w, h / 2, 1.0, family)


def _degeneration_lower(drawn: DrawnSigns, i: int, w: float, h: float, family: str) -> list[Shape]:
    """Spurs and sclerosis at the upper endplate of vertebra i (L1=1 .. S1=6), next to disc level i-2."""
    if i < 2:
        return []
    return _endplate_signs(drawn.osteophyte[i - 2], drawn.sclerosis[i - 2], w, -h / 2, -1.0, family)


def _endplate_signs(spur: float, sclerosis: float, w: float, y: float, toward: float, family: str) -> list[Shape]:
    """Osteophyte spurs at the endplate corners and a sclerotic band along the endplate at height y.

    Args:
        spur: spur length in mm, 0 for none.
        sclerosis: band thickness in mm, 0 for none.
        toward: +1 when the disc lies below the endplate (local +y), -1 when above.
    """
    shapes = []
    if sclerosis > 0:
        shapes.append(Shape(_rect(-w / 2 + 1.5, y - toward * sclerosis, w / 2 - 1.5, y), SCLEROSIS))
    if spur > 0:
        sides = (-1.0,) if family == "LAT" else (-1.0, 1.0)  # lateral views show the anterior spurs
        for side in sides:
            tri = np.array([[w / 2 - 1, y - toward * 5.5], [w / 2 + spur, y + toward * 0.4 * spur], [w / 2 - 1, y]])
            shapes.append(Shape(tri * (side, 1.0), BODY + 0.1, rim=CORTEX))
    return shapes


def _facets(discs: tuple[DiscGeometry, ...], radius: np.ndarray) -> list[Shape]:
    """Enlarged, dense facet joints of the given radius (mm) at the levels' facet positions (SIGN_REGIONS)."""
    shapes = []
    for disc, r in zip(discs, radius, strict=True):
        if r > 0:
            centre = disc.center + rotation(disc.theta)[:, 0] * SIGN_REGIONS["facet"][0] * disc.half_width
            outline = CIRCLE @ (rotation(disc.theta) * (r, 0.8 * r)).T + centre
            shapes.append(Shape(outline, FACET_FILL, rim=FACET_RIM))
    return shapes


def _pelvis(chain: _Chain, family: str) -> list[Shape]:
    """Iliac wings (frontal views) and the sacrum, in the sacral frame (origin: S1 endplate centre)."""
    w = chain.widths[5] * 1.05
    if family == "LAT":
        x = w / 2
        # concave in front, tapering to the coccyx
        sacrum = _rounded(np.array([[-x, 0], [-x - 2, 30], [-x - 5, 60], [-x - 6, 85], [-x - 3, 100], [-x + 9, 102],
                                    [x - 16, 75], [x - 4, 45], [x + 8, 16], [x + 5, 2], [x, 0]]))
        local = [Shape(ellipse(x + 8, -12, 62, 48), 0.06), Shape(sacrum, BODY - 0.1, rim=0.52),
                 Shape(_rect(-x, 0, x, 22), BODY, rim=CORTEX)]
        return _moved(local, chain.sacrum_origin, chain.sacrum_theta)
    sacrum = _rounded(np.array([[-w / 2, 0], [w / 2, 0], [w / 2 + 14, 6], [w / 2 + 16, 16], [w / 2 + 6, 40],
                                [16, 72], [6, 88], [-6, 88], [-16, 72], [-w / 2 - 6, 40], [-w / 2 - 16, 16],
                                [-w / 2 - 14, 6]]), passes=1)
    wing = _rounded(np.array([[w / 2 + 17, 4], [w / 2 + 40, -35], [w / 2 + 80, -57], [w / 2 + 115, -42],
                              [w / 2 + 126, -5], [w / 2 + 110, 40], [w / 2 + 70, 75], [w / 2 + 30, 82],
                              [w / 2 + 8, 50]]), passes=1)
    foramina = [Shape(ellipse(sx * 14, 30 + 15 * k, 3.5 - 0.4 * k, 3.0), FORAMEN) for k in range(3) for sx in (-1, 1)]
    squeeze = (1.0, 1.0) if family == "AP" else (0.8, 0.55)  # the oblique view foreshortens one wing
    local = [Shape(wing * (squeeze[0], 1.0), 0.16, rim=0.36), Shape(wing * (-squeeze[1], 1.0), 0.16, rim=0.36),
             Shape(sacrum * ((squeeze[0] + squeeze[1]) / 2, 1.0), BODY - 0.14, rim=0.5),
             Shape(_body(w * 0.95, 24, 1.0).points + (0, 12), BODY - 0.08, rim=0.56), *foramina]
    return _moved(local, chain.sacrum_origin, chain.sacrum_theta)


def _soft_tissue(chain: _Chain, family: str, rng: np.random.Generator) -> list[Shape]:
    """Torso outline, muscle and bowel gas, in paint order (later shapes cover earlier ones)."""
    top, bottom = chain.centers[0][1] - 200, chain.sacrum_origin[1] + 250
    if family == "LAT":
        back = chain.centers[3][0] + chain.widths[3] / 2 + rng.uniform(70, 100)
        torso = np.array([[back - 400, top], [back, top], [back + 6, 0], [back + 35, bottom], [back - 400, bottom]])
        shapes = [Shape(torso, FAT), Shape(torso * (1, 1) + (-12, 0), TISSUE),
                  Shape(ellipse(back - 38, 30, 34, 260), MUSCLE)]
        gas_x = (back - 330, back - 120)
    else:
        half = rng.uniform(150, 180) * (1.0 if family == "AP" else 0.8)
        shapes = [Shape(ellipse(0, 0, half, 420), FAT), Shape(ellipse(0, 0, half - 15, 420), TISSUE)]
        for side in (-1.0, 1.0):  # psoas shadows widen towards the pelvis
            psoas = np.array([[12, top + 200], [30, top + 200], [70, bottom - 250], [22, bottom - 250]]) * (side, 1.0)
            shapes.append(Shape(psoas, MUSCLE))
        gas_x = (-half + 30, half - 30)
    for _ in range(int(rng.integers(3, 9))):  # bowel gas
        cx, cy = rng.uniform(*gas_x), rng.uniform(-120, 160)
        shapes.append(Shape(ellipse(cx, cy, rng.uniform(6, 22), rng.uniform(5, 15)), GAS + rng.uniform(0, 0.08)))
    return shapes
