"""`mllm.qa`: supervised instruction tuning of a LLaVA-style MLLM (encoder -> projector -> LLM) on
conversation data, evaluated by answer-token loss and generation exact-match accuracy.

Model: `jaxmm.models.mllm.MLLM` built from `config.model`: the encoder named by `model.encoder` (registered in
`jaxmm.models.encoders`: "vit", "audio" (Whisper-style), ...; its settings in `model.<encoder>`); LoRA in the
LLM with `model.llm.lora_rank > 0`. Its param groups are `encoder`, `projector`,
`llm` and `lora`, so `config.optim.groups.<group>` can give each its own schedule or freeze it.
Data (`config.data.source`, registered in `jaxmm.data.sources`; its settings in `data.<source>`): the embedded
text-rich image QA (`textvqa`), the embedded audio QA (`audioqa`), a LLaVA conversation JSON + image folder
(`llava_json`), a prepared TFDS dataset (`tfds`), or any source a paper registers, all tokenised by
`jaxmm.data.ConversationFormatter` with the byte tokenizer (or an HF tokenizer via `data.tokenizer`).
LLaVA-JSON records are checked when the run starts (lengths against `data.max_len` / `max_prompt_len`; image
files when read, or at the start with `data.llava_json.check_files="startup"`, against
`data.llava_json.max_aspect_ratio` / `max_pixels`); a bad one stops the run naming the file, record and
reason, or with `data.llava_json.skip_bad_records=True` is dropped and counted in summary.json
(`data_skipped/train`, `data_skipped/train/<reason>`, the same for eval; also in a run without an eval set).
File-backed sources (llava_json, tfds) are decoded in `data.worker_count` grain worker processes (0 = in the
training process) and never cached (`data.cache` caches only the procedural sets).

Pretrained weights (`model.init`, all empty by default): `init.encoder=<HF folder>` (CLIP / SigLIP vision,
Whisper encoder) and `init.llm=<HF folder>` (Llama, Mistral, Qwen2) take the part's shape settings from the
folder's config.json (a differing explicit `model.<encoder>` / `model.llm` value is an error naming both) and its
weights; image preprocessing follows the encoder folder's preprocessor_config.json (mean/std on device, pad colour,
resize and crop in the LLaVA-JSON loader); the tokenizer defaults to the LLM folder's. `init.from_workdir=
<jaxmm workdir>:<group>[,<group>]` then takes param groups (encoder, projector, llm) from an earlier run's newest
checkpoint (read-only). All through `jaxmm.hf.init` and `train.checkpoint.params_from_workdir`.
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

from train.task import Datasets, Task
from train.tasks import register


def _defaults() -> ml_collections.ConfigDict:
    """The schema: one `model.<encoder>` section per registered encoder and one `data.<source>` section per
    registered data source (jaxmm.models.encoders / jaxmm.data.sources), with their defaults."""
    from jaxmm.data import sources
    from jaxmm.hf import init as hf_init
    from jaxmm.models import encoders

    c = ml_collections.ConfigDict()
    c.model = dict(
        encoder="vit", projector="mlp2x_gelu", init=dict(encoder="", llm="", from_workdir=""),
        llm=dict(hf_init.MLLM_LLM_DEFAULTS),
        **{name: dict(e.defaults) for name, e in encoders.ENCODERS.items()})
    c.data = dict(
        source="textvqa", train_examples=4000, eval_examples=256, max_len=56, max_prompt_len=48,
        max_answer_len=8, cache=True, tokenizer="", worker_count=0, worker_buffer_size=2,
        **{name: dict(s.defaults) for name, s in sources.SOURCES.items()})
    c.task_args = dict(eval_generate=True, max_new_tokens=0)
    return c


def tokenizer(config):
    """The run's tokenizer (`jaxmm.hf.init.tokenizer_path`: data.tokenizer, else the model.init.llm folder's,
    else bytes)."""
    from jaxmm.data import ByteTokenizer, HFTokenizer
    from jaxmm.hf.init import tokenizer_path

    path = tokenizer_path(config)
    return HFTokenizer(path) if path else ByteTokenizer()


def numeric_fields(example: dict) -> dict:
    """The example without its non-numeric fields (the reference answer text, the kind name): the last map of a
    task's pipeline, so batches hold only arrays (LaRA's pipelines end with it too)."""
    return {k: v for k, v in example.items() if np.asarray(v).dtype.kind in "biuf"}


def _sources(config, fmt=None, fmt_eval=None):
    """(train, eval or None) sources of the registered source `config.data.source`; `fmt` / `fmt_eval` let a
    source check record lengths (LLaVA-JSON)."""
    from jaxmm.data import sources

    d, m = config.data, config.model
    src = sources.get(d.source)
    args = d[d.source].to_dict() if d.source in d else {}
    if m.init.encoder:
        import dataclasses

        from jaxmm.hf import init as hf_init

        cfg = hf_init.mllm_encoder_config(config)
        enc_args = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        enc_args["image_processor"] = hf_init.mllm_image_processor(config)
    else:
        enc_args = m[m.encoder].to_dict() if m.encoder in m else {}
    common = dict(seed=config.seed, encoder_args=enc_args)
    return (src.build(args, split="train", examples=d.train_examples, formatter=fmt, **common),
            src.build(args, split="eval", examples=d.eval_examples, formatter=fmt_eval, **common))


class MLLMQATask(Task):
    metric = "eval_accuracy"

    def __init__(self, config=None):
        super().__init__(config)
        if config is not None:  # this run's eval settings (read-only; the object lives for one run)
            self.tok = tokenizer(config)
            self.max_new_tokens = config.task_args.max_new_tokens
            self.eval_generate = config.task_args.eval_generate
            self.kind_names = self.kinds(config)
            from jaxmm.hf.init import mllm_image_processor

            self.processor = mllm_image_processor(config)

    def default_config(self):
        return _defaults()

    # ------------------------------------------------------------------ model
    def build_model(self, config):
        from jaxmm.hf.init import build_mllm

        return build_mllm(config, tokenizer(config))

    def initial_params(self, params):
        """Pretrained weights of `model.init` (HF folders first, then groups of an earlier run's checkpoint)."""
        from jaxmm.hf import init as hf_init
        from train.checkpoint import params_from_workdir

        m = self.config.model
        if m.init.encoder or m.init.llm:
            cfg = self.build_model(self.config).config
            if m.init.encoder:
                params = hf_init.load_group(params, "encoder", m.init.encoder, cfg.encoder_config)
            if m.init.llm:
                params = hf_init.load_group(params, "llm", m.init.llm, cfg.llm)
        if m.init.from_workdir:
            params = params_from_workdir(params, m.init.from_workdir)
        return params

    processor = None  # the schema-only object has none

    def media(self, model, batch):
        x = batch[model.config.modality]
        if x.dtype == jnp.uint8:  # images: the HF folder's rescale + mean/std, else [0, 255] -> [-1, 1]
            proc = self.processor
            x = proc.normalize(x, xp=jnp) if proc is not None else x.astype(jnp.float32) / 127.5 - 1.0
        return x

    def init_variables(self, model, batch, rng):
        return model.init(rng, jnp.asarray(batch["input_ids"]), self.media(model, batch),
                          jnp.asarray(batch["attention_mask"]))

    # ------------------------------------------------------------------ data
    def datasets(self, config):
        import grain

        from jaxmm.data import CachedSource, ConversationFormatter, sources

        d, tok = config.data, tokenizer(config)
        fmt = ConversationFormatter(tok, max_len=d.max_len)
        kinds = self.kinds(config)
        fmt_eval = ConversationFormatter(tok, max_len=d.max_len, eval=True, max_prompt_len=d.max_prompt_len,
                                         max_answer_len=d.max_answer_len, keep=("kind_id",) if kinds else ())
        train_src, eval_src = _sources(config, fmt, fmt_eval)
        skipped = self.skipped_records(train_src, eval_src)  # -> summary.json, with or without an eval set
        wrap = CachedSource if d.cache and sources.get(d.source).cacheable else (lambda s: s)  # not file-backed
        train = grain.MapDataset.source(wrap(train_src)).map(fmt).map(numeric_fields)
        if eval_src is None:
            return Datasets(train, None, skipped)
        with_kind = (lambda ex: {**ex, "kind_id": np.int32(kinds.index(ex["kind"]))}) if kinds else (lambda ex: ex)
        evals = grain.MapDataset.source(wrap(eval_src)).map(with_kind).map(fmt_eval).map(numeric_fields)
        return Datasets(train, evals, skipped)

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
    def kinds(config) -> tuple:
        """Question kinds of the source (eval accuracy is also reported per kind)."""
        from jaxmm.data import sources

        return tuple(sources.get(config.data.source).kinds)

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

    def loss_fn(self, model, params, batch, rng, extra=None):
        per_row, n = self.token_losses(model, params, batch)
        loss = jnp.sum(per_row * n) / jnp.maximum(jnp.sum(n), 1.0)  # mean over answer tokens
        return loss, {}

    def eval_metrics(self, model, params, batch):
        per_row, _ = self.token_losses(model, params, batch)
        out = {"loss": per_row}
        if self.eval_generate and "prompt_ids" in batch:
            out["accuracy"] = hit = self.exact_match(model, params, batch)
            for i, kind in enumerate(self.kind_names if "kind_id" in batch else ()):
                is_kind = (batch["kind_id"] == i).astype(jnp.float32)
                out[f"_hit/{kind}"], out[f"_n/{kind}"] = hit * is_kind, is_kind
        return out

    def evaluate(self, ctx):
        out = ctx.default_evaluate()
        for kind in self.kind_names:  # per-kind accuracy from the row sums
            hit, n = out.pop(f"eval__hit/{kind}", None), out.pop(f"eval__n/{kind}", 0.0)
            if n:
                out[f"eval_accuracy/{kind}"] = hit / n
        return out

    def greedy_answers(self, model, params, batch):
        """Greedy generation from the prompts [B, steps], pad from the first EOS on."""
        from jaxmm.models.mllm import generate

        tok = self.tok
        steps = self.max_new_tokens or batch["answer_ids"].shape[1] + 1
        new = generate(model, params, batch["prompt_ids"], batch["prompt_mask"], self.media(model, batch),
                       max_new_tokens=steps, eos_id=tok.eos_id, pad_id=tok.pad_id)
        done = jnp.cumsum(new == tok.eos_id, axis=1) > 0  # at and after the first EOS
        return jnp.where(done, tok.pad_id, new)

    def exact_match(self, model, params, batch):
        """1.0 where greedy generation (up to EOS) equals the reference answer tokens."""
        answer, pred = batch["answer_ids"], self.greedy_answers(model, params, batch)
        steps = pred.shape[1]
        ref = jnp.full(pred.shape, self.tok.pad_id, pred.dtype).at[:, :min(answer.shape[1], steps)].set(
            answer[:, :steps])
        return jnp.all(pred == ref, axis=1).astype(jnp.float32)

    # ------------------------------------------------------------------ TensorBoard eval samples (train/tensorboard.py)
    def sample_outputs(self, model, params, batch):
        return {"answer": self.greedy_answers(model, params, batch)} if "prompt_ids" in batch else {}

    def sample_text(self, batch, outputs) -> list[str]:
        """'<question> -> <greedy answer> (ref: <reference>)' per row."""
        if "answer" not in outputs:
            return [self.tok.decode(ids).strip() for ids in batch["input_ids"]]
        return [f"{self.tok.decode(q).strip()} -> {self.tok.decode(a).strip()!r} "
                f"(ref: {self.tok.decode(r).strip()!r})"
                for q, a, r in zip(batch["prompt_ids"], outputs["answer"], batch["answer_ids"])]


register("mllm.qa")(MLLMQATask)
