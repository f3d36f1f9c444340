"""bench/gpu_throughput.py at CPU scale: the whole plumbing (phantom shards, DALI on the CPU, our training step,
the report files) runs before anyone spends GPU time on it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("gpu_throughput", REPO / "bench" / "gpu_throughput.py")
bench = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = bench  # dataclasses look their module up there
SPEC.loader.exec_module(bench)

SMOKE = ["--device", "cpu", "--model", "test_efficientnet", "--size", "64", "--steps", "2", "--warmup", "1",
         "--batch", "4", "--source-size", "256x200", "--patients", "8", "--workers", "1", "--no-compile"]


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One phantom data folder for the runs of this module: the first run makes it, the others reuse it."""
    return tmp_path_factory.mktemp("bench-data")


def run_bench(tmp_path: Path, *extra: str, data: Path | None = None) -> tuple[int, dict, str]:
    data = tmp_path / "data" if data is None else data
    args = bench.parse_args([*SMOKE, "--out", str(tmp_path / "out"), "--data-dir", str(data), *extra])
    code = bench.main(args)
    document = json.loads((tmp_path / "out" / "gpu_throughput.json").read_text())
    return code, document, (tmp_path / "out" / "gpu_throughput.md").read_text()


def by_kind(results: list[dict]) -> dict[str, dict]:
    return {r["kind"]: r for r in results}


def test_quick_cpu_run_measures_every_stage_and_writes_the_report(tmp_path: Path, shared_data: Path) -> None:
    code, document, text = run_bench(tmp_path, "--quick", data=shared_data)
    assert code == 0
    assert [r["kind"] for r in document["results"]] == ["bare", "ours", "data", "dali", "ours+dali", "eval",
                                                        "dali", "ours+dali"]
    assert all(r["status"] == "ok" for r in document["results"]), document["results"]
    results, on_cpu = by_kind(document["results"][:6]), document["results"][6:]
    for r in [*on_cpu, *(results[kind] for kind in ("bare", "ours", "dali", "ours+dali", "eval"))]:
        assert r["images_per_s"] > 0 and r["batch"] == 4
    assert results["dali"]["threads"] == bench.load_config(bench.PAPER_CONFIG).data.num_threads
    assert results["dali"]["dali_device"] == "gpu" and results["bare"]["dali_device"] is None
    assert [(r["dali_device"], r["threads"]) for r in on_cpu] == [("cpu", bench.CPU_PREPROCESS_THREADS)] * 2
    assert "preprocessing on the CPU" in text
    shards = json.loads((shared_data / "shards" / "dataset.json").read_text())
    assert {"fold1", "fold2", "fold3"} <= set(shards["splits"])
    ratio = document["derived"]["ratios"]["bf16-cl-eager"]["ours+dali/bare"]
    fastest_fed = max(r["images_per_s"] for r in document["results"] if r["kind"] == "ours+dali")
    assert ratio == pytest.approx(fastest_fed / results["bare"]["images_per_s"])  # the best way to feed the step
    assert document["derived"]["paper_scale"]["from"].startswith("ours+dali bf16-cl-eager")
    for label in bench.LABELS.values():
        assert label in text
    assert "4 folds x 30 epochs, 4 GPUs" in text


