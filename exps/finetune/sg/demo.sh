#!/usr/bin/env bash
# The embedded demo: from a fresh clone, with no arguments and no downloads beyond Python packages.
# It installs what is missing, builds a tiny "pretrained" LLaMA (random weights, Meta's original
# layout) with its own SentencePiece tokenizer and a synthetic instruction dataset, finetunes it
# with torchrun (2 CPU processes, or the local GPUs), then shows the model answering held-out
# prompts, with its exact-match accuracy next to the untrained model's.
#   bash exps/finetune/sg/demo.sh [extra main_finetune flags...]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
PYTHON=${PYTHON:-python3}
DEMO=$REPO/.demo  # everything the demo writes (git-ignored)

step() { printf '\n== %s\n' "$*"; }

step "1/5 checking the Python packages"
if ! "$PYTHON" -c "import torch, fairscale, sentencepiece, yaml, tqdm, accessory" 2>/dev/null; then
  if ! "$PYTHON" -c "import torch" 2>/dev/null && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "installing PyTorch (CPU build: torch==2.13.0)..."
    "$PYTHON" -m pip install -q "torch==2.13.0"
  fi
  echo "installing accessory and its requirements (pip install -e .)..."
  "$PYTHON" -m pip install -q -e "$REPO"
fi
source "$REPO/exps/finetune/sg/_common.sh"

pretrained_path=${pretrained_path:-$DEMO/pretrained}
pretrained_type=${pretrained_type:-meta_ori}
llama_config=${llama_config:-$REPO/configs/model/demo/params.json}
tokenizer_path=${tokenizer_path:-$DEMO/tokenizer.model}
data_config=${data_config:-$REPO/configs/data/finetune/sg/demo.yaml}

data_parallel=${data_parallel:-sdp}
model_parallel=${model_parallel:-1}
precision=${precision:-$(command -v nvidia-smi >/dev/null 2>&1 && echo bf16 || echo fp32)}

exp_name=${exp_name:-finetune/sg/demo}
output_dir=$DEMO/output

step "2/5 writing the data, training a tokenizer, making a random 'pretrained' model"
"$PYTHON" "$REPO/tools/make_demo_data.py" --out_dir "$DEMO/data"
"$PYTHON" "$REPO/tools/train_tokenizer.py" --input "$DEMO/data/corpus.txt" --vocab_size 512 --output "$tokenizer_path"
rm -rf "$pretrained_path" "$output_dir"
"$PYTHON" "$REPO/tools/make_random_checkpoint.py" --llama_config "$llama_config" --tokenizer_path "$tokenizer_path" \
  --dst "$pretrained_path" --format "$pretrained_type"

step "3/5 the untrained model on held-out prompts"
"$PYTHON" "$REPO/tools/evaluate.py" --pretrained_path "$pretrained_path" --data "$DEMO/data/heldout.json" \
  --prompt_type alpaca_short --show 3 --label untrained | tee "$DEMO/untrained.txt"

step "4/5 finetuning (${NPROC_PER_NODE} processes, ${precision})"
finetune "$output_dir" --epochs 8 --warmup_epochs 0.1 \
  --batch_size 8 --accum_iter 1 --num_workers 1 \
  --max_words 48 \
  --lr 0.003 --min_lr 0.0003 --clip_grad 1 --weight_decay 0.0 \
  --data_parallel "$data_parallel" --model_parallel_size "$model_parallel" --precision "$precision" \
  --llama_type llama --llama_config $llama_config --tokenizer_path "$tokenizer_path" \
  --pretrained_path $pretrained_path --pretrained_type="$pretrained_type" \
  --data_config "$data_config" --cache_dir "$DEMO/cache" \
  "$@"

step "5/5 the finetuned model on the same held-out prompts"
finetuned=$output_dir/$(cat "$output_dir/latest")
"$PYTHON" "$REPO/tools/evaluate.py" --pretrained_path "$finetuned" --data "$DEMO/data/heldout.json" \
  --prompt_type alpaca_short --show 8 --label finetuned | tee "$DEMO/finetuned.txt"

echo
tail -n 1 "$DEMO/untrained.txt"
tail -n 1 "$DEMO/finetuned.txt"
echo "try it: $PYTHON tools/generate.py --pretrained_path $finetuned --prompt_type alpaca_short --prompt 'Reverse the letters.' --input 'd e m o' --temperature 0"
