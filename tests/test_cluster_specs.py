"""The cluster specs are parsed and checked against the repository: keys present, entrypoints that exist."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from hnp.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _assert_entrypoint_runs_our_script(command: str) -> None:
    argv = shlex.split(command)
    assert argv[:2] == ["python", "train/run_folds.py"]
    assert (ROOT / argv[1]).is_file()
    config = argv[argv.index("--config") + 1]
    load_config(config)  # the named config exists and is valid
    assert "--shards" in argv and "--out" in argv


def test_ray_cluster_launcher_spec() -> None:
    spec = _load("ray-cluster.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in spec, key
    assert spec["head_node_type"] in spec["available_node_types"]
    workers = [name for name in spec["available_node_types"] if name != spec["head_node_type"]]
    assert workers, "a GPU worker group"
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in spec["head_start_ray_commands"] if "ray start" in cmd)
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in spec["worker_start_ray_commands"] if "ray start" in cmd)


def test_kuberay_rayjob_runs_the_paper_config_with_token_auth() -> None:
    job = _load("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    _assert_entrypoint_runs_our_script(job["spec"]["entrypoint"])
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["WANDB_DISABLE_CODE"] == "true"


def test_runtime_env_ships_code_not_data() -> None:
    env = _load("runtime_env.yaml")
    for heavy in (".venv/", "shards/", "runs/", "wandb/"):
        assert heavy in env["excludes"]
    assert env["env_vars"]["WANDB_MODE"] == "offline"
