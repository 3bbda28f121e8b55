#!/usr/bin/env bash
# Multi-GPU KD benchmark: 1 GPU vs 2 GPUs with DDP vs 2 GPUs with FSDP, same global batch.
#   bash benchmarks/multi_gpu.sh TOKDIR DATA.jsonl OUT.json [worker flags, e.g. --steps 6 --tiny]
# TOKDIR holds the SmolLM2 tokenizer; DATA.jsonl comes from `python benchmarks/multi_gpu.py data`.
# With bitsandbytes installed, a 1-GPU QLoRA run of the same KD job is added.
set -euo pipefail
tok=$1; data=$2; out=$3; shift 3
extra=("$@")
tiny=(); [[ " ${extra[*]} " == *" --tiny "* ]] && tiny=(--tiny)
dir=${MG_DIR:-/tmp/mg}
here=$(cd "$(dirname "$0")" && pwd)
# NVLink multicast stays off (shared hosts); set again here in case the caller's environment lacks it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
rm -rf "$dir/runs"
python "$here/multi_gpu.py" prepare --dir "$dir" --tokenizer "$tok" --data "$data" "${tiny[@]}"
fv=${MG_FSDP_VERSION:-1}  # 2: accelerate unties the tied LM head (the trainer refuses it)
fsdp=(--use_fsdp --fsdp_version "$fv" --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP
      --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --fsdp_state_dict_type FULL_STATE_DICT)
if [[ $fv == 1 ]]; then fsdp+=(--fsdp_sharding_strategy FULL_SHARD --fsdp_use_orig_params true)
else fsdp+=(--fsdp_reshard_after_forward true); fi
launch=(python -m accelerate.commands.launch --mixed_precision bf16 --num_machines 1 --dynamo_backend no)
gpus=${MG_GPUS:-2}  # 1: only the single-GPU runs (plain, and FSDP in one process as its check)
"${launch[@]}" --num_processes 1 "$here/multi_gpu.py" worker --dir "$dir" --name gpu1 "${extra[@]}"
if [[ $gpus -ge 2 ]]; then
  "${launch[@]}" --num_processes 2 --multi_gpu "$here/multi_gpu.py" worker --dir "$dir" --name ddp2 "${extra[@]}"
  "${launch[@]}" --num_processes 2 "${fsdp[@]}" "$here/multi_gpu.py" worker --dir "$dir" --name fsdp2 "${extra[@]}"
else
  "${launch[@]}" --num_processes 1 "${fsdp[@]}" "$here/multi_gpu.py" worker --dir "$dir" --name fsdp_one_process "${extra[@]}"
fi
if python -c "import bitsandbytes" 2>/dev/null; then
  "${launch[@]}" --num_processes 1 "$here/multi_gpu.py" worker --dir "$dir" --name qlora1 --method qlora \
    "${extra[@]}" ${MG_QLORA_ARGS:---batch 8 --steps 20} || echo "qlora run failed"
fi
python "$here/multi_gpu.py" summarize --dir "$dir" --out "$out" "${extra[@]}"
