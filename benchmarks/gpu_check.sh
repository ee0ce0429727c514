#!/usr/bin/env bash
# The GPU check (one GPU, <= 8 minutes): bf16 pretraining of glm-small for 200 steps with
# torch.compile, one epoch of CB-format fine-tuning, blank filling, and torchrun's FSDP2 path with
# one process (sharded checkpoint included). One JSON line per check on stdout (tokens/s, MFU,
# peak memory); logs go to stderr. Nothing is downloaded (see benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh                 # on a CUDA machine, after `make install`
#   SMOKE=1 bash benchmarks/gpu_check.sh         # the same steps on the CPU, tiny config (~3 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-$(mktemp -d)}
export PYTHONPATH=src HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
CHECK=(benchmarks/gpu_check.py)
if [[ "${SMOKE:-0}" == 1 ]]; then
  CONFIG=configs/pretrain/tiny.toml; VOCAB=384; STEPS=4; FSDP_STEPS=4; COMPILE=(); PREC=fp32
  DEV=(--device cpu); TRAIN_DEV=cpu
else
  CONFIG=configs/pretrain/glm-small.toml; VOCAB=8192; STEPS=200; FSDP_STEPS=50; COMPILE=(--compile)
  PREC=bf16; DEV=(); TRAIN_DEV=cuda
fi
echo "work folder: $WORK" >&2
timeout 120 "$PY" "${CHECK[@]}" store "$WORK" --vocab "$VOCAB"
timeout 240 "$PY" "${CHECK[@]}" pretrain "$WORK" --steps "$STEPS" "${COMPILE[@]}" \
  --precision "$PREC" --config "$CONFIG" "${DEV[@]}"
timeout 120 "$PY" "${CHECK[@]}" finetune "$WORK" "${DEV[@]}"
timeout 60 "$PY" "${CHECK[@]}" fill "$WORK" "${DEV[@]}"
# torchrun with one process: the process group, fully_shard per block then root, DCP checkpoint
timeout 150 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m blankfill pretrain \
  --config "$CONFIG" --data.store="$WORK/store" --train.out_dir="$WORK/fsdp" \
  --train.max_steps="$FSDP_STEPS" --train.save_every="$FSDP_STEPS" --train.eval_every=0 \
  --train.precision="$PREC" --train.device="$TRAIN_DEV" --data.valid_fraction=0 \
  --dist.strategy=fsdp --dist.checkpoint=sharded --log.progress=false --log.tensorboard=false >&2
timeout 30 "$PY" "${CHECK[@]}" report "$WORK/fsdp" "torchrun fsdp, 1 process"
