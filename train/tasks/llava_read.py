"""`llava_read`: LLaVA-Read (arXiv 2407.19185) on the shared MLLM machinery of `mllm.qa` (train/tasks/mllm.py):
the same loss (answer tokens), eval (greedy exact match, per kind) and param groups, with LLaVA-Read's defaults:

  model.encoder = "dual_res"   jaxmm.models.dual_encoder: low-res ViT + high-res ConvNeXt, LLaVA-HR fusion after
                               `model.dual_res.fuse_after` (`low_res_only=True`: the low-res ablation)
  data.source   = "llava_read" jaxmm.data.llava_read: layout-aware pre-training targets (stage "pretrain":
                               recognition, localisation, parsing, layout) or reading questions split into
                               "small" / "large" text (stage "finetune"), each prompt
                               [image][OCR text (jaxmm.data.ocr_text)][instruction] with `data.llava_read.ocr`
                               "none" / "plain" / "layout", `engine` / `eval_engine` oracle, rapidocr, tesseract

Eval reports eval_accuracy/small and eval_accuracy/large (the ablation table's columns, docs/results/llava_read.md)
and eval_accuracy/<task> in pre-training. Nothing here but defaults: the model, data and OCR code live in jaxmm.
"""
from __future__ import annotations

from train.tasks import register
from train.tasks.mllm import MLLMQATask


class LlavaReadTask(MLLMQATask):
    def default_config(self):
        c = super().default_config()
        c.model.encoder = "dual_res"
        c.data.source = "llava_read"
        return c


register("llava_read")(LlavaReadTask)