def test_rerun_reuses_the_phantom_shards(tmp_path: Path) -> None:
    run_bench(tmp_path, "--quick", "--time-budget", "0")  # everything skipped, nothing built
    assert not (tmp_path / "data").exists()
    args = bench.parse_args([*SMOKE, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")])
    job = bench.start_data_job(args)
    assert job is not None
    shards = bench.finish_data_job(args, job, timeout=120)
    written = (shards / "dataset.json").stat().st_mtime_ns
    assert bench.start_data_job(args) is None  # same options: kept
    assert bench.finish_data_job(args, None, timeout=1) == shards
    assert (shards / "dataset.json").stat().st_mtime_ns == written
    args.patients += 1
    again = bench.start_data_job(args)  # other options: made again
    bench.stop_data_job(again)
    assert not (shards / "dataset.json").exists()


def test_time_budget_skips_what_does_not_fit_and_still_reports(tmp_path: Path) -> None:
    code, document, text = run_bench(tmp_path, "--quick", "--time-budget", "0")
    assert code == 1
    assert [r["status"] for r in document["results"]] == ["skipped"] * 8
    notes = {r["kind"]: r["note"] for r in document["results"]}
    for kind in ("bare", "ours", "data", "eval"):
        assert "would not fit in --time-budget" in notes[kind]
    assert notes["dali"].startswith("no phantom shards") and notes["ours+dali"].startswith("no phantom shards")
    assert "paper_scale" not in document["derived"]
    assert "Target (c)/(a) >= 0.95 in bf16 channels_last eager: not measured" in text


def test_without_dali_the_pipeline_measurements_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` fail
    code, document, _ = run_bench(tmp_path, "--quick")
    results = by_kind(document["results"])
    assert code == 0
    for kind in ("data", "dali", "ours+dali"):
        assert results[kind]["status"] == "skipped" and results[kind]["note"].startswith("DALI not installed")
    assert results["bare"]["status"] == results["ours"]["status"] == results["eval"]["status"] == "ok"
    assert document["environment"]["dali"] is None
    assert "synthetic input" in document["derived"]["paper_scale"]["from"]


def test_out_of_memory_halves_the_batch_and_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = []

    def fake_bare(cfg, batch, device):  # noqa: ANN001, ANN202 - same call as the real one
        batches.append(cfg.data.batch_size)
        if cfg.data.batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return lambda steps: None

    monkeypatch.setattr(bench, "bare_steps", fake_bare)
    monkeypatch.setattr(bench, "timed", lambda run, steps, warmup, device: 0.5)
    args = bench.parse_args([*SMOKE, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data")])
    runner = bench.Bench(args)
    result = runner.run_one(bench.Task("bare", bench.Variant("bf16", True, False)))
    assert batches == [4, 2]
    assert result.status == "ok" and result.batch == 2 and runner.batch == 2
    assert result.images_per_s == pytest.approx(2 * 2 / 0.5)


def test_plan_puts_the_headline_first_and_compilation_late() -> None:
    tasks = bench.plan(bench.parse_args(["--out", "x"]))
    assert [t.name for t in tasks[:5]] == ["bare bf16-cl-eager", "ours bf16-cl-eager", "data", "dali",
                                           "ours+dali bf16-cl-eager"]
    names = {(t.kind, t.variant.name) for t in tasks if t.variant and not t.cudnn_benchmark}
    for amp in ("bf16", "fp16"):
        for layout in ("cl", "nchw"):
            for mode in ("eager", "compile"):
                assert {("bare", f"{amp}-{layout}-{mode}"), ("ours", f"{amp}-{layout}-{mode}")} <= names
    first_compiled = next(i for i, t in enumerate(tasks) if t.variant and t.variant.compile)
    assert all(not t.variant.compile for t in tasks[:first_compiled] if t.variant)
    eager_only = bench.plan(bench.parse_args(["--out", "x", "--no-compile"]))
    assert not any(t.variant and t.variant.compile for t in eager_only)
    quick = bench.plan(bench.parse_args(["--out", "x", "--quick"]))
    assert [t.name for t in quick[:6]] == [t.name for t in tasks[:6]]
    assert [(t.kind, t.dali_device) for t in quick[6:]] == [("dali", "cpu"), ("ours+dali", "cpu")]
    assert sum(t.dali_device == "cpu" for t in tasks) == 2


def ok_result(kind: str, images_per_s: float, variant: str | None = "bf16-cl-eager") -> object:
    return bench.Result(name=kind, kind=kind, variant=variant, status="ok", images_per_s=images_per_s)


def test_paper_scale_wall_times() -> None:
    results = [ok_result("bare", 200.0), ok_result("ours", 190.0), ok_result("ours+dali", 100.0),
               ok_result("eval", 300.0), ok_result("dali", 250.0, variant=None),
               ok_result("ours+dali", 90.0, variant="fp16-cl-eager")]
    derived = bench.derive(results, epochs=30, folds=4)
    assert derived["ratios"]["bf16-cl-eager"] == {"ours/bare": pytest.approx(0.95),
                                                  "ours+dali/bare": pytest.approx(0.5),
                                                  "ours+dali/ours": pytest.approx(100 / 190)}
    assert derived["target_met_bf16-cl-eager"] is False
    scale = derived["paper_scale"]
    epoch_s = 121_700 / 100.0 + (162_257 - 121_700) / 250.0  # validation capped by DALI's 250 img/s
    assert scale["fold_epoch_minutes"] == pytest.approx(epoch_s / 60)
    assert scale["full_run_hours_1_gpu"] == pytest.approx(4 * 30 * epoch_s / 3600)
    assert scale["full_run_hours_4_gpus"] == pytest.approx(30 * epoch_s / 3600)
    assert scale["epoch_speedup_vs_paper"] == pytest.approx(50 * 60 / epoch_s)
    assert derived["bare_bf16-cl-eager_vs_timm_3090"] == pytest.approx(200 / 114)


def test_take_cycles_its_source_and_refuses_an_empty_one() -> None:
    assert list(bench.Take([1, 2], 5)) == [1, 2, 1, 2, 1]
    assert len(bench.Take([1], 3)) == 3
    with pytest.raises(RuntimeError, match="no batch"):
        list(bench.Take([], 1))


def test_a_failed_measurement_keeps_its_error_and_the_run_goes_on(tmp_path: Path, shared_data: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_bare(cfg, batch, device):  # noqa: ANN001, ANN202 - same call as the real one
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED | shape (4, 3, 64, 64)")

    monkeypatch.setattr(bench, "bare_steps", broken_bare)
    code, document, text = run_bench(tmp_path, "--quick", data=shared_data)
    results = by_kind(document["results"])
    assert code == 0
    assert results["bare"]["status"] == "failed" and results["bare"]["images_per_s"] is None
    assert results["bare"]["note"].startswith("RuntimeError: cuDNN error")
    assert results["ours"]["status"] == results["ours+dali"]["status"] == "ok"
    assert "CUDNN_STATUS_NOT_SUPPORTED \\| shape" in text
    assert document["derived"]["ratios"]["bf16-cl-eager"]["ours+dali/bare"] is None
