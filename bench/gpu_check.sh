#!/usr/bin/env bash
# One prepared GPU check: the card, then WRN-28-10 training throughput and peak memory,
# rank-1 (K=4, 32 unique x 4) vs deterministic (128 unique) at 128 rows per step, bf16
# autocast, NCHW and channels_last. Run from the repository root on the GPU machine, with
# the system python3 that holds a CUDA PyTorch (nothing is installed; the repo is put on
# sys.path by the script). Takes about 1-2 minutes on an H100; stops after LIMIT seconds.
#   bash bench/gpu_check.sh            # LIMIT defaults to 300
set -uo pipefail
LIMIT="${LIMIT:-300}"
PY="${PYTHON:-python3}"
nvidia-smi || echo "warning: nvidia-smi failed"
echo
export PYTHONUNBUFFERED=1
timeout --signal=TERM --kill-after=10 "$LIMIT" "$PY" bench/gpu_images.py --channels-last "$@"
rc=$?
if [ "$rc" -eq 124 ]; then
  echo "error: bench/gpu_images.py did not finish within ${LIMIT} s" >&2
fi
exit "$rc"
