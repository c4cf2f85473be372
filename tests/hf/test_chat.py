"""`python -m jaxmm.chat`: an HF folder prints transformers' greedy reply to the templated prompt; a hub id
resolves offline from a pre-filled cache (HF_HUB_OFFLINE=1); a jaxmm workdir (written by train's own
Checkpointer) answers as the task's model and formatter would; bad --model values are named."""
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmm import chat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHAT = os.path.join(ROOT, "tests", "fixtures", "hf", "qwen2_chat")
CLI = json.load(open(os.path.join(CHAT, "chat_reference.json")))["cli"]


def test_hf_folder_one_shot_prints_transformers_greedy_reply(capsys):
    assert CLI["margin"] > 1e-2
    prompt = CLI["messages"][0]["content"]
    assert chat.main(["--model", CHAT, "--prompt", prompt, "--max-new-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == CLI["text"] + "\n"
    # streaming: the same text arrives in pieces, one write per decoded step
    out = io.StringIO()
    writes = []
    out.write = lambda s, w=out.write: (writes.append(s), w(s))[1]
    text = chat.reply(chat.load(CHAT), CLI["messages"], out=out, max_new_tokens=8, do_sample=False)
    assert text == CLI["text"] and len([w for w in writes if w.strip()]) >= 2


def fill_cache(cache, repo="tiny-org/tiny-chat", rev="0123456789abcdef0123456789abcdef01234567"):
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    base = os.path.join(cache, "models--" + repo.replace("/", "--"))
    snap = os.path.join(base, "snapshots", rev)
    os.makedirs(snap)
    for f in os.listdir(CHAT):
        if f.endswith((".json", ".safetensors")) and "reference" not in f:
            shutil.copy(os.path.join(CHAT, f), snap)
    os.makedirs(os.path.join(base, "refs"))
    with open(os.path.join(base, "refs", "main"), "w") as f:
        f.write(rev)
    return snap


def test_hub_id_resolves_offline_from_a_prefilled_cache(tmp_path):
    snap = fill_cache(str(tmp_path / "hub"))
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    code = ("import sys; from jaxmm import chat; print(chat.resolve(sys.argv[1])[1]); "
            "sys.exit(chat.main(['--model', sys.argv[1], '--prompt', sys.argv[2], '--max-new-tokens', '8', "
            "'--temperature', '0']))")
    r = subprocess.run([sys.executable, "-c", code, "tiny-org/tiny-chat", CLI["messages"][0]["content"]], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.split("\n")
    assert os.path.realpath(lines[0]) == os.path.realpath(snap)
    assert "\n".join(lines[1:]) == CLI["text"] + "\n"
    r = subprocess.run([sys.executable, "-c", code, "tiny-org/absent", "hi"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "HF_HUB_OFFLINE" in r.stderr and "tiny-org/absent" in r.stderr


def make_workdir(path, seed):
    """A workdir as train writes it: config.json (the mllm.qa task's tiny config) and a checkpoint written by
    train.checkpoint.Checkpointer; params are the task model's init plus noise (no training needed)."""
    from train import config as config_lib
    from train.checkpoint import Checkpointer
    from train.tasks import get

    task = get("mllm.qa")
    c = config_lib.defaults()
    d = task().default_config()
    c.task, c.model, c.data, c.task_args = "mllm.qa", d.model, d.data, d.task_args
    c.model.vit.update(dict(image_size=16, patch_size=8, d_model=32, num_layers=1, num_heads=2, mlp_dim=64))
    c.model.llm.update(dict(num_layers=1, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64))
    c.data.update(dict(max_len=48, max_prompt_len=40, max_answer_len=6))
    t = task(c)
    model = t.build_model(c)
    ids = jnp.zeros((1, 8), jnp.int32)
    img = jnp.zeros((1, 16, 16, 3), jnp.uint8)
    params = t.init_variables(model, {"input_ids": ids, "attention_mask": jnp.ones_like(ids), "image": img},
                              jax.random.key(seed))["params"]
    import flax.linen as nn
    leaves, tree = jax.tree.flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(c.to_json_best_effort(indent=2))
    ck = Checkpointer(os.path.join(path, "checkpoints"), every=1, keep=2, async_save=False)
    ck.save(3, {"params": params, "step": jnp.int32(3)}, None)
    ck.close()
    return c, t, model, params


def test_workdir_answers_as_the_task_model_and_formatter(tmp_path, capsys):
    from PIL import Image

    from jaxmm.data import ConversationFormatter
    from jaxmm.models.mllm import generate

    c, task, model, params = make_workdir(str(tmp_path / "run"), seed=0)
    rgb = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    question = "what word?"
    # reference: the task's own eval prompt and media scaling, jaxmm.models.mllm.generate, greedy to EOS
    fmt = ConversationFormatter(task.tok, max_len=48, eval=True, max_prompt_len=40)
    ex = fmt({"conversations": [("user", question), ("assistant", "x")], "image": rgb})
    media = task.media(model, {"image": jnp.asarray(rgb)[None]})
    new = np.asarray(generate(model, params, jnp.asarray(ex["prompt_ids"])[None], jnp.asarray(ex["prompt_mask"])[None],
                              media, max_new_tokens=7, eos_id=task.tok.eos_id, pad_id=task.tok.pad_id))[0]
    stop = list(new).index(task.tok.eos_id) if task.tok.eos_id in new else len(new)
    want = task.tok.decode(new[:stop])
    assert stop >= 3, "reference too short to compare"
    assert chat.main(["--model", str(tmp_path / "run"), "--image", str(tmp_path / "img.png"),
                      "--prompt", question]) == 0
    assert capsys.readouterr().out == want + "\n"
    # a config that no longer matches the checkpoint is refused naming the params
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    cfg["model"]["llm"]["mlp_dim"] = 48
    json.dump(cfg, open(tmp_path / "run" / "config.json", "w"))
    with pytest.raises(ValueError, match="mlp"):
        chat.load(str(tmp_path / "run"))


def test_bad_model_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="--model"):
        chat.resolve(str(tmp_path))  # a folder that is neither
    with pytest.raises(ValueError, match="--model"):
        chat.resolve("not a hub id")


def test_workdir_initialised_from_hf_folders_chats_as_the_trainer_built_it(tmp_path, capsys):
    """A run with model.init.encoder (CLIP vision + preprocessor_config.json) and model.init.llm (Qwen2 with its
    tokenizer.json, which lacks `<image>`: the vocabulary grows) is rebuilt by the chat through the trainer's own
    builder (jaxmm.hf.init.build_mllm): same module config, the checkpoint's params (not the folders'), the same
    image preprocessing, logits equal to the trainer's model's, and the one-shot CLI prints its greedy reply."""
    import flax.linen as nn
    from PIL import Image

    from jaxmm.data import ConversationFormatter
    from jaxmm.hf import read_config
    from jaxmm.models.mllm import generate
    from train import config as config_lib
    from train.checkpoint import Checkpointer
    from train.tasks import get

    hf = os.path.join(ROOT, "tests", "fixtures", "hf")
    task = get("mllm.qa")
    c = config_lib.defaults()
    d = task().default_config()
    c.task, c.model, c.data, c.task_args = "mllm.qa", d.model, d.data, d.task_args
    c.model.init.update(encoder=os.path.join(hf, "clip_model"), llm=os.path.join(hf, "qwen2_chat"))
    c.data.update(dict(max_len=96, max_prompt_len=88, max_answer_len=6))
    t = task(c)
    model = t.build_model(c)
    assert model.config.llm.vocab_size == t.tok.vocab_size > read_config(os.path.join(hf, "qwen2_chat"))["vocab_size"]
    size = model.config.encoder_config.image_size
    ids = jnp.zeros((1, 8), jnp.int32)
    init = t.init_variables(model, {"input_ids": ids, "attention_mask": jnp.ones_like(ids),
                                    "image": jnp.zeros((1, size, size, 3), jnp.uint8)}, jax.random.key(0))
    params = t.initial_params(nn.unbox(init["params"]))  # the folders' weights, as the trainer starts
    leaves, tree = jax.tree.flatten(params)  # "training": move every param, so the folders' weights are wrong
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    wd = str(tmp_path / "run")
    os.makedirs(wd)
    with open(os.path.join(wd, "config.json"), "w") as f:
        f.write(c.to_json_best_effort(indent=2))
    ck = Checkpointer(os.path.join(wd, "checkpoints"), every=1, keep=2, async_save=False)
    ck.save(2, {"params": params, "step": jnp.int32(2)}, None)
    ck.close()

    session = chat.load(wd)
    assert session.model.config == model.config and session.tok.vocab_size == t.tok.vocab_size
    rgb = (np.random.default_rng(0).random((size + 6, size + 2, 3)) * 255).astype(np.uint8)  # not square
    Image.fromarray(rgb).save(tmp_path / "img.png")
    media = session.image(str(tmp_path / "img.png"))
    want_media = t.media(model, {"image": jnp.asarray(t.processor.geometric(rgb))[None]})  # loader + device step
    np.testing.assert_allclose(media, np.asarray(want_media), atol=1e-6)
    question = "what word?"
    fmt = ConversationFormatter(t.tok, max_len=96, eval=True, max_prompt_len=88)
    ex = fmt({"conversations": [("user", question), ("assistant", "x")], "image": rgb})
    prompt, mask = jnp.asarray(ex["prompt_ids"])[None], jnp.asarray(ex["prompt_mask"])[None]
    want = model.apply({"params": params}, prompt, want_media, mask)
    got = session.model.apply({"params": session.params}, prompt, jnp.asarray(media), mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    assert float(jnp.max(jnp.abs(want))) > 0.1  # non-trivial logits
    new = np.asarray(generate(model, params, prompt, mask, want_media, max_new_tokens=7, eos_id=t.tok.eos_id,
                              pad_id=t.tok.pad_id))[0]
    stop = list(new).index(t.tok.eos_id) if t.tok.eos_id in new else len(new)
    assert chat.main(["--model", wd, "--image", str(tmp_path / "img.png"), "--prompt", question]) == 0
    assert capsys.readouterr().out == t.tok.decode(new[:stop]) + "\n"
