"""Issue 18: the `llava_read` task's data path with rapidocr (the `:tiny` config's eval set; the run itself goes end
to end in tests/train/test_configs_tiny.py): the OCR block of an eval prompt is what rapidocr reads from the
full-resolution page, and those words are the page's own (checked against the generator's truth)."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "llava_read.py"


def _config(variant):
    spec = importlib.util.spec_from_file_location("_config_llava_read", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def test_tiny_eval_prompts_carry_rapidocr_text_of_the_page():
    from jaxmm.data.llava_read import LlavaReadSource
    from train.config import fill
    from train.tasks.llava_read import LlavaReadTask
    from train.tasks.mllm import _sources

    task = LlavaReadTask()
    config = fill(_config("tiny"), task.default_config())
    assert config.model.encoder == "dual_res" and config.data.source == "llava_read"
    train, evals = _sources(config)
    assert (train.engine, evals.engine) == ("oracle", "rapidocr")
    oracle_twin = LlavaReadSource(len(evals), seed=config.seed, split="eval", image_size=evals.image_size,
                                  ocr="plain", budget=None, page_kinds=evals.page_kinds)
    ex, truth = evals[0], oracle_twin[0]
    assert ex["conversations"][0][1] == "<image>\nOCR:\n" + ex["ocr_text"] + "\n\n" + ex["question"]
    read = ex["ocr_text"].lower().split()
    page_words = set(truth["ocr_text"].lower().split())
    assert read and sum(w in page_words for w in read) >= 0.6 * len(read), (read, page_words)


def test_chat_puts_rapidocr_text_of_a_user_png_before_the_question(tmp_path):
    from PIL import Image

    from jaxmm.chat import Session, with_ocr
    from jaxmm.data import ByteTokenizer
    from jaxmm.data.textrich import make_page

    page = make_page(5, "sign")
    path = str(tmp_path / "sign.png")
    Image.fromarray(page.image).save(path)
    session = Session(None, None, ByteTokenizer(), gen_source={})
    assert with_ocr(session, path, "What does it say?", None) == "What does it say?"   # trained without OCR
    session.ocr = {"ocr": "plain", "width": 32, "budget": 64, "budget_rule": "head"}
    text = with_ocr(session, path, "What does it say?", None)
    assert text.startswith("OCR:\n") and text.endswith("\n\nWhat does it say?")
    read = text[len("OCR:\n"):-len("\n\nWhat does it say?")].lower().split()
    truth = {w.lower() for w in page.words}
    assert read and sum(w in truth for w in read) >= 0.6 * len(read), (read, truth)
    assert with_ocr(session, path, "Q?", "none") == "Q?"


def test_ablation_rows_budget_covers_the_layout_canvas():
    """The rows' OCR budget (96 tokens of configs/llava_read_bpe) keeps the same words with and without layout
    recovery (the byte-level budget of the first table lost 15 points of recall to the canvas's spaces), and the
    whole prompt fits data.max_prompt_len."""
    from jaxmm.data import HFTokenizer
    from jaxmm.data.llava_read import LlavaReadSource

    plain, layout = _config("ocr_plain"), _config("ocr_layout")
    assert plain.data.tokenizer == layout.data.tokenizer and plain.data.llava_read.budget == 96
    tok = HFTokenizer(plain.data.tokenizer)
    args = {k: v for k, v in layout.data.llava_read.to_dict().items() if k not in ("ocr", "ocr_cache")}
    srcs = {m: LlavaReadSource(8, split="eval", ocr=m, tokenizer=tok, **args) for m in ("plain", "layout")}
    full = LlavaReadSource(8, split="eval", ocr="plain", budget=None, tokenizer=tok,
                           **{k: v for k, v in args.items() if k != "budget"})
    same = 0
    for i in range(8):
        p, lay, whole = srcs["plain"][i], srcs["layout"][i], full[i]
        assert len(tok.encode(lay["ocr_text"])) <= 96 and len(tok.encode(p["ocr_text"])) <= 96
        assert len(tok.encode(lay["conversations"][0][1])) + 4 <= layout.data.max_prompt_len
        same += sorted(p["ocr_text"].split()) == sorted(lay["ocr_text"].split()) == sorted(whole["ocr_text"].split())
    assert same >= 7, same
    # bytes at the same budget (the first table's setting) cut the canvas far earlier
    b = LlavaReadSource(8, split="eval", ocr="layout", **args)
    assert sum(len(b[i]["ocr_text"].split()) for i in range(8)) < 0.8 * sum(
        len(srcs["layout"][i]["ocr_text"].split()) for i in range(8))



def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_rapidocr_variants_evaluate_the_trained_row_without_training():
    """`<row>_rapidocr` is the row's config with rapidocr at eval, no training step and every param group taken
    from the row's run: the table's rapidocr columns evaluate the oracle rows' own checkpoints."""
    for row in ("low_res", "dual_res", "ocr_plain", "ocr_layout", "full"):
        base, ev = _flat(_config(row).to_dict()), _flat(_config(f"{row}_rapidocr").to_dict())
        changed = {k for k in base.keys() | ev.keys() if base.get(k) != ev.get(k)}
        assert changed == {"data.llava_read.eval_engine", "train.steps", "model.init.from_workdir"}, (row, changed)
        assert (ev["data.llava_read.eval_engine"], ev["train.steps"]) == ("rapidocr", 0)
        assert ev["model.init.from_workdir"] == f"runs/lr_{row}:encoder,projector,llm"


@pytest.fixture(scope="module")
def eval_only_run(tmp_path_factory):
    """An eval-only run (train.steps=0) of `:tiny` (low-res encoder, oracle OCR at eval, answer loss only) through
    model.init.from_workdir of a checkpoint (the trainer's Checkpointer, as a row's run leaves it) holding random
    weights of the model's shapes, as the `_rapidocr` variants evaluate a row's run."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from train import loop
    from train.checkpoint import Checkpointer
    from train.main import load_config
    from train.tasks.llava_read import LlavaReadTask

    over = {"data.llava_read.eval_engine": "", "task_args.eval_generate": False, "train.steps": 0,
            "train.plots": False, "mesh.shape": (1, 1, 1), "model.dual_res.low_res_only": True}
    config = load_config(f"{CONFIG}:tiny", **over)
    task = LlavaReadTask(config)
    model, example = task.build_model(config), loop.example_batch(task.datasets(config)[0])
    shapes = jax.eval_shape(lambda r: nn.meta.unbox(task.init_variables(model, example, r)["params"]),
                            jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    row = jax.tree.map(lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), shapes)
    row_dir, eval_dir = (tmp_path_factory.mktemp(n) for n in ("row", "eval_only"))
    ckpt = Checkpointer(str(row_dir / "checkpoints"), every=1, keep=1, async_save=False)
    ckpt.save(7, {"step": jnp.asarray(7), "params": row}, None)
    ckpt.close()
    config = load_config(f"{CONFIG}:tiny", **over, **{"model.init.from_workdir": f"{row_dir}:encoder,projector,llm"})
    out, state = loop.train(config, str(eval_dir), "llava_read", return_state=True)
    return out, state, row


def test_eval_only_run_evaluates_the_row_checkpoint_weights(eval_only_run):
    """The eval-only run holds exactly the checkpoint's weights (inert loading would leave the seed's initial
    ones) and takes no step; its eval is of those weights (the loop's end-of-run eval of the state)."""
    import jax
    import numpy as np

    out, state, row = eval_only_run
    assert (out["steps"], out["final_loss"], out["mfu_unknown"], int(state.step)) == (0, None, "no step ran", 0)
    for x, y in zip(jax.tree.leaves(row), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.isfinite(out["eval_loss"]) and out["eval_loss"] > 0
