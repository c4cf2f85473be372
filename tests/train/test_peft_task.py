"""train/tasks/peft.py at toy size: pre-training writes the backbone through `train.main.run`; every PEFT method
adapts from it in the shared loop with only its own group and the head moving; the table experiment runs."""
import importlib.util
import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import serialization, traverse_util

from train import tasks
from train.loop import train
from train.main import run
from train.optim import param_group
from train.tasks import peft

_spec = importlib.util.spec_from_file_location(
    "_peft_config", pathlib.Path(__file__).resolve().parents[2] / "configs" / "peft.py")
peft_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peft_config)


def make_config(arch, stage, method="full", **kw):
    """A toy run: configs/peft.py's stage config with the table's per-run settings."""
    return peft.table_run(peft_config.stage_config(arch, stage, "toy"), method, **kw)


@pytest.fixture(scope="module")
def llm_backbone(tmp_path_factory):
    d = tmp_path_factory.mktemp("peft_llm")
    path = str(d / "backbone.msgpack")
    summary = run(make_config("llm", "pretrain", save_params=path), str(d / "pretrain"))
    assert summary["metric"] == "eval_loss" and np.isfinite(summary["eval_loss"])
    return path


def _flat(tree):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(nn.unbox(tree)).items()}


@pytest.mark.parametrize("method", peft.METHODS)
def test_adapt_trains_only_the_method_and_head(method, llm_backbone, tmp_path):
    with open(llm_backbone, "rb") as f:
        stored = {("backbone", *k): v for k, v in traverse_util.flatten_dict(serialization.msgpack_restore(f.read())).items()}
    cfg = make_config("llm", "adapt", method, init_from=llm_backbone)
    summary, state = train(cfg, str(tmp_path), tasks.get(cfg.task), return_state=True)
    cfg = tasks.full_config(cfg)
    assert 0.0 <= summary["eval_accuracy"] <= 1.0 and np.isfinite(summary["final_loss"])
    params = _flat(state.params)
    groups = {k: param_group(k) for k in params}
    moved = {groups[k] for k in stored if not np.array_equal(params[k], stored[k])}
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    norms = {g: max(r.get(f"grad_norm/{g}", 0.0) for r in records) for g in set(groups.values())}
    m = cfg.model
    d = m.d_model // m.num_heads
    head = m.d_model * m.num_classes  # the head is a Dense without bias
    count = summary["trainable_params"]
    if method == "full":
        assert "backbone" in moved and norms["backbone"] > 0
        assert count == summary["params"] == sum(v.size for v in params.values())
        return
    assert moved == set(), f"frozen backbone params moved: {moved}"
    assert set(groups.values()) == {"backbone", "head", method}
    assert all(k in params for k in stored)  # every pre-trained tensor found its place
    # gradients reach the method's group and the head only (the loss stops them at the frozen backbone)
    assert norms[method] > 0 and norms["head"] > 0 and norms["backbone"] == 0
    per_layer = {"ntk": m.num_heads * (d * d + d), "prefix": 2 * m.prefix_length * m.num_kv_heads * d,
                 "lora": m.lora_rank * (m.d_model + m.num_heads * d) + m.lora_rank * (m.d_model + m.num_kv_heads * d)}
    assert count == m.num_layers * per_layer[method] + head
    assert summary["params"] == sum(v.size for v in params.values())


def test_load_backbone_refuses_a_mismatched_file(llm_backbone, tmp_path):
    with open(llm_backbone, "rb") as f:
        stored = serialization.msgpack_restore(f.read())
    del stored["final_norm"]
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(serialization.msgpack_serialize(stored))
    cfg = make_config("llm", "adapt", "ntk", init_from=str(bad))
    with pytest.raises(ValueError, match="lacks backbone params.*final_norm"):
        train(cfg, str(tmp_path / "run"), tasks.get(cfg.task))
    cfg = make_config("llm", "adapt", "ntk", init_from=str(tmp_path / "missing.msgpack"))
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(cfg, str(tmp_path / "run2"), tasks.get(cfg.task))


@pytest.mark.slow  # three more trainer runs: the smoke test of configs/peft.py:table
def test_table_experiment_writes_the_table(tmp_path):
    summary = run(peft_config.get_config("tiny"), str(tmp_path))
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["full", "ntk"]
    ntk = rows[1]
    m = tasks.full_config(make_config("vit", "adapt", "ntk")).model
    d = m.d_model // m.num_heads
    assert ntk["trainable"] == m.num_layers * m.num_heads * (d * d + d) + m.d_model * 5
    assert rows[0]["trainable"] == rows[0]["total"] == ntk["total"] - ntk["trainable"] + m.d_model * 5
    assert all(r["step_ms"] > 0 for r in rows) and summary["vit/ntk/trainable"] == ntk["trainable"]
    assert "| vit | NTK-Attention" in (tmp_path / "results.md").read_text()
