"""Finetuning data: LLaMA2-Accessory's data_config YAML, Alpaca and ShareGPT records, prompt templates,
tokenization cache, packing, and a resumable distributed loader. See `build_finetune_data`."""
from accessory.data.builder import DataArgs, FinetuneData, build_finetune_data
from accessory.data.dataset import collate, pack_samples
from accessory.data.loader import ResumableLoader
from accessory.data.store import IGNORE_INDEX

__all__ = ["DataArgs", "FinetuneData", "IGNORE_INDEX", "ResumableLoader", "build_finetune_data", "collate",
           "pack_samples"]
