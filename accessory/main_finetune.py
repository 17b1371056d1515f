"""Finetune a LLaMA-family model: `torchrun --nproc_per_node=N -m accessory.main_finetune ...`.

Thin wiring of the modules: process groups, data, model + checkpoints, data parallelism,
optimizer, resume, then the training loop. Flags: `--help` (accessory/train/args.py).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings

import torch
from torch.distributed.fsdp import FSDPModule

if __package__ in (None, ""):  # run as a file path: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from accessory.api import DTYPES, build_model, model_args
from accessory.checkpoint.formats import check_pretrained_type, find_checkpoint
from accessory.checkpoint.load import load_pretrained
from accessory.checkpoint.train_state import load_resume_state, resolve_resume
from accessory.data import DataArgs, build_finetune_data
from accessory.data.config import load_data_config
from accessory.distributed import groups
from accessory.distributed.errors import run_entrypoint
from accessory.distributed.parallel import unwrap, wrap_data_parallel
from accessory.errors import AccessoryError
from accessory.model.peft import check_quant_support, quantize_base
from accessory.tokenizer import Tokenizer
from accessory.train.args import get_args_parser
from accessory.train.host_memory import keep_freed_host_memory
from accessory.train.loop import Trainer
from accessory.train.metrics import MetricsLogger
from accessory.train.optim import build_optimizer

COMPUTE_DTYPES = {**DTYPES, "tf32": torch.float32}


def check_args(args: argparse.Namespace) -> None:
    """User errors that need no model or data, found before anything is built."""
    required = {"--llama_config": args.llama_config, "--tokenizer_path": args.tokenizer_path,
                "--data_config": args.data_config}
    for flag, value in required.items():
        if not value:
            raise AccessoryError(f"{flag} is required")
    for flag, value in (("--batch_size", args.batch_size), ("--accum_iter", args.accum_iter),
                        ("--epochs", args.epochs), ("--save_interval", args.save_interval)):
        if value < 1:
            raise AccessoryError(f"{flag} must be at least 1, not {value}")
    if not args.pretrained_path and not args.resume:
        raise AccessoryError("--pretrained_path is required (or --resume a checkpoint)")
    for path in args.pretrained_path or []:
        if not os.path.isdir(path):
            raise AccessoryError(f"--pretrained_path {path} does not exist")
    if args.quant:
        check_quant_support(COMPUTE_DTYPES[args.precision])
        if not args.only_save_trainable:
            raise AccessoryError("--quant needs --only_save_trainable: the NF4 base is not saved, only what trains on it")


def preflight(args: argparse.Namespace) -> None:
    """`--check_only`: every input a launch script passes, checked in one process in seconds —
    flags, tokenizer, configs against the MP size, checkpoint files, the data YAML and its paths."""
    check_args(args)
    tokenizer = Tokenizer(args.tokenizer_path)
    model_args(args.llama_type, args.llama_config, tokenizer, args.model_parallel_size)
    found = [find_checkpoint(path) for path in args.pretrained_path or []]
    if found:
        check_pretrained_type(found[0], args.pretrained_type)
    load_data_config(args.data_config, log=lambda message: None)


def build(args: argparse.Namespace):
    tokenizer = Tokenizer(args.tokenizer_path)
    margs = model_args(args.llama_type, args.llama_config, tokenizer, args.model_parallel_size)
    groups.init_model_parallel(args.model_parallel_size)
    torch.manual_seed(args.seed)
    log = print if groups.is_main_process() else (lambda message: None)
    data = build_finetune_data(DataArgs(
        data_config=args.data_config, max_words=args.max_words, dialog=args.dialog, packing=args.packing,
        skip_bad_samples=args.skip_bad_samples, val_ratio=args.val_ratio, cache_dir=args.cache_dir, seed=args.seed,
        length_grouped=args.length_grouped),
        tokenizer, local_rank=int(os.environ.get("LOCAL_RANK", "0")), log=log)
    model = build_model(args.llama_type, margs, tokenizer)
    resume = resolve_resume(args.resume, args.output_dir)
    paths = (args.pretrained_path or []) + ([resume] if resume else [])
    if not paths:
        raise AccessoryError(f"--resume {args.resume}: no checkpoint in {args.output_dir} yet, and no --pretrained_path")
    # The weights are loaded last, into the parameters' final place: FSDP shards the still-unloaded
    # model (its memory untouched, so nothing is materialized) and each rank then reads only its own
    # rows; otherwise the model moves to the device first. No rank holds a host copy of more than it
    # keeps. QLoRA quantizes loaded weights on their way to the device, so it loads first.
    load_last = not args.quant
    load = functools.partial(load_pretrained, paths=paths, mp_rank=groups.mp_rank(), mp_size=groups.mp_world(),
                             pretrained_type=args.pretrained_type, may_be_fresh=model.is_added, log=log)
    if not load_last:
        load(model)
    prepare_parameters(model, COMPUTE_DTYPES[args.precision], loaded_later=load_last)
    if args.quant:
        quantize_base(model, COMPUTE_DTYPES[args.precision], groups.device())
    model.llma.gradient_checkpointing = args.checkpointing
    if args.compile:  # per block, in place: state-dict keys and FSDP units stay as they are
        for block in model.llma.layers:
            block.compile()
    model = wrap_data_parallel(model, args.data_parallel)
    if load_last:
        load(unwrap(model))
    scaler = make_grad_scaler(args.precision, args.data_parallel)
    # FSDP's sharded grad scaler keeps a 1-element scale that the fused AdamW kernel rejects
    optimizer = build_optimizer(model, args.lr, args.weight_decay, fused=args.precision != "fp16")
    loader = data.train_loader(args.batch_size, args.accum_iter, groups.dp_rank(), groups.dp_world(),
                               args.num_workers, args.pin_mem and torch.cuda.is_available())
    val_loader = (data.val_loader(args.batch_size, groups.dp_rank(), groups.dp_world())
                  if data.val is not None else None)
    global_batch = args.batch_size * args.accum_iter * groups.dp_world()
    log(f"{len(loader) // args.accum_iter} optimizer steps per epoch of {global_batch} samples; {loader.dropped} "
        f"samples left out of each epoch (a different random few each epoch) to keep global batches whole")
    # not under FSDP: its gather and reduce buffers of many sizes would fragment a heap that never
    # shrinks (2-rank peak RSS +55-95% in bench/fsdp_memory.py), which costs more than the page faults
    if groups.device().type == "cpu" and not isinstance(model, FSDPModule) and keep_freed_host_memory():
        log("host memory: freed blocks are kept for the next step (glibc mallopt) instead of page-faulted in anew")
    trainer = Trainer(args, model, optimizer, scaler, loader, val_loader,
                      MetricsLogger(args.output_dir, groups.is_main_process()))
    if resume:
        state = load_resume_state(resume, optimizer, scaler)
        trainer.restore_position(state)
        loader.load_state_dict(state["loader"])  # also checks that data, seed and batch layout are unchanged
        log(f"resumed from {resume}: epoch {state['epoch']}, step {state['global_step']}")
    return trainer


def prepare_parameters(model: torch.nn.Module, compute_dtype: torch.dtype, loaded_later: bool = False) -> None:
    """Trainable parameters in fp32 (the optimizer's master weights), frozen ones in the compute dtype.
    With `loaded_later`, a frozen parameter the checkpoint will fill gets fresh, untouched memory in
    the compute dtype rather than a converted copy of values that are about to be overwritten."""
    for name, param in model.named_parameters():
        param.requires_grad_(model.is_trainable(name))
        if param.requires_grad:
            param.data = param.data.float()
        elif loaded_later and not model.is_added(name):
            param.data = torch.empty(param.shape, dtype=compute_dtype, device=param.device)
        else:
            param.data = param.data.to(compute_dtype)


def make_grad_scaler(precision: str, data_parallel: str):
    if precision != "fp16":
        return None
    if data_parallel == "ddp":
        return torch.amp.GradScaler(groups.device().type)
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    # its 1-element scale tensor meets DTensor gradients: harmless, but torch warns on every rank
    warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1")
    return ShardedGradScaler(groups.device().type)


def main() -> None:
    args = get_args_parser().parse_args()
    if args.check_only:
        preflight(args)
        return
    check_args(args)
    if args.precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    trainer = build(args)
    trainer.fit()
    trainer.metrics.close()


if __name__ == "__main__":
    run_entrypoint(main)
