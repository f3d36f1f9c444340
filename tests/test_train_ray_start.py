"""Ray failing to start or to be reached is a clear error, not Ray's traceback."""

from __future__ import annotations

import pytest

from hnp.config import load_config
from hnp.errors import HnpError
from train import ray_folds


@pytest.mark.parametrize(("address", "where"), [(None, "a local Ray"), ("ray://10.0.0.9:10001", "the Ray cluster at")])
def test_ray_that_cannot_start_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, address: str | None,
                                                where: str) -> None:
    import ray

    def timed_out(**kwargs: object) -> None:
        raise Exception("The current node timed out during startup.")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", timed_out)
    with pytest.raises(HnpError, match=f"could not start or join {where}.*timed out during startup"):
        ray_folds._init_ray(load_config(None), address)


def test_a_local_run_never_joins_a_ray_another_program_left_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's `ray.init()` joins the last cluster started on the machine (/tmp/ray/ray_current_cluster): a Ray
    left behind by another program must not capture a local run (it did in CI: "num_cpus must not be provided")."""
    import ray
    from ray._private import services

    stray = "192.0.2.1:6379"
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir=None: stray)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [stray])
    resolved = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: resolved.append(
        services.canonicalize_bootstrap_address(kwargs.get("address"))))
    ray_folds._init_ray(load_config(None), None)
    assert resolved == [None]  # None: Ray starts a new local instance
