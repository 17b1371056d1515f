"""From a data config to training and validation datasets and their loaders."""
import math
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from accessory.data.cache import cache_path, default_cache_dir, load_or_build
from accessory.data.config import DataSource, load_data_config
from accessory.data.dataset import PackedDataset, SampleDataset, collate
from accessory.data.encode import FileStats, encode_file
from accessory.data.loader import ResumableLoader
from accessory.data.packing import best_fit_decreasing
from accessory.data.sampler import GlobalBatchSampler, val_batches
from accessory.data.seeding import rng
from accessory.data.store import TokenStore
from accessory.errors import AccessoryError
from accessory.tokenizer import Tokenizer

Log = Callable[[str], None]


@dataclass
class DataArgs:
    data_config: str
    max_words: int = 512
    dialog: bool = False               # ShareGPT conversations instead of Alpaca instructions
    packing: bool = False              # pack training samples into rows of max_words tokens
    skip_bad_samples: bool = False     # skip (and count) bad records instead of stopping at the first
    val_ratio: float = 0.0             # hold out this fraction of each group (or list VAL files in the config)
    cache_dir: str | None = None       # default: ~/.cache/accessory/tokenized
    cache_timeout_s: float = 1800.0    # how long ranks wait for local rank 0 to tokenize
    seed: int = 0
    length_grouped: bool = False       # global batches of similar lengths: less padding


@dataclass
class FinetuneData:
    """Training data (packed rows when packing) and validation samples (never packed), with their loaders."""

    train: SampleDataset | PackedDataset
    val: SampleDataset | None
    seed: int = 0
    length_grouped: bool = False

    def train_loader(self, batch_size: int, accum_iter: int, dp_rank: int, dp_world: int, num_workers: int = 0,
                     pin_memory: bool = False) -> ResumableLoader:
        sampler = GlobalBatchSampler(self.train.groups, self.train.lengths, batch_size=batch_size,
                                     accum_iter=accum_iter, dp_rank=dp_rank, dp_world=dp_world, seed=self.seed,
                                     length_grouped=self.length_grouped)
        return ResumableLoader(self.train, sampler, num_workers=num_workers, pin_memory=pin_memory)

    def val_loader(self, batch_size: int, dp_rank: int, dp_world: int, num_workers: int = 0,
                   pin_memory: bool = False) -> DataLoader:
        """This rank's part of the validation set (see `val_batches`); every rank gets as many batches."""
        if self.val is None:
            raise ValueError("no validation data: set val_ratio or add a VAL list to the data config")
        return DataLoader(self.val, batch_sampler=val_batches(self.val.lengths, batch_size, dp_rank, dp_world),
                          collate_fn=collate, num_workers=num_workers, pin_memory=pin_memory)


def build_finetune_data(args: DataArgs, tokenizer: Tokenizer, *, local_rank: int = 0, log: Log = print) -> FinetuneData:
    """Read, check and tokenize the data (through the cache), hold out validation data, apply ratios and pack."""
    config = load_data_config(args.data_config, log)
    if not 0 <= args.val_ratio < 1:
        raise AccessoryError(f"val_ratio is {args.val_ratio}; use a fraction in [0, 1)")
    if config.val and args.val_ratio:
        raise AccessoryError(f"{args.data_config} has a VAL list and val_ratio is {args.val_ratio}; use one of them")
    stores = [_encoded(source, args, tokenizer, local_rank, log) for source in config.train + config.val]
    store = TokenStore.concat(stores)
    starts = accumulate((len(s) for s in stores), initial=0)
    ids = [torch.arange(start, start + len(s)) for start, s in zip(starts, stores)]
    train_ids, val_ids = ids[:len(config.train)], ids[len(config.train):]
    if args.val_ratio:
        train_ids, val_ids = _hold_out(config.train, train_ids, args.val_ratio, args.seed)
    else:
        val_ids = _with_ratios(config.val, val_ids, args.seed, "VAL", log)
    train = _train_dataset(store, config.train, _with_ratios(config.train, train_ids, args.seed, "META", log),
                           args, log)
    return FinetuneData(train, _val_dataset(store, val_ids, log), args.seed, args.length_grouped)


