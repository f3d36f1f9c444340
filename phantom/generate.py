"""Write a phantom data set: JPEGs, `manifest.parquet` / `manifest.csv` (DESIGN.md's manifest contract), the truth
tables (`phantom.truth`: per image, per image x level x sign, per patient x level x sign) and `ceiling.json` (the
best AUC any model could reach on it, `phantom.ceiling`).

Determinism: the registry (patient and study IDs, train/test split) comes from `SeedSequence(seed, spawn_key=(0,))`
and patient i from `SeedSequence(seed, spawn_key=(1, i))`, so every byte depends on the seed alone, never on how
patients are spread over worker processes.

    from phantom.generate import PhantomConfig, generate
    manifest = generate(PhantomConfig(out=Path("data/phantom"), patients=200, difficulty="paper", workers=2))
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from hnp.bars import progress_bar
from hnp.errors import HnpError
from hnp.files import atomic_write, atomic_write_bytes
from hnp.levels import LEVEL_COLUMNS, LEVELS
from hnp.schema import MAX_XRAY_MRI_DAYS, OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from hnp.workers import exit_with
from phantom.anatomy import base_prevalence, sample_patient
from phantom.ceiling import CEILING_FILE, ceiling_document, posterior, write_ceiling
from phantom.render import encode_jpeg, render_view
from phantom.signs import difficulty_preset
from phantom.truth import ImageTruth, PatientTruth, image_table, patient_table, sign_table, write_truth_tables

log = logging.getLogger("hnp.phantom")

MIN_SIZE = (64, 48)  # smaller images cannot hold five vertebrae with visible disc spaces
# The paper trained on the first collection period and tested on the second (Methods 2.1).
TRAIN_PERIOD = (dt.date(2010, 1, 1), dt.date(2020, 2, 29))
TEST_PERIOD = (dt.date(2020, 3, 1), dt.date(2021, 2, 28))
IMAGES_DIR = "images"
CHUNKS_PER_WORKER = 4  # enough chunks to balance the workers, few enough to keep per-task overhead small


@dataclass
class _Rendered:
    """What rendering some patients gives back: manifest rows, each image's truth, each patient's truth."""

    manifest: list[dict]
    images: list[ImageTruth]
    patients: list[PatientTruth]

    def extend(self, other: _Rendered) -> None:
        self.manifest += other.manifest
        self.images += other.images
        self.patients += other.patients


@dataclass(frozen=True)
class PhantomConfig:
    """What `hnp phantom` writes.

    Args:
        out: folder to create (must be absent or empty).
        patients: number of patients, >= 1; each gets 1-6 images.
        seed: non-negative integer; the same seed gives the same bytes.
        size: (height, width) of every image in pixels.
        prevalence: "paper" (Table 1, modulated by age) or "balanced" (every level raised, for small test sets).
        difficulty: the signs' preset (`phantom.signs.DIFFICULTIES`): "easy" or "paper".
        test_fraction: share of patients in the test split, in [0, 1).
        workers: processes rendering in parallel.
    """

    out: Path
    patients: int
    seed: int = 0
    size: tuple[int, int] = (512, 400)
    prevalence: str = "paper"
    difficulty: str = "easy"
    test_fraction: float = 0.1
    workers: int = 1

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise HnpError(f"--patients must be at least 1, got {self.patients}")
        if self.seed < 0:
            raise HnpError(f"--seed must be a non-negative integer, got {self.seed}")
        if self.size[0] < MIN_SIZE[0] or self.size[1] < MIN_SIZE[1]:
            raise HnpError(f"--size {self.size[0]}x{self.size[1]} is too small: at least {MIN_SIZE[0]}x{MIN_SIZE[1]}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise HnpError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.workers < 1:
            raise HnpError(f"--workers must be at least 1, got {self.workers}")
        base_prevalence(self.prevalence)  # raises HnpError naming the modes
        difficulty_preset(self.difficulty)  # raises HnpError naming the presets


@dataclass(frozen=True)
class _Chunk:
    """A run of consecutive patients for one worker task."""

    config: PhantomConfig
    start: int
    registry: list[tuple[str, str, str]]  # (patient_id, study_id, split) per patient


def parse_size(text: str) -> tuple[int, int]:
    """Parse "HxW" (e.g. "512x400") into (height, width).

    Args:
        text: the --size argument.
    """
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise HnpError(f"--size must look like HxW, e.g. 512x400, got {text!r}")
    return int(parts[0]), int(parts[1])


def patient_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of patient `index`: independent of every other patient and of the worker layout."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))


def patient_registry(seed: int, patients: int, test_fraction: float) -> tuple[list[str], list[str], list[str]]:
    """Hospital-style patient IDs ("PT" + 8 digits), study IDs ("ST" + 9 digits), and each patient's split.

    Args:
        seed: the data set seed.
        patients: how many.
        test_fraction: share of patients drawn into "test" (rounded to whole patients).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    patient_numbers = rng.choice(90_000_000, size=patients, replace=False) + 10_000_000
    study_numbers = rng.choice(900_000_000, size=patients, replace=False) + 100_000_000
    test = set(rng.choice(patients, size=round(patients * test_fraction), replace=False).tolist())
    splits = ["test" if i in test else "train" for i in range(patients)]
    return [f"PT{n}" for n in patient_numbers], [f"ST{n}" for n in study_numbers], splits


