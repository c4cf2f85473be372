"""Data: tokenizers, conversation formatting, embedded procedural datasets, grain loaders, real-data adapters.

    from jaxmm.data import ByteTokenizer, ConversationFormatter, TextVQA, make_loader
    tok = ByteTokenizer()
    it = make_loader(TextVQA(10_000), batch_size=32, seed=0,
                     transforms=[ConversationFormatter(tok, max_len=64)])
    batch = next(it)  # {"input_ids", "loss_mask", "attention_mask", "image"}: numpy arrays

The LLaVA-JSON, TFDS and audio modules are imported from their own modules (`jaxmm.data.llava_json`,
`jaxmm.data.tfds_source`, `jaxmm.data.audioqa`).
"""
from jaxmm.data.conversation import ConversationFormatter
from jaxmm.data.pipeline import make_loader, take
from jaxmm.data.textvqa import TextVQA, textvqa_dataset
from jaxmm.data.tokenizers import ByteTokenizer, HFTokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "ConversationFormatter", "TextVQA", "textvqa_dataset",
           "make_loader", "take"]
