#!/usr/bin/env bash
# One prepared GPU check, run from the repository root on the GPU machine with the system
# python3 that holds a CUDA PyTorch (nothing is installed; the scripts put the repo on
# sys.path). About 3-4 minutes on an H100; each part stops after LIMIT seconds.
#   1. nvidia-smi
#   2. CUDA smoke check: CPU/GPU agreement (posterior means) and a bf16 training step
#   3. rank-1 layer cost vs the plain torch layer on CUDA (bench/layers.py)
#   4. WRN-28-10 training throughput and peak memory, rank-1 (K=4, 32 unique x 4) vs
#      deterministic (128 unique) at 128 rows per step, bf16 autocast, NCHW and
#      channels_last (bench/gpu_images.py)
#   bash bench/gpu_check.sh            # LIMIT defaults to 300
set -uo pipefail
LIMIT="${LIMIT:-300}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0
nvidia-smi || echo "warning: nvidia-smi failed"
echo
for cmd in "bench/gpu_smoke.py" "bench/layers.py --device cuda --min-time 0.3" \
           "bench/gpu_images.py --channels-last"; do
  echo "== $PY $cmd"
  # shellcheck disable=SC2086
  timeout --signal=TERM --kill-after=10 "$LIMIT" "$PY" $cmd
  rc=$?
  if [ "$rc" -eq 124 ]; then echo "error: $cmd did not finish within ${LIMIT} s" >&2; fi
  if [ "$rc" -ne 0 ]; then status=$rc; fi
  echo
done
exit "$status"
