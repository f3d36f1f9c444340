"""bench/pipeline_throughput.py at toy scale: phantom shards, all four measurements, the JSON and the table."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("pipeline_throughput", REPO / "bench" / "pipeline_throughput.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = bench  # dataclasses look their module up there
SPEC.loader.exec_module(bench)


@pytest.mark.slow
def test_pipeline_throughput_runs_every_measurement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(data_dir=tmp_path / "data", patients=8, size="240x200",
                              config="paper", repeat=1, epochs=1, device="cpu", out=tmp_path / "out")
    bench.main(args)
    table = json.loads((tmp_path / "out" / "pipeline_throughput.json").read_text())["results"]
    assert list(table) == [bench.RAW, "DALI CPU pipeline (uint8 batches)", "DALI CPU loader (float tensors, CPU)",
                           "torch loader (float tensors, CPU)"]
    for row in table.values():
        assert row["img_s"] > 0 and row["cpu_ms_per_img"] > 0 and row["cpu_ratio"] > 0
    assert "| DALI CPU pipeline (uint8 batches) |" in capsys.readouterr().out


def test_summary_ratios_are_against_the_raw_limit_scaled_to_the_cores() -> None:
    """Hand-made rounds: the raw limit decodes 100 images in 2 s on one thread at 20 ms CPU each (50 img/s, x 4
    cores = 200) and in 4 s at 22 ms; the loader reads 100 in 1 s at 10 ms and in 2 s at 30 ms."""
    results = {bench.RAW: [bench.Run(100, 2.0, 2.0), bench.Run(100, 4.0, 2.2)],
               "loader": [bench.Run(100, 1.0, 1.0), bench.Run(100, 2.0, 3.0)]}
    table = bench.summary(results, cores=4)
    assert table[bench.RAW]["img_s"] == pytest.approx(200.0) and table["loader"]["img_s"] == pytest.approx(100.0)
    assert table["loader"]["img_s_runs"] == pytest.approx([100.0, 50.0])
    assert table["loader"]["wall_ratio"] == pytest.approx(0.5)  # 100 img/s of the raw 200
    assert table[bench.RAW]["cpu_ms_per_img"] == pytest.approx(21.0)  # median of 20 and 22 ms
    assert table["loader"]["cpu_ms_per_img"] == pytest.approx(20.0)  # median of 10 and 30 ms
    assert table["loader"]["cpu_ratio"] == pytest.approx(21.0 / 20.0)


def test_cpu_seconds_counts_child_processes() -> None:
    """A busy child's CPU time shows up: the torch loader's workers are children (of the forkserver)."""
    burn = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
            "print('burnt', flush=True)\n")
    before = bench.cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "burnt"
        assert bench.cpu_seconds() - before >= 0.3
    finally:
        child.kill()
        child.wait()
