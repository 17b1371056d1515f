"""Tokenizers: SentencePiece `.model` files (Llama 1/2, Code Llama) and, when the `tokenizers`
package is installed, Hugging Face `tokenizer.json` files."""
from __future__ import annotations

import json
import os
from typing import List

from accessory.errors import AccessoryError


class Tokenizer:
    """`encode(s, bos, eos)`, `decode(ids)`, `n_words`, `bos_id`, `eos_id`, as in Meta's reference."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise AccessoryError(f"tokenizer file {path} does not exist: pass --tokenizer_path with a "
                                 "SentencePiece .model or a tokenizer.json")
        self.path = path
        self._backend = _HFBackend(path) if path.endswith(".json") else _SentencePieceBackend(path)
        self.n_words: int = self._backend.n_words
        self.bos_id: int = self._backend.bos_id
        self.eos_id: int = self._backend.eos_id

    def encode(self, s: str, bos: bool, eos: bool) -> List[int]:
        ids = self._backend.encode(s)
        if bos:
            ids = [self.bos_id] + ids
        if eos:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: List[int]) -> str:
        return self._backend.decode(list(ids))

    def piece(self, token_id: int) -> str:
        """The text of one token, for streaming output."""
        return self._backend.piece(token_id)


class _SentencePieceBackend:
    def __init__(self, path: str):
        from sentencepiece import SentencePieceProcessor

        self.sp = SentencePieceProcessor()
        try:
            self.sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise AccessoryError(f"tokenizer file {path} is not a SentencePiece model ({e})") from None
        self.n_words = self.sp.GetPieceSize()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()

    def encode(self, s: str) -> List[int]:
        return self.sp.EncodeAsIds(s)

    def decode(self, ids: List[int]) -> str:
        return self.sp.DecodeIds(ids)

    def piece(self, token_id: int) -> str:
        return self.sp.IdToPiece(token_id).replace("\u2581", " ")


class _HFBackend:
    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError:
            raise AccessoryError(f"{path} is a Hugging Face tokenizer.json: `pip install tokenizers` to use it") from None
        try:
            self.tok = HFTokenizer.from_file(path)
        except Exception as e:  # the tokenizers package raises plain Exceptions on bad files
            raise AccessoryError(f"tokenizer file {path} cannot be read ({e})") from None
        self.n_words = self.tok.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id = _special_ids(path, self.tok)

    def encode(self, s: str) -> List[int]:
        return self.tok.encode(s, add_special_tokens=False).ids

    def decode(self, ids: List[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def piece(self, token_id: int) -> str:
        return self.tok.decode([token_id])


def _special_ids(path: str, tok) -> tuple[int, int]:
    """BOS/EOS from tokenizer_config.json beside tokenizer.json, else the usual Llama token names."""
    names = {"bos": ["<s>", "<|begin_of_text|>"], "eos": ["</s>", "<|end_of_text|>", "<|eot_id|>"]}
    config_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = json.load(f)
        for which in names:
            token = config.get(f"{which}_token")
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str):
                names[which] = [token]
    ids = []
    for which, candidates in names.items():
        found = [tok.token_to_id(t) for t in candidates if tok.token_to_id(t) is not None]
        if not found:
            raise AccessoryError(f"{path}: no {which.upper()} token among {candidates}; add tokenizer_config.json "
                                 f"with {which}_token")
        ids.append(found[0])
    return ids[0], ids[1]
