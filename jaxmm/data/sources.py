"""Registry of data sources: a paper adds a data set by registering it from its own module, with no edit to the
trainer's tasks.

    from jaxmm.data import sources
    sources.register(sources.Source(
        "mydata", lambda args, *, split, examples, seed, encoder_args, formatter=None: MyData(split, **args),
        defaults=dict(path=""), kinds=()))

`build(args, *, split, examples, seed, encoder_args, formatter=None)` returns a random-access source
(`__len__`/`__getitem__` of dict examples) for `split` ("train" | "eval"), or None when there is no such split:
  args          the trainer's `config.data.<name>` section (keys and defaults: `defaults`);
  examples      `config.data.train_examples` / `eval_examples` (procedural sets; others may ignore it);
  encoder_args  the selected encoder's config section (`image_size`, `n_mels`, ... to match the model's input;
                from an HF folder (`model.init.encoder`) its resolved settings, and `image_processor`: the
                folder's `jaxmm.hf.preprocess.ImageProcessor` or None);
  formatter     the conversation formatter of that split (a source may check record lengths with it).
`kinds`: question kinds of the set (examples carry "kind"; eval accuracy is reported per kind).
`cacheable`: a small procedural set the trainer may keep in RAM once made (`data.cache`); False for sources that
read files (LLaVA-JSON, TFDS, and future OCR / diffusion folders): they are decoded on every read, in grain
worker processes with `data.worker_count > 0`, and never cached whole.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxmm.registry import Registry


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    build: Callable[..., Any]
    defaults: dict = dataclasses.field(default_factory=dict)
    kinds: tuple = ()
    cacheable: bool = False


SOURCES = Registry("data source", "source")
register, get = SOURCES.register, SOURCES.get


# ------------------------------------------------------------------------------------------- built-in sources
def _image_size(encoder_args) -> dict:
    return {"image_size": encoder_args["image_size"]} if "image_size" in encoder_args else {}


def _textvqa(args, *, split, examples, seed, encoder_args, formatter=None):
    from jaxmm.data.textvqa import TextVQA

    return TextVQA(examples, seed=seed, split=split, image_size=encoder_args["image_size"], **args)


def _audioqa(args, *, split, examples, seed, encoder_args, formatter=None):
    from jaxmm.data.audioqa import AudioQA

    return AudioQA(examples, seed=seed, split=split, n_mels=encoder_args["n_mels"], **args)


def _llava_json(args, *, split, examples, seed, encoder_args, formatter=None):
    from jaxmm.data.llava_json import LlavaJsonSource

    path = args["train_json"] if split == "train" else args["eval_json"]
    if not path and split == "eval":
        return None
    return LlavaJsonSource(path, args["image_folder"] or None, formatter=formatter, check_files=args["check_files"],
                           skip_bad_records=args["skip_bad_records"], max_aspect_ratio=args["max_aspect_ratio"],
                           max_pixels=args["max_pixels"], processor=encoder_args.get("image_processor"),
                           **_image_size(encoder_args))


def _tfds(args, *, split, examples, seed, encoder_args, formatter=None):
    from jaxmm.data.tfds import TFDSSource

    name = args["train_split"] if split == "train" else args["eval_split"]
    if not name:
        return None
    return TFDSSource(args["name"], split=name, data_dir=args["data_dir"] or None,
                      image_key=args["image_key"] or None, question=args["question"], answer_key=args["answer_key"],
                      **_image_size(encoder_args))


def _digits(args, *, split, examples, seed, encoder_args, formatter=None):
    from jaxmm.data.digits import digits_data

    return digits_data(tuple(args["classes"]), split)


def _textrich(args, *, split, examples, seed, encoder_args, formatter=None):
    from jaxmm.data.textrich import TextRichQA

    return TextRichQA(examples, seed=seed, split=split, image_size=encoder_args["image_size"], **args)


def _trins(args, *, split, examples, seed, encoder_args, formatter=None):
    from jaxmm.data.trins import TrinsSource

    root = args["train_root"] if split == "train" else args["eval_root"]
    if not root:
        return None
    return TrinsSource(root, task=args["task"], skip_bad_records=args["skip_bad_records"], **_image_size(encoder_args))


def _llava_read(args, *, split, examples, seed, encoder_args, formatter=None):
    from jaxmm.data.llava_read import LlavaReadSource

    args = dict(args)
    args["budget"] = None if args["budget"] < 0 else args["budget"]   # -1: no OCR token budget
    return LlavaReadSource(examples, seed=seed, split=split, image_size=encoder_args["image_size"],
                           tokenizer=getattr(formatter, "tok", None), **args)


def _register_builtin() -> None:
    from jaxmm.data import audioqa, textvqa

    register(Source("textvqa", _textvqa, kinds=tuple(textvqa.KINDS), cacheable=True,
                    defaults=dict(max_words=3, kinds=("read", "red", "top", "count"), font_sizes=(12, 18))))
    register(Source("audioqa", _audioqa, kinds=tuple(audioqa.KINDS), cacheable=True,
                    defaults=dict(max_digits=4, duration=1.0, kinds=("digit", "count", "sequence"), noise=0.02)))
    register(Source("llava_json", _llava_json,
                    defaults=dict(train_json="", eval_json="", image_folder="", skip_bad_records=False,
                                  max_aspect_ratio=20.0, max_pixels=64_000_000, check_files="lazy")))
    register(Source("tfds", _tfds,
                    defaults=dict(name="", data_dir="", train_split="train", eval_split="test", image_key="image",
                                  question="What is shown in the image?", answer_key="label")))
    register(Source("digits", _digits, defaults=dict(classes=(0, 1, 2, 3, 4)), cacheable=True))
    from jaxmm.data import textrich

    register(Source("textrich", _textrich, kinds=textrich.QUESTION_KINDS,
                    defaults=dict(kinds=textrich.QUESTION_KINDS, page_kinds=textrich.KINDS)))
    from jaxmm.data import llava_read

    register(Source("llava_read", _llava_read, kinds=llava_read.LlavaReadSource.kinds, cacheable=True,
                    defaults=dict(stage="finetune", tasks=llava_read.PRETRAIN_TASKS, qa_kinds=llava_read.READING_KINDS,
                                  page_kinds=textrich.KINDS, ocr="layout", engine="oracle", eval_engine="",
                                  width=48, budget=128, budget_rule="head", box_bins=100, small_text=0.03,
                                  ocr_cache="")))
    register(Source("trins", _trins, kinds=("vqa", "caption"),
                    defaults=dict(train_root="", eval_root="", task="vqa", skip_bad_records=False)))


_register_builtin()
