# Shared by the launch scripts in this folder (sourced, not run).
#
# Every top-level variable of a script can be overridden from the environment
# (`data_config=my.yaml bash exps/finetune/sg/alpaca.sh ...`); the launcher reads
# NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT from the environment too.

ACCESSORY_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
export PYTHONPATH="$ACCESSORY_REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}

default_nproc() {  # the local GPUs, or 2 processes on a CPU-only machine
  local gpus=0
  command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  [ "$gpus" -gt 0 ] && echo "$gpus" || echo 2
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
NPROC_PER_NODE=${NPROC_PER_NODE:-$(default_nproc)}
if [ -z "${MASTER_PORT:-}" ]; then
  # one port for every node: multi-node jobs must agree on it, a single node picks a free one
  [ "$NNODES" -gt 1 ] && MASTER_PORT=29500 || MASTER_PORT=$(free_port)
fi

# finetune OUTPUT_DIR FLAGS...: check every input in seconds, then launch accessory.main_finetune
# (torchrun, or srun when LAUNCHER=srun inside a SLURM allocation), the console tee'd to
# OUTPUT_DIR/output.log. Returns the job's status.
finetune() {
  local output_dir=$1
  shift
  "$PYTHON" -m accessory.main_finetune --check_only --output_dir "$output_dir" "$@" || return $?
  mkdir -p "$output_dir"
  local launch
  if [ "${LAUNCHER:-torchrun}" = srun ]; then
    echo "exp name: ${exp_name}; output: ${output_dir}; srun over ${SLURM_NTASKS:-?} tasks"
    # ranks come from SLURM's variables; the master is the allocation's first node
    launch=(env MASTER_PORT="$MASTER_PORT" srun --kill-on-bad-exit=1 "$PYTHON" -u -m accessory.main_finetune)
  else
    echo "exp name: ${exp_name}; output: ${output_dir}; ${NNODES} node(s) x ${NPROC_PER_NODE} process(es)"
    launch=("$PYTHON" -m accessory.distributed.launch --nnodes="$NNODES" --node_rank="$NODE_RANK"
            --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --nproc_per_node="$NPROC_PER_NODE"
            -m accessory.main_finetune)
  fi
  "${launch[@]}" --output_dir "$output_dir" "$@" 2>&1 | tee -a "$output_dir/output.log"
  local status=${PIPESTATUS[0]}
  echo "exp name: ${exp_name}"
  return "$status"
}
