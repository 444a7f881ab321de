#!/usr/bin/env bash
# GPU check (< 5 min): ORT CUDA (+ TensorRT where obtainable) vs ORT CPU on one bundle.
#
#   benchmarks/gpu_check.sh BUNDLE OUT_DIR [WHEEL_OR_PARTS_DIR]
#
# The GPU machine has no registry access, so the onnxruntime-gpu wheel (~255 MB) travels in
# pieces: `split -b 55M` parts copied over several calls into WHEEL_OR_PARTS_DIR (default
# /tmp/ortgpu), reassembled here and checked against wheel.sha256 when present. edgerec itself
# is put on sys.path through a symlinked namespace (no build step on the GPU machine).
set -euo pipefail
bundle=${1:?bundle}; out=${2:?out dir}; parts=${3:-/tmp/ortgpu}
repo=$(cd "$(dirname "$0")/.." && pwd)
site=/tmp/edgerec-gpu-site
mkdir -p "$site/edgerec" "$out"
if ! PYTHONPATH=$site python3 -c "import onnxruntime, sys; sys.exit('CUDAExecutionProvider' not in onnxruntime.get_available_providers())" 2>/dev/null; then
  wheel=$(ls "$parts"/*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    wheel=$parts/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
    cat "$parts"/ortgpu.part* > "$wheel"
  fi
  if [ -f "$parts/wheel.sha256" ]; then
    echo "$(cut -d' ' -f1 "$parts/wheel.sha256")  $wheel" | sha256sum -c -
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheel"
fi
for pkg in runtime converters benchmarks sdk; do ln -sfn "$repo/$pkg" "$site/edgerec/$pkg"; done
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
PYTHONUNBUFFERED=1 timeout 240 python3 -m edgerec.benchmarks.gpu_check "$bundle" "$out" --budget-s "${BUDGET_S:-0.5}"
