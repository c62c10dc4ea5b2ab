#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a lent GPU machine (the device tool's `run`), from the repo root:
#   bash scripts/gpu_check.sh                     (results under $OUT, or gpu-out/ when OUT is unset)
#   GPU_STEPS="tests floor" bash scripts/gpu_check.sh   (a subset, e.g. for a second call)
# Steps, in order of importance: build fastrecur._C there (CUDA kernels for sm_80/sm_90); `tests` (tests/test_gpu.py:
# the C++ loop's CUDA kernels, CUDA graphs and the Triton backend against eager on the GPU, plus the engine's CUDA
# graph test); `floor` (benchmarks/act_step_floor.py at full size on CUDA, TRM-MLP and TRM-attention, no compile);
# `kernels` (`fastrecur bench --quick --sections kernels`); `floor_compile` (TRM-MLP with torch.compile too, last
# because its compiles take minutes: each case's row is in floor_compile.log as soon as it is done).
# GPU_BUDGET (seconds, default 520) bounds the whole run: each step gets its own limit, cut to what is left.
# The machine returns at most 8 files, so every log and result is packed into $OUT/gpu-results.tgz after each step
# (a later step's timeout cannot lose an earlier one's results). The built extension is copied to $OUT too: a later
# call can carry it back in .gpu-carry/ (then the build is skipped: FASTRECUR_GPU_PREBUILT=1).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-out}"
WORK="$ROOT/gpu-out/run"
PY="${PYTHON:-python3}"
STEPS="${GPU_STEPS:-tests floor kernels floor_compile}"
BUDGET="${GPU_BUDGET:-520}"
T0=$(date +%s)
mkdir -p "$OUT" "$WORK"
cd "$ROOT"
export PYTHONUNBUFFERED=1

pack() { tar -czf "$OUT/gpu-results.tgz" -C "$WORK" . 2>/dev/null; }
# limit STEP_MAX: the step's own limit, cut to the budget left (at least 10 s).
limit() { local left=$(( BUDGET - ($(date +%s) - T0) - 5 )); (( left < 10 )) && left=10; (( $1 < left )) && echo "$1" || echo "$left"; }

nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$WORK/versions.txt"
if [[ "${FASTRECUR_GPU_PREBUILT:-0}" == 1 ]] && ls .gpu-carry/_C*.so > /dev/null 2>&1; then
  # The package installed editable without compiling; the extension built by an earlier call is put in place.
  FASTRECUR_NO_EXT=1 "$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$WORK/build.log" 2>&1
  rc=$?; cp .gpu-carry/_C*.so .gpu-carry/_build_info.py fastrecur/; echo "prebuilt extension, install rc=$rc"
else
  MAX_JOBS=16 timeout "$(limit 200)" "$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$WORK/build.log" 2>&1
  rc=$?; echo "build rc=$rc in $(( $(date +%s) - T0 )) s"
  cp fastrecur/_C*.so fastrecur/_build_info.py "$OUT/" 2>/dev/null
fi
if [[ $rc -ne 0 ]]; then tail -40 "$WORK/build.log"; pack; exit $rc; fi
"$PY" -c "import fastrecur; print(fastrecur.backends())" | tee -a "$WORK/versions.txt"
pack

for step in $STEPS; do
  s0=$(date +%s)
  log="$WORK/$step.log"
  case "$step" in
    tests)
      # The conftest turns the Triton interpreter on for CPU runs; here the kernels must be compiled for the GPU.
      TRITON_INTERPRET=0 FASTRECUR_REQUIRE_EXT=1 timeout "$(limit 200)" "$PY" -m pytest -q -p no:cacheprovider -rfE --durations=8 \
        tests/test_gpu.py tests/test_engine.py::test_cuda_graph_solve_equals_plain_on_gpu > "$log" 2>&1
      rc=$?; grep -E "^(FAILED|ERROR)|passed|failed|skipped|slowest|^[0-9.]+s (call|setup)" "$log" | head -40 ;;
    floor)
      timeout "$(limit 150)" "$PY" benchmarks/act_step_floor.py --device cuda --archs trm_mlp,trm --no-compile \
        --iters 30 --iters-large 20 --out "$WORK" > "$log" 2>&1
      rc=$?; grep "^|" "$log" | head -30 ;;
    kernels)
      timeout "$(limit 120)" "$PY" -m fastrecur.bench --device cuda --quick --sections kernels --out "$WORK" > "$log" 2>&1
      rc=$?; tail -5 "$log" ;;
    floor_compile)
      timeout "$(limit 300)" "$PY" benchmarks/act_step_floor.py --device cuda --archs trm_mlp --iters 30 --iters-large 20 \
        --out "$WORK" > "$log" 2>&1
      rc=$?; grep "^|" "$log" | head -8 ;;
    *) echo "unknown step $step"; rc=2 ;;
  esac
  echo "== $step rc=$rc in $(( $(date +%s) - s0 )) s (total $(( $(date +%s) - T0 )) s)"
  [[ $rc -ne 0 && -f "$log" ]] && tail -30 "$log"
  pack
done
