#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a lent GPU machine (the device tool's `run`), from the repo root:
#   bash scripts/gpu_check.sh            (results and logs under $OUT, or gpu-out/ when OUT is unset)
# 1. builds fastrecur._C there (CUDA kernels for sm_80/sm_90), 2. runs the GPU tests (tests/test_gpu.py: the C++
# loop's CUDA kernels, CUDA graphs and the Triton backend against eager on the GPU, plus the CUDA graph engine
# test), 3. the quick benchmark and 4. the full-size ACT-step floor benchmark. Each step has its own time limit
# so a slow one cannot eat the others' time (about 9 minutes in all); every log lands in $OUT even on failure.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
cd "$ROOT"
export PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
t0=$(date +%s)
MAX_JOBS=16 timeout 240 "$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
rc=$?; echo "build rc=$rc in $(( $(date +%s) - t0 )) s"
if [[ $rc -ne 0 ]]; then tail -40 "$OUT/build.log"; exit $rc; fi
"$PY" -c "import fastrecur; print(fastrecur.backends())" | tee -a "$OUT/versions.txt"
FASTRECUR_REQUIRE_EXT=1 timeout 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
  tests/test_engine.py::test_cuda_graph_solve_equals_plain_on_gpu 2>&1 | tee "$OUT/tests.txt" | tail -15
echo "tests rc=${PIPESTATUS[0]}"
timeout 120 "$PY" -m fastrecur.bench --device cuda --quick --sections models,kernels --out "$OUT" > "$OUT/bench-quick.log" 2>&1
echo "bench --quick rc=$?"; tail -3 "$OUT/bench-quick.log"
timeout 120 "$PY" benchmarks/act_step_floor.py --device cuda --archs trm_mlp,trm --no-compile --iters 20 --iters-large 10 \
  --out "$OUT" > "$OUT/act-step-floor.log" 2>&1
echo "act_step_floor rc=$?"; grep "^|" "$OUT/act-step-floor.log" | head -12
