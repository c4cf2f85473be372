"""Data: tokenizers, conversation formatting, embedded procedural datasets, grain loaders, real-data adapters.

    from jaxmm.data import ByteTokenizer, ConversationFormatter, TextVQA, make_loader
    tok = ByteTokenizer()
    it = make_loader(TextVQA(10_000), batch_size=32, seed=0,
                     transforms=[ConversationFormatter(tok, max_len=64)])
    batch = next(it)  # {"input_ids", "loss_mask", "attention_mask", "image"}: numpy arrays

Sources (random access, dict examples with "conversations" and "image"/"audio"): `TextVQA`, `AudioQA`,
`LlavaJsonSource` (LLaVA JSON + image folder), `TFDSSource` (tfds.data_source; imports TFDS when built).
`jaxmm.data.sources` registers them by name ("textvqa", "audioqa", "llava_json", "tfds", "digits") for the
trainer; a paper registers its own there. `make_loader` / `eval_batches` are the one loader (the trainer's too).
"""
from jaxmm.data.audioqa import AudioQA, audioqa_dataset
from jaxmm.data.conversation import ConversationFormatter
from jaxmm.data.llava_json import BadRecordError, LlavaJsonSource, llava_json_dataset, write_llava_folder
from jaxmm.data.pipeline import CachedSource, as_map_dataset, eval_batches, make_loader, take
from jaxmm.data.textvqa import TextVQA, textvqa_dataset
from jaxmm.data.tfds import TFDSSource, tfds_source
from jaxmm.data.tokenizers import ByteTokenizer, HFTokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "ConversationFormatter", "TextVQA", "textvqa_dataset", "AudioQA",
           "audioqa_dataset", "LlavaJsonSource", "BadRecordError", "llava_json_dataset", "write_llava_folder",
           "TFDSSource", "tfds_source", "CachedSource", "make_loader", "eval_batches", "as_map_dataset", "take"]
