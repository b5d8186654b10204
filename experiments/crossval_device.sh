#!/usr/bin/env bash
# The one GPU call of issue 11: `crossval.py run` on the packed data, results and the final models back
# through $OUT (at most 8 files of 16 MiB: models are split, the rest is one archive).
# Needs: .gpu/packed.npz (crossval.py pack) and .gpu/whl/monai-*.whl (the GPU machine has no MONAI).
set -uo pipefail
budget=${1:-470}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
work=/tmp/crossval
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv -l 20 > /tmp/gpu_use.csv 2>&1 &
python3 experiments/crossval.py run --packed .gpu/packed.npz --output $work --budget-s "$budget" "${@:2}" 2>&1 | tee /tmp/run.log
cp /tmp/gpu_use.csv /tmp/run.log $work/
tar czf "$OUT/crossval_results.tgz" -C $work --exclude='*.safetensors' .
for model in $work/*.safetensors; do
    split -b 15M "$model" "$OUT/$(basename "$model").part-"
done
ls -la "$OUT"
