"""`lara`: LaRA (TRINS, arXiv 2406.06730; PAPERS.md §9): a reading-capable MLLM whose prompt carries the page's OCR
words as text tokens beside the visual tokens of a frozen low-resolution encoder, trained on a TRINS-style mix of
VQA and caption-instruction data, and evaluated on TRINS-Cap, TRINS-VQA and a non-text VQA set.

Model: `mllm.qa`'s (`jaxmm.models.mllm.MLLM`: encoder -> projector -> LLM; LoRA with `model.llm.lora_rank`); the
OCR component is not a network: `jaxmm.data.lara` runs an OCR engine on the full-resolution page and puts its text
in the user turn (`jaxmm.data.ocr_text`, shared with LLaVA-Read: [image] [OCR text] [instruction]). The encoder is
initialised from an HF folder (`model.init.encoder`) or an earlier run (`model.init.from_workdir=<run>:encoder`) and
frozen with `optim.groups.encoder.frozen=True` (the configs do; the `*_tuned` ablation does not).
Data: the `lara` source (registered here; settings `data.lara.*`: ocr none/oracle/rapidocr, layout, ocr_budget,
pages, caption_fraction, ...) with task "mix" for training.

Evaluation (`evaluate`, at the end of the run and every `train.eval_every` steps), greedy decoding
(`jaxmm.models.mllm.generate`, temperature 0) on three sets of eval-split pages (never trained on):
  TRINS-VQA   `data.eval_examples` reading questions: eval_trins_vqa_exact / _contains (jaxmm.metrics.vqa_score,
              the official VQA normalisation) and per question kind eval_trins_vqa_exact/<kind>
  non-text    `task_args.visual_examples` questions about colours, shapes and the kind of page: eval_visual_exact /
              _contains (general ability: should not drop when OCR is added)
  TRINS-Cap   `task_args.caption_examples` captions of up to `task_args.caption_tokens` new tokens:
              eval_trins_cap_<BLEU-4 | METEOR | ROUGE-L | CIDEr> (jaxmm.metrics.caption_scores; tokenizer
              `task_args.caption_tokenizer`, "ptb" = the COCO protocol; METEOR and PTB need Java)
plus eval_loss (answer-token loss on the TRINS-VQA set). The headline metric is eval_trins_vqa_contains.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from train.task import Datasets
from train.tasks import register
from train.tasks.mllm import MLLMQATask, numeric_fields, tokenizer

BENCHMARKS = ("trins_vqa", "visual", "trins_cap")
_BENCH_TASK = {"trins_vqa": "vqa", "visual": "visual", "trins_cap": "caption"}


# ------------------------------------------------------------------------------------------------ the data source
def _lara_source(args, *, split, examples, seed, encoder_args, formatter=None):
    from jaxmm.data.lara import LaraData

    args = dict(args)
    if split != "train" and args.get("task") == "mix":
        args["task"] = "vqa"
    pages = {s: args.pop(f"{s}_pages") for s in ("train", "eval")}
    args["pages"] = pages["train" if split == "train" else "eval"]
    args["ocr_cache"] = args.pop("ocr_cache") or None
    args["max_words"] = args.pop("max_words") or None
    return LaraData(examples, split=split, image_size=encoder_args["image_size"],
                    tokenizer=getattr(formatter, "tok", None), **args)


def _register_source() -> None:
    from jaxmm.data import lara, sources

    if "lara" not in sources.SOURCES:
        sources.register(sources.Source(
            "lara", _lara_source, kinds=lara.KINDS, cacheable=True,
            defaults=dict(task="mix", data_seed=0, train_pages=256, eval_pages=64, caption_fraction=0.3,
                          page_kinds=lara.DEFAULT_PAGE_KINDS, ocr="oracle", layout=False, width=48, max_words=0,
                          ocr_budget=160, ocr_cache="")))


_register_source()


# ------------------------------------------------------------------------------------------------ scoring
def decode_rows(tok, ids, valid=None) -> list[str]:
    """Token rows [B, T] -> stripped strings (special ids and padding dropped), only the rows where valid != 0."""
    ids = np.asarray(ids)
    keep = range(len(ids)) if valid is None else np.flatnonzero(np.asarray(valid))
    return [tok.decode(ids[i]).strip() for i in keep]


def vqa_scores(predictions, answers, kinds=None) -> dict:
    """{"exact", "contains"} accuracies (jaxmm.metrics.vqa_score) over the questions, and with `kinds` (one name per
    question) "exact/<kind>" for each kind present."""
    from jaxmm.metrics import vqa_score

    exact = np.array([vqa_score(p, a, mode="exact") for p, a in zip(predictions, answers)])
    contains = np.array([vqa_score(p, a, mode="contains") for p, a in zip(predictions, answers)])
    out = {"exact": float(exact.mean()), "contains": float(contains.mean())}
    for kind in sorted(set(kinds or ())):
        rows = np.array([k == kind for k in kinds])
        out[f"exact/{kind}"] = float(exact[rows].mean())
    return out


def generated_texts(batches, answer_fn, tok):
    """The evaluation loop: for each (batch, valid) the generated answer ids `answer_fn(batch)` [B, T] and the
    reference `batch["answer_ids"]`, decoded; returns (predictions, references, kind ids) of the valid rows."""
    preds, refs, kind_ids = [], [], []
    for batch, valid in batches:
        preds += decode_rows(tok, answer_fn(batch), valid)
        refs += decode_rows(tok, batch["answer_ids"], valid)
        if "kind_id" in batch:
            kind_ids += [int(k) for k, v in zip(np.asarray(batch["kind_id"]), np.asarray(valid)) if v]
    return preds, refs, kind_ids


def llava_read_scores(workdir: str, *, examples: int = 96, seed: int = 0, engine: str = "oracle",
                      ocr_cache: str = "", batch_size: int = 32) -> dict:
    """A finished LaRA run (`workdir`: config.json + checkpoints/) scored on LLaVA-Read's eval questions: the
    same `LlavaReadSource(examples, seed=seed, split="eval")` set that configs/llava_read.py's rows use (reading
    kinds key_value / price / above / read_at from `textrich.page_questions`, split into "small" / "large" text;
    all six page kinds, documents included, which LaRA never trains on), re-rendered for the LaRA model: its
    image size (`square_view`, as in training), its tokenizer and OCR budget, its OCR mode (none / words in
    reading order / layout canvas) read by `engine` ("oracle" or "rapidocr"), and the prompt order both share
    (`jaxmm.data.ocr_text.ocr_prompt`). Greedy answers through `LaraTask.greedy_answers` and `generated_texts`;
    scores by `vqa_scores` (exact / contains / exact per size) plus "strict" (answer text identical, which is
    what LLaVA-Read's eval_accuracy counts: its greedy tokens equal the answer's). Returns the scores with
    "preds" and "refs"."""
    import json
    import os

    import ml_collections

    from jaxmm.chat import load_workdir
    from jaxmm.data import ConversationFormatter
    from jaxmm.data.llava_read import SIZE_KINDS, LlavaReadSource
    from train import tasks
    from train.loop import eval_batches

    session = load_workdir(workdir)
    saved = json.load(open(os.path.join(workdir, "config.json")))
    saved.get("task_args", {}).pop("word_tokenizer", None)   # runs made before configs/lara_bpe carry this key
    config = tasks.full_config(ml_collections.ConfigDict(saved))
    task = LaraTask(config)
    d, lr = config.data, config.data.lara
    ocr = "none" if lr.ocr == "none" else ("layout" if lr.layout else "plain")
    src = LlavaReadSource(examples, seed=seed, split="eval", image_size=session.image_size, ocr=ocr, engine=engine,
                          width=lr.width, budget=lr.ocr_budget, ocr_cache=ocr_cache, tokenizer=session.tok)
    fmt = ConversationFormatter(session.tok, max_len=d.max_len, eval=True, max_prompt_len=d.max_prompt_len,
                                max_answer_len=d.max_answer_len)
    exs = [src[i] for i in range(examples)]   # each page rendered (and OCR-read) once
    rows = [numeric_fields({**fmt(e), "kind_id": np.int32(SIZE_KINDS.index(e["kind"]))}) for e in exs]
    answer_fn = lambda b: task.greedy_answers(session.model, session.params, b, d.max_answer_len + 1)  # noqa: E731
    preds, refs, kind_ids = generated_texts(eval_batches(rows, batch_size, examples), answer_fn, session.tok)
    out = vqa_scores(preds, refs, [SIZE_KINDS[k] for k in kind_ids])
    out["strict"] = float(np.mean([p.strip() == r.strip() for p, r in zip(preds, refs)]))
    return {**out, "preds": preds, "refs": refs}


# ------------------------------------------------------------------------------------------------ the task
class LaraTask(MLLMQATask):
    metric = "eval_trins_vqa_contains"

    def default_config(self):
        c = super().default_config()
        c.data.source = "lara"
        c.data.update(max_len=640, max_prompt_len=256, max_answer_len=24)
        c.task_args.update(eval_generate=False, visual_examples=64, caption_examples=32, caption_tokens=480,
                           caption_tokenizer="ptb", caption_metrics=("bleu", "meteor", "rouge", "cider"))
        return c

    def benchmark(self, config, name: str):
        """The formatted eval-split set of benchmark `name` (BENCHMARKS), or None when it has no examples."""
        import grain

        from jaxmm.data import ConversationFormatter, lara

        d, ta = config.data, config.task_args
        n = {"trins_vqa": d.eval_examples, "visual": ta.visual_examples, "trins_cap": ta.caption_examples}[name]
        if not n:
            return None
        caption = name == "trins_cap"
        fmt = ConversationFormatter(tokenizer(config), max_len=d.max_len + (ta.caption_tokens if caption else 0),
                                    eval=True, max_prompt_len=d.max_prompt_len,
                                    max_answer_len=ta.caption_tokens if caption else d.max_answer_len,
                                    keep=("kind_id",))
        args = {**d.lara.to_dict(), "task": _BENCH_TASK[name]}
        src = _lara_source(args, split="eval", examples=n, seed=config.seed, encoder_args=self._encoder_args(config),
                           formatter=fmt)
        with_kind = lambda ex: {**ex, "kind_id": np.int32(lara.KINDS.index(ex["kind"]))}
        return grain.MapDataset.source(src).map(with_kind).map(fmt).map(numeric_fields)

    @staticmethod
    def _encoder_args(config):
        from jaxmm.hf.init import mllm_encoder_config

        return {"image_size": mllm_encoder_config(config).image_size}

    def datasets(self, config):
        if config.data.source != "lara":   # any mllm.qa source trains; the benchmarks stay LaRA's
            return super().datasets(config)
        import grain

        from jaxmm.data import CachedSource, ConversationFormatter

        d, tok = config.data, tokenizer(config)
        fmt = ConversationFormatter(tok, max_len=d.max_len)
        train_src = _lara_source(d.lara.to_dict(), split="train", examples=d.train_examples, seed=config.seed,
                                 encoder_args=self._encoder_args(config), formatter=fmt)
        train = grain.MapDataset.source(CachedSource(train_src) if d.cache else train_src).map(fmt).map(numeric_fields)
        evals = self.benchmark(config, "trins_vqa")
        return Datasets(train, evals)

    def eval_metrics(self, model, params, batch):
        per_row, _ = self.token_losses(model, params, batch)
        return {"loss": per_row}

    def _batches(self, ctx, data):
        from train import sharding as shard_lib
        from train.loop import eval_batches, loader_options

        for local, valid in eval_batches(data, self.config.train.eval_batch_size, 0, **loader_options(self.config)):
            yield shard_lib.global_batch(local, ctx.mesh), np.asarray(valid)

    def evaluate(self, ctx):
        from jaxmm.data import lara
        from jaxmm.metrics import caption_scores

        out = ctx.default_evaluate()   # eval_loss on the TRINS-VQA set
        params, model, ta = ctx.state.params, ctx.model, self.config.task_args
        for name in BENCHMARKS:
            data = ctx.eval_data if name == "trins_vqa" else self.benchmark(self.config, name)
            if data is None:
                continue
            caption = name == "trins_cap"
            steps = ta.caption_tokens if caption else self.config.data.max_answer_len + 1
            answer_fn = lambda b, steps=steps: self.greedy_answers(model, params, b, steps)
            preds, refs, kind_ids = generated_texts(self._batches(ctx, data), answer_fn, self.tok)
            if caption:
                scores = caption_scores(dict(enumerate(preds)), {i: [r] for i, r in enumerate(refs)},
                                        metrics=tuple(ta.caption_metrics), tokenizer=ta.caption_tokenizer)
                out.update({f"eval_trins_cap_{k}": v for k, v in scores.items()})
                out["eval_trins_cap_words"] = float(np.mean([len(p.split()) for p in preds]))
            else:
                kinds = [lara.KINDS[k] for k in kind_ids]
                out.update({f"eval_{name}_{k}": v for k, v in vqa_scores(preds, refs, kinds).items()})
        return out

    def greedy_answers(self, model, params, batch, steps=None):
        """Greedy generation [B, steps] (pad from the first EOS on)."""
        from jaxmm.models.mllm import generate

        tok = self.tok
        steps = steps or self.max_new_tokens or batch["answer_ids"].shape[1] + 1
        new = generate(model, params, batch["prompt_ids"], batch["prompt_mask"], self.media(model, batch),
                       max_new_tokens=steps, eos_id=tok.eos_id, pad_id=tok.pad_id)
        done = jnp.cumsum(new == tok.eos_id, axis=1) > 0
        return jnp.where(done, tok.pad_id, new)


register("lara")(LaraTask)


if __name__ == "__main__":   # python -m train.tasks.lara <workdir> [oracle|rapidocr]: llava_read_scores as JSON
    import json
    import sys

    res = llava_read_scores(sys.argv[1], engine=sys.argv[2] if len(sys.argv) > 2 else "oracle")
    print(json.dumps({k: v for k, v in res.items() if k not in ("preds", "refs")}, sort_keys=True))