def sample_dates(rng: np.random.Generator, split: str) -> tuple[str, str]:
    """X-ray date in the split's collection period and an MRI date at most MAX_XRAY_MRI_DAYS from it (ISO)."""
    first, last = TEST_PERIOD if split == "test" else TRAIN_PERIOD
    xray = first + dt.timedelta(days=int(rng.integers(0, (last - first).days + 1)))
    mri = xray + dt.timedelta(days=int(rng.integers(-MAX_XRAY_MRI_DAYS // 3, MAX_XRAY_MRI_DAYS + 1)))
    return xray.isoformat(), mri.isoformat()


def image_name(index: int, image: int) -> str:
    """Relative path of a patient's image: a running number, never the patient ID (which is PHI)."""
    return f"{IMAGES_DIR}/p{index:06d}_{image}.jpg"


def render_patient(config: PhantomConfig, index: int, patient_id: str, study_id: str, split: str) -> _Rendered:
    """Render and write one patient's images; return their manifest rows and truth.

    Args:
        config: the data set settings (out, seed, size, prevalence, difficulty).
        index: the patient's running number (seeds its generator, names its files).
        patient_id, study_id, split: from `patient_registry`.
    """
    rng = patient_rng(config.seed, index)
    base = base_prevalence(config.prevalence)
    patient = sample_patient(rng, base, difficulty_preset(config.difficulty))
    xray_date, mri_date = sample_dates(rng, split)
    result = _Rendered([], [], [])
    for image, view in enumerate(patient.views):
        radiograph = render_view(patient, view, rng, config.size)
        path = image_name(index, image)
        atomic_write_bytes(config.out / path, encode_jpeg(radiograph.pixels))  # a full disk names the file
        result.manifest.append({"patient_id": patient_id, "image_path": path, "split": split, "age": patient.age,
                                **dict(zip(LEVEL_COLUMNS, patient.labels, strict=True)), "view": view,
                                "sex": patient.sex, "study_id": study_id, "xray_date": xray_date, "mri_date": mri_date})
        result.images.append(ImageTruth(image_path=path, patient=index, view=view, size=config.size,
                                        discs=radiograph.discs, boxes=radiograph.boxes,
                                        visible=patient.signs.visible((view,), patient.difficulty),
                                        posterior=posterior(patient, (view,), base)))
    result.patients.append(PatientTruth(index=index, split=split, patient=patient,
                                        observed=patient.signs.visible(patient.views, patient.difficulty),
                                        posterior=posterior(patient, patient.views, base)))
    return result


def _render_chunk(chunk: _Chunk) -> _Rendered:
    result = _Rendered([], [], [])
    for offset, (patient_id, study_id, split) in enumerate(chunk.registry):
        result.extend(render_patient(chunk.config, chunk.start + offset, patient_id, study_id, split))
    return result


def _init_worker(owner: int) -> None:
    exit_with(owner)  # not left waiting for good when the driver is SIGKILLed
    cv2.setNumThreads(1)  # parallelism comes from the processes; OpenCV threads would only contend for cores


def _chunks(config: PhantomConfig) -> list[_Chunk]:
    registry = list(zip(*patient_registry(config.seed, config.patients, config.test_fraction), strict=True))
    step = max(1, min(50, math.ceil(config.patients / (config.workers * CHUNKS_PER_WORKER))))
    return [_Chunk(config, start, registry[start:start + step]) for start in range(0, config.patients, step)]


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HnpError(f"--out {out} exists and is not an empty folder: choose a new folder or remove it first")
    try:
        (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HnpError(f"--out {out}: cannot create the folder: {err.strerror}") from err


def generate(config: PhantomConfig, progress: bool = True) -> pd.DataFrame:
    """Render the whole data set into `config.out` and return the manifest (also written as Parquet and CSV),
    with the truth tables and ceiling.json beside it; ceiling.json is written last, so a folder without it is
    unfinished. A run that fails or is interrupted (Ctrl-C) removes what it wrote, so the same command can run again.

    Args:
        config: what to write.
        progress: show a progress bar (per patient).
    """
    _prepare_out(config.out)
    try:
        return _generate(config, progress)
    except BaseException:  # Ctrl-C included: an unfinished data set is of no use, and would block the rerun
        _remove_unfinished(config.out)
        raise


def _remove_unfinished(out: Path) -> None:
    """Empty `out` of what this run wrote; `_prepare_out` found it empty or absent, so nothing in it is another's."""
    log.warning("removing the unfinished phantom in %s", out)
    for child in out.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _generate(config: PhantomConfig, progress: bool) -> pd.DataFrame:
    chunks = _chunks(config)
    with progress_bar(total=config.patients, unit="patient", desc="phantom", disable=not progress) as bar:
        def done(chunk: _Chunk) -> None:
            bar.update(len(chunk.registry))

        if config.workers == 1:
            results = _render_inline(chunks, done)
        else:
            results = _render_parallel(chunks, config.workers, done)
    rendered = _Rendered([], [], [])
    for result in results:
        rendered.extend(result)
    manifest = pd.DataFrame(rendered.manifest, columns=[*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
    atomic_write(config.out / "manifest.parquet", lambda tmp: manifest.to_parquet(tmp, index=False))
    atomic_write(config.out / "manifest.csv", lambda tmp: manifest.to_csv(tmp, index=False, lineterminator="\n"))
    _write_truth(config, rendered)
    return manifest


def _write_truth(config: PhantomConfig, rendered: _Rendered) -> None:
    """The three truth tables and ceiling.json."""
    patients = {t.index: t.patient for t in rendered.patients}
    tables = {"images": image_table(rendered.images), "signs": sign_table(rendered.images, patients),
              "patients": patient_table(rendered.patients)}
    write_truth_tables(config.out, tables)
    split_of = {t.index: t.split for t in rendered.patients}
    labels = {t.index: t.patient.labels for t in rendered.patients}

    def scored(indices: list[int], posteriors: list[np.ndarray]) -> pd.DataFrame:
        return pd.DataFrame({"patient": indices, "split": [split_of[i] for i in indices],
                             **{f"label_{lv}": [labels[i][k] for i in indices] for k, lv in enumerate(LEVELS)},
                             **{f"posterior_{lv}": [p[k] for p in posteriors] for k, lv in enumerate(LEVELS)}})

    images = scored([t.patient for t in rendered.images], [t.posterior for t in rendered.images])
    people = scored([t.index for t in rendered.patients], [t.posterior for t in rendered.patients])
    about = {"difficulty": config.difficulty, "prevalence": config.prevalence, "seed": config.seed,
             "patients": config.patients, "images": len(rendered.images)}
    write_ceiling(config.out / CEILING_FILE, ceiling_document(images, people, about))


def _render_inline(chunks: list[_Chunk], done: Callable[[_Chunk], None]) -> list[_Rendered]:
    """All chunks in this process, with OpenCV held to one thread like each pool worker."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        results = []
        for chunk in chunks:
            results.append(_render_chunk(chunk))
            done(chunk)
        return results
    finally:
        cv2.setNumThreads(threads)


def _render_parallel(chunks: list[_Chunk], workers: int, done: Callable[[_Chunk], None]) -> list[_Rendered]:
    """Chunks over a process pool; results come back in chunk order whatever order they finish in."""
    # forkserver, not fork: a child forked after OpenCV started its thread pool deadlocks in cv2.setNumThreads
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["phantom.generate"])
    results: list[_Rendered] = [_Rendered([], [], [])] * len(chunks)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_render_chunk, chunk): i for i, chunk in enumerate(chunks)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                done(chunks[futures[future]])
        except BaseException:  # a chunk failed, or Ctrl-C: the chunks not started are not rendered
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results
