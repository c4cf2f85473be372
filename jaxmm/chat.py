"""Chat with a model from the command line, tokens streamed to stdout.

    python -m jaxmm.chat --model path/to/hf_folder --prompt "hello"        # one-shot (scripts)
    python -m jaxmm.chat --model Qwen/Qwen2-0.5B-Instruct                  # a hub id; REPL without --prompt
    python -m jaxmm.chat --model runs/llava --image cat.png --prompt "what is this?"   # a jaxmm workdir

--model is one of
  * an HF folder (config.json with `architectures` + safetensors + tokenizer.json): any `jaxmm.hf.from_pretrained`
    family that generates text (LLMs, LLaVA); generation defaults from its generation_config.json
    (`jaxmm.hf.generation_kwargs`), flags override them; the prompt is rendered with the tokenizer's chat
    template (the Vicuna format when it has none);
  * a hub id `org/name`: resolved with `huggingface_hub.snapshot_download` (config, safetensors, tokenizer and
    template files only), from the local cache alone when HF_HUB_OFFLINE=1 (HF_HOME / HF_HUB_CACHE choose the
    cache);
  * a jaxmm workdir of the `mllm.qa` task family (config.json + checkpoints/): the MLLM is rebuilt from the
    saved config by the trainer's own builder, `jaxmm.hf.init.build_mllm` (model.llm or the model.init.llm
    folder's shapes with its vocabulary growth, the registered encoder `model.encoder` or the model.init.encoder
    folder's, the tokenizer data.tokenizer / the init.llm folder's / bytes, the encoder folder's image
    preprocessing) and its params are read from the newest checkpoint's `state` item
    with Orbax's StandardCheckpointer, read-only. Why here and not through train/: jaxmm never imports train
    (tests/test_layering.py), and reading params needs no checkpoint manager, data iterator or optimizer; the
    checkpoint's param shapes are checked against the rebuilt model, so a run whose model was built otherwise
    fails naming the param instead of producing nonsense. Prompts use the run's own training format (the
    tokenizer's template or Vicuna / byte roles via ConversationFormatter), images the task's scaling
    (uint8 / 127.5 - 1, or the model.init.encoder folder's preprocessor_config.json).

Images (--image): resized to the encoder's square input (bilinear, no crop); for HF folders normalised with
preprocessor_config.json's image_mean / image_std (CLIP's when absent) after x / 255. The REPL keeps the
conversation (each turn re-reads it whole, the image placed in the first user turn); an empty line or EOF ends
it. LLaVA-Read workdirs (data.source "llava_read" trained with OCR): the first turn becomes "OCR:\n<text>\n\n
<question>" with the image's text read by rapidocr (`--ocr tesseract` / `--ocr none`), laid out and budgeted as
in training (jaxmm.data.ocr_text):
    python -m jaxmm.chat --model runs/lr_full --image receipt.png --prompt "What is the total?"
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

from jaxmm.checks import fail

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ------------------------------------------------------------------------------------------- resolving --model
def resolve(spec: str) -> tuple[str, str]:
    """("hf" | "workdir", local folder) for --model: an existing folder, or a hub id via huggingface_hub."""
    if os.path.isdir(spec):
        if os.path.isdir(os.path.join(spec, "checkpoints")):
            return "workdir", spec
        if os.path.isfile(os.path.join(spec, "config.json")):
            return "hf", spec
        fail("--model", "an HF folder (config.json) or a jaxmm workdir (checkpoints/)", repr(spec))
    if not _HUB_ID.match(spec):
        fail("--model", "an existing folder or a hub id 'org/name'", repr(spec))
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError("hub ids need huggingface_hub (pip install 'jaxmm[hf]')") from e
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return "hf", snapshot_download(spec, allow_patterns=HUB_PATTERNS, local_files_only=offline)
    except Exception as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, network errors
        where = "in the local cache (HF_HUB_OFFLINE=1)" if offline else "on the hub or in the cache"
        raise FileNotFoundError(f"--model: {spec!r} not found {where}: {e}") from e


# ------------------------------------------------------------------------------------------- loading
class Session:
    """A loaded model, its tokenizer, generation defaults and image preprocessing."""

    def __init__(self, model, params, tok, *, gen_source, image_size=None, mean=None, std=None, processor=None,
                 formatter_args=None):
        self.model, self.params, self.tok = model, params, tok
        self.gen_source = gen_source  # a folder or a dict for jaxmm.hf.generation_kwargs
        self.image_size, self.mean, self.std = image_size, mean, std
        self.processor = processor  # a run's jaxmm.hf.preprocess.ImageProcessor (model.init.encoder), or None
        self.formatter_args = formatter_args or {}
        self.ocr = None  # LLaVA-Read workdirs: {"ocr", "width", "budget", "budget_rule"} of its data (issue 18)

    def image(self, path: str) -> np.ndarray:
        """[1, S, S, 3] float32 model input from an image file."""
        from PIL import Image

        if self.image_size is None:
            fail("--image", "a model with an image encoder", "a text-only model")
        img = Image.open(path).convert("RGB")
        if self.processor is not None and self.processor.output_size is not None:  # as the run's loader did
            return self.processor(np.asarray(img))[None].astype(np.float32)
        img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        if self.processor is not None:
            return self.processor.normalize(np.asarray(img))[None].astype(np.float32)
        x = np.asarray(img, np.float32)
        x = x / 127.5 - 1.0 if self.mean is None else (x / 255.0 - np.asarray(self.mean)) / np.asarray(self.std)
        return x[None].astype(np.float32)


def load_hf(folder: str) -> Session:
    from jaxmm.data import HFTokenizer
    from jaxmm.hf import from_pretrained

    model, params = from_pretrained(folder)
    tok = HFTokenizer(folder)
    size = mean = std = None
    if hasattr(model.config, "encoder_config"):
        size = model.config.encoder_config.image_size
        pre = os.path.join(folder, "preprocessor_config.json")
        cfg = json.load(open(pre)) if os.path.isfile(pre) else {}
        mean, std = cfg.get("image_mean", CLIP_MEAN), cfg.get("image_std", CLIP_STD)
    if not hasattr(model.config, "vocab_size") and not hasattr(model.config, "llm"):
        fail("--model", "a text-generating model (an LLM or LLaVA folder)", type(model).__name__)
    return Session(model, params, tok, gen_source=folder, image_size=size, mean=mean, std=std)


def latest_checkpoint(workdir: str) -> str:
    root = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in os.listdir(root) if d.isdigit() and os.path.isdir(os.path.join(root, d, "state")))
    if not steps:
        fail("--model", f"a workdir with a finished checkpoint under {root}", "none")
    return os.path.join(root, str(steps[-1]), "state")


def load_workdir(workdir: str) -> Session:
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from jaxmm.data import ByteTokenizer, HFTokenizer
    from jaxmm.hf import init as hf_init
    from jaxmm.models import encoders
    from jaxmm.models.llm import param_shapes

    config = json.load(open(os.path.join(workdir, "config.json")))
    m, d = config.get("model", {}), config.get("data", {})
    if "encoder" not in m or "llm" not in m:
        fail("--model", "a workdir of an MLLM task (config.json model.encoder and model.llm)",
             f"task {config.get('task')!r}")
    if encoders.get(m["encoder"]).input_key != "image":
        fail("--model", "a workdir of an image MLLM (the chat CLI feeds images only)", repr(m["encoder"]))
    path = hf_init.tokenizer_path(config)
    tok = HFTokenizer(path) if path else ByteTokenizer()
    model = hf_init.build_mllm(config, tok)  # the trainer's own builder (train/tasks/mllm.py calls it too)
    state = ocp.StandardCheckpointer().restore(os.path.abspath(latest_checkpoint(workdir)))
    params = jax.tree.map(jnp.asarray, state["params"])
    size = model.config.encoder_config.image_size
    want = param_shapes(model, jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, size, size, 3), jnp.float32))
    got = {tuple(k.key for k in p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    if want != got:
        diff = sorted("/".join(p) for p in set(want) ^ set(got)) or sorted(
            f"{'/'.join(p)} {got[p]} vs {want[p]}" for p in want if got[p] != want[p])
        fail("--model", "a checkpoint whose params match the model rebuilt from config.json",
             f"differences {diff[:6]}")
    fmt = dict(max_len=int(d.get("max_len", 512)), max_prompt_len=int(d.get("max_prompt_len", 512)))
    session = Session(model, params, tok, gen_source={"eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
                                                      "max_new_tokens": int(d.get("max_answer_len", 32)) + 1},
                      image_size=size, processor=hf_init.mllm_image_processor(config), formatter_args=fmt)
    lr = d.get("llava_read") if d.get("source") == "llava_read" else None
    if lr and lr.get("ocr", "none") != "none":
        session.ocr = {k: lr[k] for k in ("ocr", "width", "budget", "budget_rule")}
    return session


def with_ocr(session: Session, image_path: str, text: str, engine: str | None) -> str:
    """LLaVA-Read: the first user turn as trained, OCR text of the image between it and the instruction
    (jaxmm.data.ocr_text; the formatter puts <image> first). engine None: rapidocr for a workdir trained with
    OCR, else unchanged; "none": unchanged."""
    if engine == "none" or (engine is None and session.ocr is None):
        return text
    from jaxmm.data import ocr_text

    o = session.ocr or {"ocr": "layout", "width": 80, "budget": 256, "budget_rule": "head"}
    context = ocr_text.read_context(image_path, engine or "rapidocr", layout=o["ocr"] == "layout", width=o["width"])
    budget = None if o["budget"] is None or o["budget"] < 0 else o["budget"]
    return ocr_text.ocr_prompt(text, ocr_text.fit_text(context, session.tok, budget, o["budget_rule"]), image=False)


def load(spec: str) -> Session:
    kind, folder = resolve(spec)
    return load_hf(folder) if kind == "hf" else load_workdir(folder)


# ------------------------------------------------------------------------------------------- generating
def prompt_ids(session: Session, messages: list[dict], has_image: bool) -> list[int]:
    """The prompt in the model's format: the chat template (generation prompt appended), or the training format
    of ConversationFormatter (Vicuna / byte roles) ending with the assistant's role prefix."""
    from jaxmm.data import ConversationFormatter

    turns = [(m["role"], m["content"]) for m in messages] + [("assistant", "")]
    ex = {"conversations": turns}
    if has_image:
        ex["image"] = np.zeros((1, 1, 3), np.uint8)  # only marks the modality: the formatter adds <image>
    n = 1 << 20
    fmt = ConversationFormatter(session.tok, max_len=n, eval=True, max_prompt_len=n, truncate=False)
    ids, _, start, _ = fmt.tokenize(ex)
    return ids[:start]


