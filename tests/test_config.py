from __future__ import annotations

from pathlib import Path

import pytest

from hnp.config import ExperimentConfig, builtin_configs, load_config, save_config
from hnp.errors import HnpError


@pytest.mark.parametrize("name", ["local-3090", "paper", "tiny"])
def test_every_shipped_config_loads(name: str) -> None:
    assert isinstance(load_config(name), ExperimentConfig)
    assert load_config(builtin_configs()[name]) == load_config(name)  # by name or by its file


def test_paper_config_holds_the_papers_settings() -> None:
    cfg = load_config("paper")
    assert (cfg.model.name, cfg.data.image_size, cfg.optim.lr, cfg.folds) == ("efficientnet_b5", 456, 3e-5, 4)
    assert cfg.data.clahe and not cfg.data.augment.enabled


def test_overrides_parse_yaml_values_and_nest() -> None:
    overrides = ["optim.lr=1e-4", "data.augment.enabled=true", "model.pos_weight=[1,2,3,4,5]"]
    cfg = load_config("tiny", overrides)
    assert cfg.optim.lr == 1e-4
    assert cfg.data.augment.enabled is True
    assert cfg.model.pos_weight == (1.0, 2.0, 3.0, 4.0, 5.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1e-4"], "unknown config key optim.lrr; did you mean optim.lr?"),
        (["data.augment.flip=true"], "unknown config key data.augment.flip"),
        (["nonsense=1"], "unknown config key nonsense"),
        (["train.epochs=many"], "train.epochs: expected an integer"),
        (["optim.lr=fast"], "optim.lr: expected a number"),
        (["model.task=segmentation"], "model.task: 'segmentation' is not one of any, levels, levels_age"),
        (["data.dali_device=tpu"], "data.dali_device: 'tpu' is not one of gpu, cpu"),
        (["data.clahe=maybe"], "data.clahe: expected true or false"),
        (["model.pos_weight=[1,2]"], "model.pos_weight: expected 5 values"),
        (["optim.lr"], "expected key=value"),
        (["folds=1"], "at least 2 folds"),
        (["model.fusion_init=runs/tiny"], "model.fusion_init: starts a fusion model from an image-level run; set "
                                          "model.fusion too"),
        (["model.fusion=mean", "model.fusion_train=head"], "model.fusion_train: head trains the fusion layers on a "
                                                           "trained image model's films; set model.fusion_init"),
        (["model.fusion=mean", "model.fusion_train=heads"], "model.fusion_train: 'heads' is not one of all, head"),
    ],
)
def test_bad_config_is_an_error_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(HnpError, match=message.replace("[", r"\[").replace("?", r"\?")):
        load_config("tiny", overrides)


def test_off_on_yes_no_stay_strings_and_only_true_false_are_booleans(tmp_path: Path) -> None:
    path = tmp_path / "modes.yaml"
    path.write_text("wandb:\n  mode: off\ndata:\n  clahe: false\n")
    cfg = load_config(path, ["train.compile=true"])
    assert (cfg.wandb.mode, cfg.data.clahe, cfg.train.compile) == ("off", False, True)
    assert load_config(None, ["wandb.mode=off"]).wandb.mode == "off"
    with pytest.raises(HnpError, match="data.clahe: expected true or false, got 'yes'"):
        load_config(None, ["data.clahe=yes"])


def test_unknown_key_in_a_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(HnpError, match=r"unknown config key train.epoch; did you mean train.epochs\?"):
        load_config(path)


def test_saved_config_loads_back_identical(tmp_path: Path) -> None:
    cfg = load_config("paper", ["model.pos_weight=[1,1,1,2,2]"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
