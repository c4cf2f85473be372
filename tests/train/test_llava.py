"""configs/llava.py: the two LLaVA stages on tiny random HF folders (tests/fixtures/hf: CLIPModel vision tower +
Llama) and a generated LLaVA-JSON set, through the trainer. Which param groups train in each stage is checked
twice: from the optimizer's frozen set (fast, every variant) and from the checkpointed params of real runs
(frozen groups stay bit-equal to the HF weights; trained ones move; stage 2 starts from stage 1's projector)."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
HF = ROOT / "tests" / "fixtures" / "hf"
EXPECTED_FROZEN = {  # variant -> (frozen groups, trained groups)
    "stage1": ({"encoder", "llm"}, {"projector"}),
    "stage2": ({"encoder"}, {"llm", "projector"}),
    "stage2_lora": ({"encoder", "llm"}, {"lora", "projector"}),
}


def llava_config(variant: str):
    spec = importlib.util.spec_from_file_location("_config_llava", ROOT / "configs" / "llava.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


@pytest.fixture(scope="module")
def llava_data(tmp_path_factory):
    """8 caption records (stage 1) and 8 question/answer records (stage 2) over non-square PNGs."""
    root = tmp_path_factory.mktemp("llava_data")
    rng = np.random.default_rng(0)
    colors = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    captions, qa = [], []
    for i in range(8):
        name = list(colors)[i % 2]
        h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
        img = np.full((h, w, 3), colors[name], np.uint8) + rng.integers(0, 20, (h, w, 3)).astype(np.uint8)
        Image.fromarray(img).save(root / f"im{i}.png")
        captions.append({"id": f"c{i}", "image": f"im{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nbrief"}, {"from": "gpt", "value": f"a {name} box"}]})
        qa.append({"id": f"q{i}", "image": f"im{i}.png", "conversations": [
            {"from": "human", "value": "<image>\ncolor?"}, {"from": "gpt", "value": name}]})
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "qa.json").write_text(json.dumps(qa))
    return root


def tiny(variant: str, data: pathlib.Path, json_name: str, steps: int = 3):
    c = llava_config(f"{variant}_tiny")
    c.data = dict(source="llava_json", train_examples=8, eval_examples=0, max_len=64, max_prompt_len=56,
                  max_answer_len=8, llava_json=dict(train_json=str(data / json_name), eval_json="",
                                                    image_folder=str(data)))
    c.train.update(steps=steps, batch_size=8, eval_batch_size=8)  # tests run on 8 CPU devices
    c.checkpoint.update(every=1, keep=10)
    return c


def hf_params(name):
    from jaxmm.hf import from_pretrained

    return jax.tree.map(np.asarray, from_pretrained(str(HF / name))[1])


def groups_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    return [p for p, _ in la] == [p for p, _ in lb] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(la, lb))


def without_lora(tree):
    return {k: without_lora(v) for k, v in tree.items() if k not in ("lora_a", "lora_b")} \
        if isinstance(tree, dict) else tree


def params_at(workdir, step, groups=None):
    from train.checkpoint import read_params

    return read_params(os.path.join(workdir, "checkpoints"), groups, step=step)[1]


@pytest.mark.parametrize("variant", sorted(EXPECTED_FROZEN))
def test_each_stage_freezes_the_expected_groups(variant):
    """The optimizer's frozen / trained groups of the real-size and the tiny variants (fails if they change)."""
    import flax.linen as nn

    from train import config as config_lib
    from train import optim
    from train import tasks

    frozen, trained = EXPECTED_FROZEN[variant]
    for name in (variant, f"{variant}_tiny"):
        c = llava_config(name)
        assert bool(c.model.init.from_workdir) == (variant != "stage1")
        if name.endswith("_tiny"):  # the model's groups (abstract shapes: nothing computed)
            factory = tasks.get(c.task)
            c = config_lib.fill(c, tasks.build(factory, None).default_config())
            task = tasks.build(factory, c)
            model = task.build_model(c)
            ds = task.datasets(c)[0]
            batch = jax.tree.map(lambda x: np.asarray(x)[None], ds[0])
            init = jax.eval_shape(lambda r: task.init_variables(model, batch, r), jax.random.key(0))
            params = nn.meta.unbox(init["params"])
            _, _, groups = optim.make_optimizer(c, params)
            assert set(groups) == frozen | trained, name
        assert optim.frozen_groups(c, frozen | trained) == frozen, name


@pytest.mark.slow  # three trainer runs: ~1 min each of compilation on 2 loaded cores
def test_stage1_then_stage2_train_the_right_groups_from_hf_and_stage1(llava_data, tmp_path):
    from train import tasks
    from train.loop import train

    clip, llama = hf_params("clip_model"), hf_params("llama_mha")
    s1 = str(tmp_path / "stage1")
    summary = train(tiny("stage1", llava_data, "captions.json"), s1, tasks.get("mllm.qa"))
    assert np.isfinite(summary["final_loss"])
    first, last = params_at(s1, 1), params_at(s1, 3)
    for p in (first, last):  # frozen: the HF weights, bit for bit
        assert groups_equal(p["encoder"], clip)
        assert groups_equal(p["llm"], llama)
    assert not groups_equal(first["projector"], last["projector"])  # trained

    c2 = tiny("stage2", llava_data, "qa.json", steps=2)
    c2.model.init.from_workdir = f"{s1}:projector"
    s2 = str(tmp_path / "stage2")
    train(c2, s2, tasks.get("mllm.qa"))
    a, b = params_at(s2, 1), params_at(s2, 2)
    assert groups_equal(b["encoder"], clip)  # still frozen
    assert not groups_equal(a["llm"], b["llm"]) and not groups_equal(b["llm"], llama)  # LLM trains now
    assert not groups_equal(a["projector"], b["projector"])
    # stage 2 started from stage 1's last projector: its first step moved it by one Adam step (<= lr per entry)
    lr = c2.optim.lr
    for x, y in zip(jax.tree.leaves(last["projector"]), jax.tree.leaves(a["projector"])):
        assert np.max(np.abs(x - y)) <= 1.01 * lr
        assert np.max(np.abs(x - y)) > 0

    # LoRA variant: LLM frozen at the HF weights, its LoRA pairs and the projector train
    c3 = tiny("stage2_lora", llava_data, "qa.json", steps=2)
    c3.model.init.from_workdir = f"{s1}:projector"
    s3 = str(tmp_path / "stage2_lora")
    train(c3, s3, tasks.get("mllm.qa"))
    a, b = params_at(s3, 1), params_at(s3, 2)
    assert groups_equal(without_lora(b["llm"]), llama)
    lora = lambda t: [x for p, x in jax.tree_util.tree_flatten_with_path(t)[0] if "lora_b" in str(p[-1])]  # noqa
    assert lora(b["llm"]) and all(np.any(x != 0) for x in lora(b["llm"]))  # lora_b starts at 0 and moved
    assert not groups_equal(a["projector"], b["projector"])


