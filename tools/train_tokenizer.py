"""Train a small SentencePiece tokenizer (BPE with byte fallback and no normalization: Llama's settings) from text files.

    python tools/train_tokenizer.py --input corpus.txt [more.txt ...] --vocab_size 512 --output out/tokenizer.model
"""
from __future__ import annotations

import argparse
import os
import tempfile

from accessory.distributed.errors import run_entrypoint
from accessory.errors import AccessoryError


def train_tokenizer(inputs: list[str], vocab_size: int, output: str) -> None:
    import sentencepiece as spm

    for path in inputs:
        if not os.path.isfile(path):
            raise AccessoryError(f"--input file {path} does not exist")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "sp")
        try:
            spm.SentencePieceTrainer.train(
                input=",".join(inputs), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
                byte_fallback=True, character_coverage=1.0, split_digits=True, add_dummy_prefix=True,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2, num_threads=1)
        except RuntimeError as e:
            raise AccessoryError(f"SentencePiece could not train a {vocab_size}-token vocabulary: {e}") from None
        os.replace(prefix + ".model", output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="text files, one sentence or document a line")
    parser.add_argument("--vocab_size", type=int, default=512)
    parser.add_argument("--output", required=True, help="where to write the .model file")
    args = parser.parse_args()
    train_tokenizer(args.input, args.vocab_size, args.output)
    print(f"wrote {args.output} ({args.vocab_size} tokens)")


if __name__ == "__main__":
    run_entrypoint(main)
