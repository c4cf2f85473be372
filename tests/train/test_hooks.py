"""In-step hooks (EMA of params against a float64 NumPy EMA), the end-of-run hook, and tasks built per run."""
from __future__ import annotations

import flax
import jax
import numpy as np
import pytest

from train import loop
from train import tasks as tasks_lib
from train.hooks import ema_hook
from train.task import Hook, Task
from train.tasks import toy

DECAY = 0.8


def _flat(tree):
    return {"/".join(map(str, k)): np.asarray(v, np.float64)
            for k, v in flax.traverse_util.flatten_dict(jax.device_get(tree)).items()}


def test_ema_hook_matches_a_float64_numpy_ema_of_the_trained_params(tmp_path):
    seen = []  # params after each step, read by a host hook

    class _WithEMA(toy.ToyClassify):
        def step_hooks(self, config):
            return [ema_hook(DECAY)]

        def hooks(self, config):
            return [Hook(1, lambda ctx: seen.append(_flat(ctx.state.params)) or {}, "record")]

    c = toy.config(**{"train.steps": 6, "checkpoint.every": 0, "mesh.shape": (1, 1, 1)})
    _, state = loop.train(c, str(tmp_path / "w"), _WithEMA, return_state=True)
    # the initial params, as the loop makes them
    task = _WithEMA(c)
    model = task.build_model(c)
    init_rng = jax.random.split(jax.random.PRNGKey(c.seed))[0]
    example = loop.example_batch(task.datasets(c)[0])
    ema = _flat(flax.linen.meta.unbox(task.init_variables(model, example, init_rng)["params"]))
    assert len(seen) == 6
    for params in seen:
        ema = {k: DECAY * v + (1 - DECAY) * params[k] for k, v in ema.items()}
    got = _flat(state.extra["ema"])
    assert set(got) == set(ema)
    for k in ema:
        np.testing.assert_allclose(got[k], ema[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the EMA is not the params (the hook did something)
    assert max(np.abs(got[k] - seen[-1][k]).max() for k in got) > 1e-4


def test_on_end_sees_the_records_and_adds_to_the_summary(tmp_path):
    import json

    class _End(toy.ToyClassify):
        def on_end(self, ctx):
            (ctx.workdir and open(f"{ctx.workdir}/end.txt", "w").write(str(len(ctx.records))))
            return {"last_step": ctx.records[-1]["step"], "steps_seen": int(ctx.state.step)}

    summary = loop.train(toy.config(**{"train.steps": 3, "checkpoint.every": 0}), str(tmp_path / "w"), _End)
    assert summary["last_step"] == 3 and summary["steps_seen"] == 3
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["last_step"] == 3
    assert (tmp_path / "w" / "end.txt").exists()


def test_each_run_builds_its_own_task_object(tmp_path):
    built = []

    class _Count(toy.ToyClassify):
        def __init__(self, config=None):
            super().__init__(config)
            built.append(self)

    for name in ("a", "b"):
        loop.train(toy.config(**{"train.steps": 1, "checkpoint.every": 0}), str(tmp_path / name), _Count)
    runs = [t for t in built if t.config is not None]
    assert len(runs) == 2 and runs[0] is not runs[1]


def test_registry_holds_factories_not_instances():
    assert tasks_lib.get("toy.classify") is toy.ToyClassify
    assert tasks_lib.is_training_task("toy.classify") and tasks_lib.is_training_task("peft.vit")
    assert isinstance(tasks_lib.build("peft.vit"), Task)
    with pytest.raises(TypeError, match="not an instance"):
        tasks_lib.register("toy.instance")(toy.ToyClassify())


def test_summary_step_time_and_parameter_counts(tmp_path):
    """`step_time_s` is the loop's own step (host-side hooks included) without the compiling first window;
    `params` / `trainable_params` count the leaves (frozen groups excluded from the second)."""
    from train import config as config_lib

    c = toy.config(**{"train.steps": 6, "train.log_every": 2, "task_args.sleep_s": 0.05, "checkpoint.every": 0})
    c.optim.groups.encoder = config_lib.group(frozen=True)
    summary = loop.train(c, str(tmp_path / "w"), toy.ToyClassify)
    assert 0.05 <= summary["step_time_s"] < summary["train_time_s"] / 3
    m, d = c.model, c.data  # encoder: Dense(dim -> hidden) + LoRA pair; head: Dense(hidden -> classes)
    encoder = d.dim * m.hidden + m.hidden
    lora = m.lora_rank * (d.dim + m.hidden)
    head = m.hidden * m.classes + m.classes
    assert summary["params"] == encoder + lora + head and summary["trainable_params"] == lora + head
    one = loop.train(toy.config(**{"train.steps": 1, "checkpoint.every": 0}), str(tmp_path / "one"), toy.ToyClassify)
    assert one["step_time_s"] is None  # one logging window: nothing measured after the compilation
