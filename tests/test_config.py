import pytest
import yaml

from common.config import SHARED, ConfigError, load_config, parse_override
from selfsup.config import ssl_defaults as config_defaults


def test_defaults_then_yaml_then_cli(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"optim": {"lr": 0.5, "momentum": 0.8}, "train": {"epochs": 7}}))
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\noptim:\n  lr: 0.25\n")
    cfg = load_config(config_defaults(), str(child), ["train.epochs=3", "model.cifar_stem=false"])
    assert cfg.optim.lr == 0.25            # child overrides base
    assert cfg.optim.momentum == 0.8       # inherited from base
    assert cfg.train.epochs == 3           # command line overrides both
    assert cfg.model.cifar_stem is False
    assert cfg.optim.weight_decay == SHARED["optim"]["weight_decay"]  # untouched default


def test_types_are_checked_and_coerced():
    cfg = load_config(config_defaults(), None, ["optim.lr=1", "optim.weight_decay=1e-4",
                                                 "data.crop_scale=[0.3,1]"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert cfg.optim.weight_decay == 1e-4   # YAML reads 1e-4 as a string; coerced to float
    assert cfg.data.crop_scale == [0.3, 1.0]
    with pytest.raises(ConfigError, match="train.epochs.*integer"):
        load_config(config_defaults(), None, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="model.cifar_stem.*true or false"):
        load_config(config_defaults(), None, ["model.cifar_stem=3"])
    with pytest.raises(ConfigError, match="'optim' is a section"):
        load_config(config_defaults(), None, ["optim=3"])


def test_unknown_key_names_the_closest_valid_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(config_defaults(), None, ["optim.lrr=0.1"])
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'train.epochz'.*'train.epochs'"):
        load_config(config_defaults(), str(f))
    with pytest.raises(ConfigError, match="method.simsiam.pred_hiden.*method.simsiam.pred_hidden"):
        load_config(config_defaults(), None, ["method.simsiam.pred_hiden=3"])


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(config_defaults(), str(tmp_path / "nope.yaml"))
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(config_defaults(), str(loop))
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("optim.lr")
    assert parse_override("data.crop_scale=[0.2, 1.0]") == ("data.crop_scale", [0.2, 1.0])


def test_every_shipped_yaml_file_resolves():
    import glob
    import os
    from conftest import REPO
    from accel.compression import load_schedule
    files = glob.glob(os.path.join(REPO, "yaml", "**", "*.yaml"), recursive=True)
    assert files
    for f in files:
        name = os.path.relpath(f, os.path.join(REPO, "yaml"))
        if os.sep + "schedules" + os.sep in f:   # compression schedules (accel/compression.py), not configs
            assert load_schedule(f)
        elif name.startswith(("ubn/kitti", "ubn/quickstart")):   # train_depth_ubn.py's own defaults tree
            from train_depth_ubn import DEPTH_DEFAULTS
            load_config(DEPTH_DEFAULTS, f)
        elif name.startswith(("selection" + os.sep, "ubn" + os.sep)):   # train_supervised.py's tree
            from train_supervised import SUPERVISED_DEFAULTS
            load_config(SUPERVISED_DEFAULTS, f)
        elif name.startswith("linear" + os.sep):                        # linear_eval.py's
            from selfsup.config import linear_eval_defaults
            load_config(linear_eval_defaults(), f)
        else:
            load_config(config_defaults(), f)


def test_command_line_accepts_overrides_on_both_sides_of_config(tmp_path):
    from train_ssl import parse_config
    f = tmp_path / "exp.yaml"
    f.write_text("train:\n  epochs: 9\n  batch_size: 64\n")
    cfg = parse_config(["optim.lr=0.5", "--config", str(f), "train.epochs=2"])
    assert (cfg.optim.lr, cfg.train.epochs, cfg.train.batch_size) == (0.5, 2, 64)
