"""Command-line flags of `accessory.main_finetune`: LLaMA2-Accessory's, so its scripts run unchanged,
plus a few new ones (--max_steps, --resume auto, --keep_last, --log_interval, --packing...)."""
from __future__ import annotations

import argparse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("accessory.main_finetune", description="Finetune a LLaMA-family model.")
    run = p.add_argument_group("run")
    run.add_argument("--output_dir", default="./output", help="checkpoints, metrics.jsonl and log.txt go here")
    run.add_argument("--epochs", type=int, default=1)
    run.add_argument("--max_steps", type=int, default=None,
                     help="stop after this many optimizer steps and save (the LR schedule still follows --epochs)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", default="", help="a checkpoint directory, or 'auto': the newest in --output_dir")
    run.add_argument("--save_interval", type=int, default=1, help="save epoch{E}/ every N epochs (and the last)")
    run.add_argument("--save_iteration_interval", type=int, default=0,
                     help="also save epoch{E}-iter{I}/ every N batches within an epoch (0: never)")
    run.add_argument("--keep_last", type=int, default=0, help="keep only the N newest checkpoints (0: all)")
    run.add_argument("--only_save_trainable", action="store_true", help="save only trainable parameters")
    run.add_argument("--log_interval", type=int, default=1, help="update the progress bar every N steps")
    run.add_argument("--check_only", action="store_true",
                     help="check every input (paths, configs, MP size, data YAML) and exit: the launch scripts' preflight")

    model = p.add_argument_group("model")
    model.add_argument("--llama_type", default="llama", help="llama, llama_peft, ...")
    model.add_argument("--llama_config", nargs="+", default=[], help="params.json, then optional overrides, merged in order")
    model.add_argument("--tokenizer_path", default=None)
    model.add_argument("--pretrained_path", nargs="+", default=None, help="base checkpoint, then deltas")
    model.add_argument("--pretrained_type", choices=["meta_ori", "consolidated"], default=None,
                       help="layout of the first --pretrained_path (checked against its files)")
    model.add_argument("--no_visual", action="store_true", help="accepted for LLaMA2-Accessory scripts; ignored")
    model.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")

    parallel = p.add_argument_group("parallelism and precision")
    parallel.add_argument("--model_parallel_size", type=int, default=1)
    parallel.add_argument("--data_parallel", choices=["sdp", "fsdp", "ddp"], default="sdp",
                          help="sdp: shard everything, keep parameters gathered from forward to backward; "
                               "fsdp: shard everything, regather in backward; ddp: shard nothing")
    parallel.add_argument("--precision", choices=["bf16", "fp16", "fp32", "tf32"], default="bf16")
    parallel.add_argument("--compile", action="store_true",
                          help="torch.compile each transformer block (slower start, faster steps)")
    parallel.add_argument("--quant", action="store_true",
                          help="QLoRA: NF4 base weights via bitsandbytes (CUDA, llama_peft, --only_save_trainable)")

    optim = p.add_argument_group("optimization")
    optim.add_argument("--batch_size", type=int, default=4, help="samples per micro-batch per data-parallel rank")
    optim.add_argument("--accum_iter", type=int, default=1, help="micro-batches per optimizer step")
    optim.add_argument("--lr", type=float, default=1e-4)
    optim.add_argument("--min_lr", type=float, default=0.0)
    optim.add_argument("--warmup_epochs", type=float, default=0.0)
    optim.add_argument("--weight_decay", type=float, default=0.0)
    optim.add_argument("--clip_grad", type=float, default=-1.0, help="clip the global gradient norm (<= 0: off)")

    data = p.add_argument_group("data")
    data.add_argument("--data_config", default=None, help="YAML listing the datasets under META")
    data.add_argument("--dialog", action="store_true", help="ShareGPT-style conversations")
    data.add_argument("--max_words", type=int, default=512, help="tokens per sample (or per packed row)")
    data.add_argument("--packing", action="store_true", help="pack samples into full rows of --max_words")
    data.add_argument("--length_grouped", action="store_true",
                      help="batch samples of similar length together (less padding without packing)")
    data.add_argument("--skip_bad_samples", action="store_true", help="skip invalid records instead of stopping")
    data.add_argument("--val_ratio", type=float, default=0.0, help="hold out this fraction for validation")
    data.add_argument("--cache_dir", default=None, help="tokenization cache (default ~/.cache/accessory)")
    data.add_argument("--num_workers", type=int, default=2)
    data.add_argument("--pin_mem", action="store_true", default=True)
    data.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    return p
