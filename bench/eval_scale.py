"""Wall time and peak RSS of `hnp eval` on the CPU at 5k, 10k and 20k test images: bounded memory, linear time.

    python bench/eval_scale.py --markdown                      # 5k, 10k, 20k images; data under /tmp (~15 min)
    python bench/eval_scale.py --images 1000 4000 --work /tmp/hnp-eval-bench --markdown

The world: a phantom (`phantom.generate`, 256x200 px by default) whose train patients give the 4 folds, and whose
test images are hard-linked under new names and new patient pseudonyms (copy c of patient P is patient `P-c`) until
the test split holds N images; the manifest forbids two rows naming one file, a hard link is a distinct path, and
rendering 20k radiographs would measure the phantom, not eval. Each N gets its own `hnp shard` folder. The run is 4
fold checkpoints of the tiny config's model (timm `test_efficientnet`, random weights, no download), written by
`tests/support/runs.build_run` in the `best.pt` format `hnp train` writes, with each fold's
val_predictions.parquet.

Each N runs `hnp eval` as a user would (Grad-CAM top 300 per level, 1000 bootstrap resamples, the run's loader)
in a fresh subprocess. Peak RSS is that process tree's, from `os.wait4`'s rusage (the largest of the eval
process and any worker processes it waited for); it counts mapped file pages too, and DALI's webdataset reader
maps every test tar whole, so it grows by the shard bytes read. Peak anonymous RSS (RssAnon of the tree, sampled
every 0.1 s) is the memory eval itself holds. The "marginal" column is the time per 1k images between one N
and the previous: the fixed part (imports, models, Grad-CAM of a fixed number of images) cancels there, so linear
time shows as a constant marginal figure. CPU s (user + system of the eval process tree) is less sensitive to
neighbours on a shared machine than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hnp.config import load_config  # noqa: E402
from phantom.generate import PhantomConfig, generate  # noqa: E402
from sharding.build import ShardOptions, shard_manifest  # noqa: E402
from tests.support.runs import build_run  # noqa: E402

LINKS_PER_FOLDER = 1000
POLL_S = 0.1  # how often the eval process tree's anonymous RSS is sampled


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[5_000, 10_000, 20_000],
                        help="test-split sizes, ascending (default: %(default)s)")
    parser.add_argument("--size", default="256x200", help="phantom image HxW (default: %(default)s)")
    parser.add_argument("--patients", type=int, default=120,
                        help="phantom patients; about half are test patients, copied up to N (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the tiny config (e.g. data.image_size=64); repeatable")
    parser.add_argument("--gradcam-top", type=int, default=300, help="as hnp eval (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="as hnp eval (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/hnp-eval-bench"),
                        help="scratch folder, emptied first (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per size")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table for BENCHMARKS.md")
    return parser.parse_args(argv)


def build_phantom(work: Path, patients: int, size: str) -> Path:
    """The phantom (balanced prevalence, half the patients in test); returns its manifest."""
    height, width = (int(v) for v in size.lower().split("x"))
    phantom = work / "phantom"
    generate(PhantomConfig(out=phantom, patients=patients, seed=0, size=(height, width), prevalence="balanced",
                           test_fraction=0.5, workers=2), progress=False)
    return phantom / "manifest.parquet"


def scaled_manifest(source: Path, root: Path, images: int) -> Path:
    """The source's train rows, plus its test rows hard-linked over and over until the test split has `images` rows.

    Copy c of a test patient is a new patient (`<id>-c`, study `<study>-c`) with the same images and labels, so
    per-patient aggregation sees as many patients as the copies make.

    Args:
        source: a phantom manifest.parquet (image paths relative to its folder).
        root: where the new manifest and its image links go (must not exist).
        images: test rows wanted.
    """
    root.mkdir(parents=True)
    table = pd.read_parquet(source)
    train, test = table[table["split"] == "train"], table[table["split"] == "test"].reset_index(drop=True)
    rows = []
    for row_number in range(images):
        copy, row = divmod(row_number, len(test))
        record = test.iloc[row].to_dict()
        relative = f"img/{row_number // LINKS_PER_FOLDER:04d}/{row_number:07d}.jpg"
        if row_number % LINKS_PER_FOLDER == 0:
            (root / relative).parent.mkdir(parents=True)
        os.link(source.parent / record["image_path"], root / relative)
        record.update(image_path=relative, patient_id=f"{record['patient_id']}-{copy}",
                      study_id=f"{record['study_id']}-{copy}")
        rows.append(record)
    train = train.assign(image_path=[str(source.parent / p) for p in train["image_path"]])
    manifest = root / "manifest.parquet"
    pd.concat([train, pd.DataFrame(rows)], ignore_index=True).to_parquet(manifest, index=False)
    return manifest


def shard(manifest: Path, out: Path) -> Path:
    """`hnp shard` of the manifest with 4 folds, 2 workers and 64 MB shards; returns the shard folder."""
    shard_manifest(ShardOptions(manifest=manifest, out=out, folds=4, seed=0, shard_bytes=64 * 2**20, workers=2,
                                progress=False))
    return out


def eval_once(run: Path, shards: Path, out: Path, log: Path, gradcam_top: int, bootstrap: int) -> dict:
    """Run `hnp eval` in a fresh process (output to `log`); wall and CPU seconds, peak RSS and anonymous RSS (MB)."""
    command = [sys.executable, "-m", "hnp.cli", "eval", "--run", str(run), "--shards", str(shards), "--out", str(out),
               "--gradcam-top", str(gradcam_top), "--bootstrap", str(bootstrap), "--no-wandb"]
    start = time.perf_counter()
    peak_anon = 0.0
    with log.open("w") as stream:
        process = subprocess.Popen(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT)
        while True:
            # rusage of this child (and the children it waited for) alone, once it has ended
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_anon = max(peak_anon, anonymous_mb(process.pid))
            time.sleep(POLL_S)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"hnp eval exited with {process.returncode}; see {log}:\n{log.read_text()[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
            "anon_mb": peak_anon,
            "n_images": metrics["n_images"], "n_patients": metrics["n_patients"]}


def anonymous_mb(pid: int) -> float:
    """RssAnon of a process and its descendants (MB; 0 for a process that has gone).

    The peak RSS (`ru_maxrss`) also counts file pages mapped into the process: the shared libraries, and every
    page of the shard tars that DALI's webdataset reader has mapped and read (it maps each tar whole). Those are
    clean page cache, shared and reclaimable; RssAnon is the memory the process itself holds.
    """
    total = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                total += int(line.split()[1]) / 1024
        children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return total
    return total + sum(anonymous_mb(child) for child in children)


def bench(args: argparse.Namespace) -> list[dict]:
    """Build the world under --work, then evaluate each size in turn; one result dict per size."""
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    source = build_phantom(args.work, args.patients, args.size)
    cfg = load_config("tiny", ["wandb.mode='off'", "name=evalscale", *args.overrides])
    results = []
    for images in args.images:
        root = args.work / f"n{images}"
        shards = shard(scaled_manifest(source, root, images), root / "shards")
        # fold checkpoints of these shards (hnp eval refuses a run made on others): the same training rows and
        # seeds every time, so the models are the same whatever the number of test images
        run = build_run(root, shards, cfg)
        load = os.getloadavg()[0]
        log = args.work / f"eval{images}.log"
        result = {"images": images, "load_1min": load,
                  **eval_once(run, shards, root / "report", log, args.gradcam_top, args.bootstrap)}
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
        shutil.rmtree(root)  # the shards of the largest N fill the disk of a small machine otherwise
    return results


def markdown(results: list[dict]) -> str:
    """The results as a Markdown table: wall s, s per 1k images (overall and marginal), CPU s, peak RSS."""
    lines = ["| test images | patients | hnp eval wall s | s per 1k images | marginal s per 1k images | CPU s "
             "| CPU s per 1k images | peak RSS MB | peak anonymous RSS MB | load (1 min) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    previous = None
    for r in results:
        marginal = "-" if previous is None else \
            f"{(r['seconds'] - previous['seconds']) / (r['images'] - previous['images']) * 1e3:.2f}"
        lines.append(f"| {r['images']:,} | {r['n_patients']:,} | {r['seconds']:.1f} "
                     f"| {r['seconds'] / r['images'] * 1e3:.2f} | {marginal} | {r['cpu_s']:.0f} "
                     f"| {r['cpu_s'] / r['images'] * 1e3:.2f} | {r['rss_mb']:.0f} | {r['anon_mb']:.0f} "
                     f"| {r['load_1min']:.1f} |")
        previous = r
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = bench(args)
    if args.markdown:
        print(markdown(results))


if __name__ == "__main__":
    main()
