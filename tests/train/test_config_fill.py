"""Configs are data (issue 13.6): a config gives only what differs; `train.config.fill` completes it from the
trainer's defaults and the task's schema, and `python -m train` does so when it loads the file, so an override of
a key the file leaves out works."""
import pathlib
import sys

import ml_collections
import pytest
from absl import flags

from train import config as config_lib
from train import tasks

SCHEMA = ml_collections.ConfigDict(dict(model=dict(width=8, depth=2), data=dict(n=4), task_args={}))


def test_fill_completes_a_partial_config_and_is_idempotent():
    partial = ml_collections.ConfigDict(dict(task="x", train=dict(steps=7), model=dict(depth=3),
                                             optim=dict(groups=dict(head=dict(lr=0.5)))))
    full = config_lib.fill(partial, SCHEMA)
    want = config_lib.defaults().to_dict()
    want.update(task="x", model=dict(width=8, depth=3), data=dict(n=4), task_args={})
    want["train"]["steps"] = 7
    want["optim"]["groups"] = {"head": {"lr": 0.5}}
    assert full.to_dict() == want
    assert config_lib.fill(full, SCHEMA).to_dict() == want
    with pytest.raises(AttributeError):
        full.new_key = 1  # locked


@pytest.mark.parametrize("given,named", [(dict(model=dict(widht=3)), "config.model.widht.*'width'"),
                                         (dict(train=dict(steps="10")), "config.train.steps"),
                                         (dict(train=dict(batch_size=0)), "config.train.batch_size")])
def test_fill_names_a_bad_key(given, named):
    with pytest.raises(ValueError, match=named):
        config_lib.fill(ml_collections.ConfigDict(dict(task="x", **given)), SCHEMA)


def test_command_line_overrides_a_key_the_file_leaves_out(monkeypatch):
    from train import main  # noqa: F401  (defines --config with the filling loader)

    path = f"{pathlib.Path(__file__).resolve().parents[2]}/configs/vit_probe.py:tiny"  # no grad_accum, b1, task_args
    argv = ["train", f"--config={path}", "--config.train.grad_accum=2", "--config.optim.b1=0.5", "--workdir=/x"]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        flags.FLAGS(argv)
        config = flags.FLAGS.config
        assert config.train.grad_accum == 2 and config.optim.b1 == 0.5
        assert config.train.steps == 4 and config.task_args.save_encoder == ""  # the file's value; the task's default
        assert config.to_dict() == tasks.full_config(config).to_dict()
    finally:
        flags.FLAGS.unparse_flags()


def test_load_config_from_python_equals_the_cli_config_and_names_bad_overrides():
    import pytest as _pytest

    from train import tasks
    from train.main import config_path, load_config

    c = load_config("vit_probe:tiny", **{"train.steps": 3, "optim.lr": 0.5})
    assert (c.task, c.train.steps, c.optim.lr) == ("vit_probe", 3, 0.5)
    assert "log_every" in c.train and "checkpoint" in c  # completed with the trainer's defaults, as --config is
    path = config_path("vit_probe:tiny").partition(":")[0]
    assert path.endswith("configs/vit_probe.py")
    assert set(tasks.full_config(load_config("vit_probe:tiny")).keys()) == set(c.keys())
    with _pytest.raises(ValueError, match="train.stepz"):
        load_config("vit_probe:tiny", **{"train.stepz": 3})
    with _pytest.raises(ValueError, match="nosuch"):
        load_config("vit_probe:tiny", **{"nosuch.steps": 3})
