"""`bench/eval_scale.py`, the benchmark behind BENCHMARKS.md's "`hnp eval` at 5k, 10k and 20k test images", runs
end to end at a tiny scale and reports what its table needs.

The bounds themselves (eval's own memory does not grow with the test split, time is linear in images) are
benchmark figures, not assertions here: on a shared 2-core machine the peak anonymous RSS of two identical-code
runs of 250 and 1,000 images moved by -18 to +72 MB around a ~900 MB peak (CI, 2026-12-02), more than the
47 MB that keeping every model input would add. BENCHMARKS.md records them with the command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SIZES = (40, 120)


@pytest.mark.slow
def test_the_eval_scale_benchmark_evaluates_each_size_as_new_patients(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "bench" / "eval_scale.py"), "--images", *map(str, SIZES),
               "--size", "128x100", "--patients", "16", "--gradcam-top", "2", "--bootstrap", "5",
               "--work", str(tmp_path / "work"), "--json", "--markdown"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["n_images"] for r in results] == list(SIZES)  # what hnp eval's metrics.json counted
    small, large = results
    assert large["n_patients"] > 2 * small["n_patients"]  # copies of the test patients are new patients
    for result in results:
        assert result["seconds"] > 0 and result["cpu_s"] > 0
        assert result["anon_mb"] > 100 and result["rss_mb"] > 100, result  # torch alone holds more: really sampled
    table = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")]
    assert table == ["test images", *(f"{n:,}" for n in SIZES)]  # the Markdown table: a header, a row per size