def reply(session: Session, messages: list[dict], image=None, out=None, seed: int = 0, **overrides) -> str:
    """Generate the assistant's next turn for `messages`, writing the text to `out` (default stdout) as it is
    produced. overrides: generation_config fields (max_new_tokens, do_sample, temperature, ...)."""
    out = sys.stdout if out is None else out
    import jax
    import jax.numpy as jnp

    from jaxmm.hf import generation_kwargs
    from jaxmm.models.llm import LLM, generate_stream
    from jaxmm.models.mllm import MLLM

    ids = prompt_ids(session, messages, image is not None)
    kw = generation_kwargs(session.gen_source, len(ids), **overrides)
    kw["rng"] = jax.random.key(seed)
    model, params = session.model, session.params
    arr = jnp.asarray([ids], jnp.int32)
    if isinstance(model, MLLM):
        llm, llm_params = LLM(model.config.llm), params["llm"]
        if image is not None:
            embeds, mask, _, _ = model.apply({"params": params}, arr, jnp.asarray(image), jnp.ones_like(arr),
                                             method=MLLM.embed_inputs)
            stream = generate_stream(llm, llm_params, None, mask, prefill_embeds=embeds, **kw)
        else:
            stream = generate_stream(llm, llm_params, arr, **kw)
    else:
        stream = generate_stream(model, params, arr, **kw)
    eos = set(kw["eos_id"])
    new: list[int] = []
    shown = ""
    for tok in stream:
        t = int(tok[0])
        if t in eos:
            break
        new.append(t)
        text = session.tok.decode(new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.write(text[len(shown):])
            out.flush()
            shown = text
    text = session.tok.decode(new)
    out.write(text[len(shown):] + "\n")
    out.flush()
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jaxmm.chat", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF folder, hub id org/name, or jaxmm workdir")
    ap.add_argument("--image", help="an image file for the first turn")
    ap.add_argument("--prompt", help="one-shot: answer this and exit (no REPL)")
    ap.add_argument("--system", help="a system message")
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--temperature", type=float, help="> 0 samples (do_sample); 0: greedy")
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--repetition-penalty", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ocr", help="OCR engine whose text of --image goes before the question (rapidocr, tesseract; "
                    "default rapidocr for a LLaVA-Read workdir trained with OCR; 'none': off)")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in dict(max_new_tokens=args.max_new_tokens, top_k=args.top_k, top_p=args.top_p,
                                       repetition_penalty=args.repetition_penalty).items() if v is not None}
    if args.temperature is not None:
        overrides.update(do_sample=args.temperature > 0, **({"temperature": args.temperature}
                                                            if args.temperature > 0 else {}))
    session = load(args.model)
    image = session.image(args.image) if args.image else None
    messages = [{"role": "system", "content": args.system}] if args.system else []
    first = (lambda t: with_ocr(session, args.image, t, args.ocr)) if args.image else (lambda t: t)
    if args.prompt is not None:
        reply(session, messages + [{"role": "user", "content": first(args.prompt)}], image, seed=args.seed,
              **overrides)
        return 0
    turn = 0
    while True:
        try:
            text = input("> ")
        except EOFError:
            return 0
        if not text.strip():
            return 0
        messages.append({"role": "user", "content": first(text) if turn == 0 else text})
        answer = reply(session, messages, image, seed=args.seed + turn, **overrides)
        messages.append({"role": "assistant", "content": answer})
        turn += 1


if __name__ == "__main__":
    sys.exit(main())
