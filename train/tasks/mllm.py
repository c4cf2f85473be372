"""`mllm.qa`: supervised instruction tuning of a LLaVA-style MLLM (encoder -> projector -> LLM) on
conversation data, evaluated by answer-token loss and generation exact-match accuracy.

Model: `jaxmm.models.mllm.MLLM` built from `config.model` (ViT for `modality="image"`, Whisper-style encoder
for `"audio"`; LoRA in the LLM with `model.llm.lora_rank > 0`). Its param groups are `encoder`, `projector`,
`llm` and `lora`, so `config.optim.groups.<group>` can give each its own schedule or freeze it.
Data (`config.data.source`): the embedded text-rich image QA (`textvqa`), the embedded audio QA (`audioqa`),
a LLaVA conversation JSON + image folder (`llava_json`), or a prepared TFDS dataset (`tfds`), all tokenised by
`jaxmm.data.ConversationFormatter` with the byte tokenizer (or an HF tokenizer via `data.tokenizer`).
LLaVA-JSON records are checked when the run starts (lengths against `data.max_len` / `max_prompt_len`, images
against `data.llava_json.max_aspect_ratio` / `max_pixels`); a bad one stops the run naming the file, record and
reason, or with `data.llava_json.skip_bad_records=True` is dropped and counted in summary.json
(`data_skipped/train`, `data_skipped/train/<reason>`, the same for eval; written with the eval results).
Loss: answer-token cross-entropy (`loss_mask`). Eval: per-row loss and greedy-generation exact match of the
answer (stops at EOS), logged as `eval_loss` / `eval_accuracy`.

Other tasks (CoMMIT) subclass `MLLMQATask` and override `hooks` / `loss_fn`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from train.task import Task
from train.tasks import register


def _defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        modality="image", projector="mlp2x_gelu",
        llm=dict(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128, tie_embeddings=True,
                 lora_rank=0, lora_alpha=16.0),
        vit=dict(image_size=48, patch_size=8, d_model=64, num_layers=2, num_heads=4, mlp_dim=128,
                 feature_layer=-1, lora_rank=0),
        audio=dict(n_mels=80, max_frames=100, d_model=64, num_layers=2, num_heads=4, mlp_dim=128, pool=2,
                   lora_rank=0))
    c.data = dict(
        source="textvqa", train_examples=4000, eval_examples=256, max_len=56, max_prompt_len=48,
        max_answer_len=8, cache=True, tokenizer="",
        textvqa=dict(max_words=3, kinds=("read", "red", "top", "count"), font_sizes=(12, 18)),
        audioqa=dict(max_digits=4, duration=1.0, kinds=("digit", "count", "sequence"), noise=0.02),
        llava_json=dict(train_json="", eval_json="", image_folder="", skip_bad_records=False,
                        max_aspect_ratio=20.0, max_pixels=64_000_000),
        tfds=dict(name="", data_dir="", train_split="train", eval_split="test", image_key="image",
                  question="What is shown in the image?", answer_key="label"))
    c.task_args = dict(eval_generate=True, max_new_tokens=0)
    return c


def tokenizer(config):
    from jaxmm.data import ByteTokenizer, HFTokenizer

    return HFTokenizer(config.data.tokenizer) if config.data.tokenizer else ByteTokenizer()


def _numeric(example: dict) -> dict:
    """Drop string fields (the reference answer text): batches hold only arrays."""
    return {k: v for k, v in example.items() if np.asarray(v).dtype.kind in "biuf"}


def _sources(config, fmt=None, fmt_eval=None):
    """(train, eval or None) sources; `fmt` / `fmt_eval` let the LLaVA-JSON source check record lengths."""
    from jaxmm import data as D

    d, m = config.data, config.model
    if d.source == "textvqa":
        kw = dict(image_size=m.vit.image_size, **d.textvqa)
        return (D.TextVQA(d.train_examples, seed=config.seed, split="train", **kw),
                D.TextVQA(d.eval_examples, seed=config.seed, split="eval", **kw))
    if d.source == "audioqa":
        kw = dict(n_mels=m.audio.n_mels, **d.audioqa)
        return (D.AudioQA(d.train_examples, seed=config.seed, split="train", **kw),
                D.AudioQA(d.eval_examples, seed=config.seed, split="eval", **kw))
    if d.source == "llava_json":
        j = d.llava_json
        kw = dict(image_size=m.vit.image_size, skip_bad_records=j.skip_bad_records,
                  max_aspect_ratio=j.max_aspect_ratio, max_pixels=j.max_pixels)
        train = D.LlavaJsonSource(j.train_json, j.image_folder or None, formatter=fmt, **kw)
        evals = (D.LlavaJsonSource(j.eval_json, j.image_folder or None, formatter=fmt_eval, **kw)
                 if j.eval_json else None)
        return train, evals
    if d.source == "tfds":
        t = d.tfds
        kw = dict(data_dir=t.data_dir or None, image_key=t.image_key or None, question=t.question,
                  answer_key=t.answer_key, image_size=m.vit.image_size)
        return (D.TFDSSource(t.name, split=t.train_split, **kw),
                D.TFDSSource(t.name, split=t.eval_split, **kw) if t.eval_split else None)
    raise ValueError(f"config.data.source: expected textvqa, audioqa, llava_json or tfds, got {d.source!r}")


class MLLMQATask(Task):
    metric = "eval_accuracy"

    def default_config(self):
        return _defaults()

    # ------------------------------------------------------------------ model
    def build_model(self, config):
        from jaxmm.models.audio import AudioConfig
        from jaxmm.models.llm import LLMConfig
        from jaxmm.models.mllm import MLLM, MLLMConfig
        from jaxmm.models.vit import ViTConfig

        m, tok = config.model, tokenizer(config)
        # eval settings used by eval_metrics (the loop builds the model once per run)
        self._tok, self._max_new_tokens = tok, config.task_args.max_new_tokens
        self._generate = config.task_args.eval_generate
        self._kind_names = self._kinds(config)
        dtype = jnp.bfloat16 if config.train.compute_dtype == "bfloat16" else None
        common = dict(dtype=dtype, remat=config.train.remat)
        llm = LLMConfig(vocab_size=tok.vocab_size, **m.llm, **common)
        enc = dict(vit=ViTConfig(**m.vit, **common)) if m.modality == "image" else dict(
            audio=AudioConfig(**m.audio, **common))
        return MLLM(MLLMConfig(llm=llm, placeholder_id=getattr(tok, f"{m.modality}_id"), modality=m.modality,
                               projector=m.projector, **enc))

    @staticmethod
    def media(model, batch):
        x = batch[model.config.modality]
        if x.dtype == jnp.uint8:  # images: [0, 255] -> [-1, 1]
            x = x.astype(jnp.float32) / 127.5 - 1.0
        return x

    def init_variables(self, model, batch, rng):
        return model.init(rng, jnp.asarray(batch["input_ids"]), self.media(model, batch),
                          jnp.asarray(batch["attention_mask"]))

    # ------------------------------------------------------------------ data
    def datasets(self, config):
        import grain

        from jaxmm.data import CachedSource, ConversationFormatter

        d, tok = config.data, tokenizer(config)
        fmt = ConversationFormatter(tok, max_len=d.max_len)
        kinds = self._kinds(config)
        fmt_eval = ConversationFormatter(tok, max_len=d.max_len, eval=True, max_prompt_len=d.max_prompt_len,
                                         max_answer_len=d.max_answer_len, keep=("kind_id",) if kinds else ())
        train_src, eval_src = _sources(config, fmt, fmt_eval)
        self._skipped = self.skipped_records(train_src, eval_src)
        wrap = CachedSource if d.cache else (lambda s: s)
        train = grain.MapDataset.source(wrap(train_src)).map(fmt).map(_numeric)
        if eval_src is None:
            return train, None
        with_kind = (lambda ex: {**ex, "kind_id": np.int32(kinds.index(ex["kind"]))}) if kinds else (lambda ex: ex)
        evals = grain.MapDataset.source(wrap(eval_src)).map(with_kind).map(fmt_eval).map(_numeric)
        return train, evals

    @staticmethod
    def skipped_records(train_src, eval_src) -> dict:
        """Bad records a source dropped (LLaVA-JSON with `skip_bad_records`), as summary fields:
        `data_skipped/train` (count) and `data_skipped/train/<reason kind>`, the same for eval."""
        out = {}
        for split, src in (("train", train_src), ("eval", eval_src)):
            if hasattr(src, "skipped"):
                out[f"data_skipped/{split}"] = float(src.num_skipped)
                out.update({f"data_skipped/{split}/{k}": float(n) for k, n in src.skipped.items()})
        return out

    @staticmethod
    def _kinds(config) -> tuple:
        """Question kinds of the embedded sets (eval accuracy is also reported per kind)."""
        if config.data.source == "textvqa":
            from jaxmm.data.textvqa import KINDS
        elif config.data.source == "audioqa":
            from jaxmm.data.audioqa import KINDS
        else:
            return ()
        return tuple(KINDS)

    # ------------------------------------------------------------------ loss and eval
    def token_losses(self, model, params, batch, rng=None):
        """Per-row mean answer-token cross-entropy [B] and the answer-token counts [B]."""
        rngs = None if rng is None else {"dropout": rng}
        logits = model.apply({"params": params}, batch["input_ids"], self.media(model, batch),
                             batch["attention_mask"], deterministic=rng is None, rngs=rngs)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32),
                                                             batch["input_ids"][:, 1:])
        w = batch["loss_mask"][:, 1:].astype(jnp.float32)
        n = jnp.sum(w, axis=1)
        return jnp.sum(ce * w, axis=1) / jnp.maximum(n, 1.0), n

    def loss_fn(self, model, params, batch, rng):
        per_row, n = self.token_losses(model, params, batch)
        loss = jnp.sum(per_row * n) / jnp.maximum(jnp.sum(n), 1.0)  # mean over answer tokens
        return loss, {}

    def eval_metrics(self, model, params, batch):
        per_row, _ = self.token_losses(model, params, batch)
        out = {"loss": per_row}
        if self._generate and "prompt_ids" in batch:
            out["accuracy"] = hit = self.exact_match(model, params, batch)
            for i, kind in enumerate(self._kind_names if "kind_id" in batch else ()):
                is_kind = (batch["kind_id"] == i).astype(jnp.float32)
                out[f"_hit/{kind}"], out[f"_n/{kind}"] = hit * is_kind, is_kind
        return out

    def evaluate(self, ctx):
        out = ctx.default_evaluate()
        out.update(getattr(self, "_skipped", {}))  # reaches summary.json (the loop's summary holds eval_out)
        for kind in self._kind_names:  # per-kind accuracy from the row sums
            hit, n = out.pop(f"eval__hit/{kind}", None), out.pop(f"eval__n/{kind}", 0.0)
            if n:
                out[f"eval_accuracy/{kind}"] = hit / n
        return out

    def exact_match(self, model, params, batch):
        """1.0 where greedy generation (up to EOS) equals the reference answer tokens."""
        from jaxmm.models.mllm import generate

        tok = self._tok
        answer = batch["answer_ids"]
        steps = self._max_new_tokens or answer.shape[1] + 1
        new = generate(model, params, batch["prompt_ids"], batch["prompt_mask"], self.media(model, batch),
                       max_new_tokens=steps, eos_id=tok.eos_id, pad_id=tok.pad_id)
        done = jnp.cumsum(new == tok.eos_id, axis=1) > 0  # at and after the first EOS
        pred = jnp.where(done, tok.pad_id, new)
        ref = jnp.full(pred.shape, tok.pad_id, pred.dtype).at[:, :min(answer.shape[1], steps)].set(
            answer[:, :steps])
        return jnp.all(pred == ref, axis=1).astype(jnp.float32)


register("mllm.qa")(MLLMQATask())