def _encoded(source: DataSource, args: DataArgs, tokenizer: Tokenizer, local_rank: int, log: Log) -> TokenStore:
    settings = {"dialog": args.dialog, "format": source.template if args.dialog else source.prompt_type,
                "max_words": args.max_words, "skip_bad_samples": args.skip_bad_samples}
    path = cache_path(Path(args.cache_dir) if args.cache_dir else default_cache_dir(), source.path, tokenizer, settings)

    def build() -> dict:
        store, stats = encode_file(source, tokenizer, dialog=args.dialog, max_words=args.max_words,
                                   skip_bad_samples=args.skip_bad_samples)
        return {**store.to_dict(), "stats": asdict(stats)}

    payload = load_or_build(path, build, local_rank=local_rank, timeout_s=args.cache_timeout_s, log=log)
    log(f"{source.path}: {FileStats(**payload['stats']).summary(args.max_words)}")
    return TokenStore.from_dict(payload)


def _hold_out(sources: list[DataSource], ids: list[torch.Tensor], val_ratio: float,
              seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Move a random `val_ratio` of each group's distinct samples to validation (before any repeat, so
    no sample is in both)."""
    held_out = []
    for group in dict.fromkeys(source.group for source in sources):
        members = torch.cat([i for source, i in zip(sources, ids) if source.group == group])
        order = torch.randperm(len(members), generator=rng(seed, "val", group))
        held_out.append(members[order[:round(val_ratio * len(members))]])
    val = torch.cat(held_out)
    return [i[~torch.isin(i, val)] for i in ids], [val]


def _with_ratios(sources: list[DataSource], ids: list[torch.Tensor], seed: int, section: str,
                 log: Log) -> list[torch.Tensor]:
    """round(ratio x n) samples of each source: a random subset for ratio < 1, whole copies plus a random
    subset for ratio > 1."""
    selected = []
    for k, (source, source_ids) in enumerate(zip(sources, ids)):
        count = round(source.ratio * len(source_ids))
        if count != len(source_ids):
            order = torch.randperm(len(source_ids), generator=rng(seed, "ratio", section, k))
            source_ids = source_ids[order.repeat(math.ceil(count / len(source_ids)))[:count]]
            log(f"{source.path}: ratio {source.ratio:g} takes {count} of {len(order)} samples")
        selected.append(source_ids)
    return selected


def _train_dataset(store: TokenStore, sources: list[DataSource], ids: list[torch.Tensor], args: DataArgs,
                   log: Log) -> SampleDataset | PackedDataset:
    group_names = list(dict.fromkeys(source.group for source in sources))
    groups = torch.cat([torch.full((len(i),), group_names.index(s.group)) for s, i in zip(sources, ids)])
    counts = ", ".join(f"{name} {int((groups == g).sum())}" for g, name in enumerate(group_names))
    log(f"training: {len(groups)} samples ({counts})")
    if len(groups) == 0:
        raise AccessoryError(f"{args.data_config}: no training sample is left after val_ratio and the ratios; "
                             "raise them")
    if args.packing:
        return _packed(store, torch.cat(ids), groups, group_names, args.max_words, log)
    return SampleDataset(store, torch.cat(ids), groups, group_names)


def _val_dataset(store: TokenStore, ids: list[torch.Tensor], log: Log) -> SampleDataset | None:
    ids = torch.cat([torch.zeros(0, dtype=torch.int64), *ids])
    log(f"validation: {len(ids)} samples")
    return SampleDataset(store, ids, torch.zeros_like(ids), ["val"]) if len(ids) else None


def _packed(store: TokenStore, ids: torch.Tensor, groups: torch.Tensor, group_names: list[str], max_words: int,
            log: Log) -> PackedDataset:
    rows, row_groups = [], []
    for group in range(len(group_names)):
        members = ids[groups == group]
        for row in best_fit_decreasing(store.lengths[members].tolist(), max_words):
            rows.append(members[row].tolist())
            row_groups.append(group)
    packed = PackedDataset(store, rows, torch.tensor(row_groups), group_names)
    log(f"packed {len(ids)} samples into {len(rows)} rows of up to {max_words} tokens "
        f"({float(packed.lengths.sum()) / (len(rows) * max_words):.0%} full)")
    return packed