def test_from_workdir_takes_the_groups_read_only_and_checks_its_spec(tmp_path):
    """A checkpoint written by the trainer's Checkpointer; params_from_workdir takes the named group from its
    newest step, keeps the others, and writes nothing there (an unfinished save another run might still be
    writing survives, which the trainer's own Checkpointer would have deleted)."""
    import jax.numpy as jnp

    from train.checkpoint import Checkpointer, params_from_workdir

    rng = np.random.default_rng(0)
    saved = {g: {"kernel": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)} for g in ("encoder", "projector")}
    ckpt = Checkpointer(str(tmp_path / "run" / "checkpoints"), every=1, keep=3, async_save=False)
    for step in (1, 2):
        ckpt.save(step, {"step": jnp.asarray(step), "params": jax.tree.map(lambda x: x * step, saved)}, None)
    ckpt.close()
    (tmp_path / "run" / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir()  # another run's save in flight
    before = sorted((str(p), p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*"))

    mine = {g: {"kernel": jnp.zeros((3, 4))} for g in ("encoder", "projector", "llm")}
    out = params_from_workdir(mine, f"{tmp_path / 'run'}:projector")
    np.testing.assert_array_equal(out["projector"]["kernel"], 2 * np.asarray(saved["projector"]["kernel"]))  # newest
    np.testing.assert_array_equal(out["encoder"]["kernel"], 0)  # not named: kept
    out = params_from_workdir(mine, f"{tmp_path / 'run'}:encoder,projector")
    np.testing.assert_array_equal(out["encoder"]["kernel"], 2 * np.asarray(saved["encoder"]["kernel"]))
    assert sorted((str(p), p.stat().st_mtime_ns) for p in (tmp_path / "run").rglob("*")) == before

    with pytest.raises(ValueError, match="<workdir>:<group>"):
        params_from_workdir(mine, "runs/x")
    with pytest.raises(ValueError, match=r"\['vision'\] are not param groups"):
        params_from_workdir(mine, "runs/x:vision")
    with pytest.raises(ValueError, match="has no param group.*'llm'"):
        params_from_workdir(mine, f"{tmp_path / 'run'}:llm")
    with pytest.raises(ValueError, match=r"params\['projector'\].*shapes differ"):
        params_from_workdir({"projector": {"kernel": jnp.zeros((4, 4))}}, f"{tmp_path / 'run'}:projector")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        params_from_workdir(mine, f"{tmp_path}/none:projector")

    # the recorded checksums are checked: a projector array that no longer matches them is refused
    meta = next((tmp_path / "run" / "checkpoints" / "2" / "meta").glob("*"))
    record = json.loads(meta.read_text())
    key = next(k for k in record["checksums"] if k.startswith("params.projector."))
    record["checksums"][key] = [record["checksums"][key][0] + 1, record["checksums"][key][1]]
    meta.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="checksum mismatch.*params.projector"):
        params_from_workdir(mine, f"{tmp_path / 'run'}:projector")
    params_from_workdir(mine, f"{tmp_path / 'run'}:encoder")  # the other group's sums still agree


def test_images_follow_the_encoder_folders_preprocessor(llava_data):
    """With model.init.encoder the LLaVA-JSON images are padded with the processor's mean colour, resized
    (shortest edge 20) and centre-cropped (16) by it, and normalised with its mean/std on device."""
    import jax.numpy as jnp

    from jaxmm.hf.preprocess import ImageProcessor
    from train import config as config_lib
    from train import tasks

    c = tiny("stage1", llava_data, "captions.json")
    factory = tasks.get(c.task)
    c = config_lib.fill(c, tasks.build(factory, None).default_config())
    task = tasks.build(factory, c)
    proc = ImageProcessor.from_folder(HF / "clip_model")
    assert task.processor == proc and proc.shortest_edge == 20 and proc.crop == (16, 16)
    example = task.datasets(c)[0][0]
    src = Image.open(llava_data / "im0.png").convert("RGB")
    side = max(src.size)
    canvas = Image.new("RGB", (side, side), proc.pad_color)
    canvas.paste(src, ((side - src.size[0]) // 2, (side - src.size[1]) // 2))
    np.testing.assert_array_equal(example["image"], proc.geometric(canvas))
    model = task.build_model(c)
    pixels = task.media(model, {"image": jnp.asarray(example["image"])[None]})
    mean, std = np.array(proc.mean), np.array(proc.std)
    np.testing.assert_allclose(pixels[0], (example["image"] / 255.0 - mean) / std, atol=1e-5)
