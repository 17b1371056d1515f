#!/usr/bin/env bash
# QLoRA of Llama 2 7B on Alpaca (LLaMA2-Accessory's hyper-parameters), MP 1: LoRA (rank 16), bias and
# norm tuning on an NF4 base (bitsandbytes; CUDA, or CPU with bitsandbytes >= 0.50); only the trainable parameters are saved.
# bash exps/finetune/sg/alpaca_llamaPeft_normBiasLora_QF.sh <pretrained_path> <llama_config> <tokenizer_path> [extra main_finetune flags...]
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

pretrained_path=${1:-$pretrained_path}
pretrained_type=${pretrained_type:-meta_ori}
llama_config=${2:-$llama_config}
peft_config=${peft_config:-$ACCESSORY_REPO/configs/model/finetune/sg/llamaPeft_normBiasLora.json}
tokenizer_path=${3:-$tokenizer_path}
data_config=${data_config:-$ACCESSORY_REPO/configs/data/finetune/sg/alpaca.yaml}

data_parallel=${data_parallel:-sdp}
model_parallel=${model_parallel:-1}

exp_name=${exp_name:-finetune/sg/alpaca_llamaPeft_normBiasLora_QF}
shift $(($# < 3 ? $# : 3))

finetune output/"$exp_name" --epochs 4 --warmup_epochs 1 \
  --batch_size 4 --accum_iter 2 --num_workers 4 \
  --max_words 512 \
  --lr 0.00005 --min_lr 0.000005 --clip_grad 2 --weight_decay 0.02 \
  --data_parallel "$data_parallel" --model_parallel_size "$model_parallel" --checkpointing \
  --llama_type llama_peft --llama_config $llama_config "$peft_config" --tokenizer_path "$tokenizer_path" \
  --no_visual \
  --pretrained_path $pretrained_path --pretrained_type="$pretrained_type" \
  --data_config "$data_config" \
  --quant --only_save_trainable \
  "$@"
