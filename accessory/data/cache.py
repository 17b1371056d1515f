"""The tokenization cache: local rank 0 tokenizes a data file once and saves the result under a key of
everything that decides it; the node's other ranks wait for the file and load it."""
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from accessory.data import encode, records, store, templates
from accessory.errors import AccessoryError
from accessory.tokenizer import Tokenizer


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accessory" / "tokenized"


def cache_path(cache_dir: Path, data_file: Path, tokenizer: Tokenizer, settings: dict[str, Any]) -> Path:
    """A file name keyed by the content of the data file and the tokenizer, the `settings` that shape the
    samples, and this package's code that renders and tokenizes them (so a fix is never hidden by an old cache).
    """
    key = {"data": _file_digest(data_file), "path": str(data_file),
           "tokenizer": [_file_digest(Path(tokenizer.path)), tokenizer.bos_id, tokenizer.eos_id],
           "code": [_file_digest(Path(module.__file__)) for module in (records, templates, encode, store)],
           **settings}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir / f"{data_file.stem}-{digest[:20]}.pt"


def load_or_build(path: Path, build: Callable[[], dict], *, local_rank: int, timeout_s: float,
                  log: Callable[[str], None]) -> dict:
    """The cached `build()` result (a dict of tensors, numbers and strings)."""
    if path.is_file():
        log(f"tokenized cache {path}")
    elif local_rank == 0:
        log(f"tokenizing into {path}")
        payload = build()
        _save_atomically(payload, path)
        return payload
    else:
        _wait_for(path, timeout_s)
    return torch.load(path, weights_only=True)


def _save_atomically(payload: dict, path: Path) -> None:
    """Write to a unique temporary name, then rename: a reader never sees a partial file, and ranks 0 of
    several nodes sharing a cache folder can write the same file at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AccessoryError(f"timed out after {timeout_s:g} s waiting for local rank 0 to write the tokenized "
                                 f"cache {path}; check rank 0's log for its error, or raise cache_timeout_s")
        time.sleep(min(0.5, remaining))


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
