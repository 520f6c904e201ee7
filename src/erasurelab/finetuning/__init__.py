"""Benign fine-tuning after an erasure: the denoising trainer, Modular LoRA and the re-emergence experiment."""

from erasurelab.finetuning.modular import VARIANTS, FinetuneConfig, FinetuneResult, finetune, merge

__all__ = ["VARIANTS", "FinetuneConfig", "FinetuneResult", "finetune", "merge"]
