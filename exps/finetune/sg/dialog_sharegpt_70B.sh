#!/usr/bin/env bash
# Full finetune of Llama 2 70B on ShareGPT dialogs (LLaMA2-Accessory's hyper-parameters), MP 8:
# each replica spans the 8 GPUs of a node; run it on several nodes for data parallelism.
# On each node (same MASTER_ADDR, NODE_RANK 0..NNODES-1):
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 bash exps/finetune/sg/dialog_sharegpt_70B.sh <pretrained_path> <llama_config> <tokenizer_path> [flags...]
# Under SLURM: see slurm_dialog_sharegpt_70B.sbatch (LAUNCHER=srun).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

pretrained_path=${1:-$pretrained_path}
pretrained_type=${pretrained_type:-meta_ori}
llama_config=${2:-$llama_config}
tokenizer_path=${3:-$tokenizer_path}
data_config=${data_config:-$ACCESSORY_REPO/configs/data/finetune/sg/dialog_sharegpt.yaml}

data_parallel=${data_parallel:-sdp}
model_parallel=${model_parallel:-8}

exp_name=${exp_name:-finetune/sg/dialog_sharegpt_70B}
shift $(($# < 3 ? $# : 3))

finetune output/"$exp_name" --epochs 3 --warmup_epochs 0.04 \
  --batch_size 2 --accum_iter 64 --num_workers 4 \
  --max_words 4096 \
  --lr 0.00002 --min_lr 0.0 --clip_grad 2 --weight_decay 0.0 \
  --data_parallel "$data_parallel" --model_parallel_size "$model_parallel" --checkpointing \
  --llama_type llama --llama_config $llama_config --tokenizer_path "$tokenizer_path" \
  --no_visual \
  --pretrained_path $pretrained_path --pretrained_type="$pretrained_type" \
  --data_config "$data_config" --dialog \
  "$@"
