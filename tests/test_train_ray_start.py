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
