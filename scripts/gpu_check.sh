#!/usr/bin/env bash
# Everything that needs a GPU, in ONE call on a lent GPU machine (the device tool's `run`, <= 600 s), from the repo
# root:
#   bash scripts/gpu_check.sh                          (results under $OUT, or gpu-out/ when OUT is unset)
#   GPU_STEPS="train" GPU_TRAIN_CASES=trm_maze,trm_arc,trm_maze_768,trm_mlp_sudoku_128 bash scripts/gpu_check.sh
#                                                      (a 2nd call: the cases the first did not reach; see train.log)
#   GPU_DRY_RUN=1 OUT=/tmp/x bash scripts/gpu_check.sh   (on a CPU: prints the commands and their limits only)
#
# Steps, in order of importance, each with its own time limit cut to what is left of GPU_BUDGET (default 560 s):
#   build     fastrecur._C with its CUDA kernels (sm_80/sm_90), 16 jobs: ~45-60 s on an H100. Skipped when the
#             extension is already built with CUDA kernels (a warm machine keeps ignored build outputs between
#             calls) or carried in .gpu-carry/ (FASTRECUR_GPU_PREBUILT=1).
#   tests     tests/test_gpu.py (the CUDA kernels, CUDA graphs, Triton against eager), tests/test_sync_free.py (a
#             training step under torch.cuda.set_sync_debug_mode("error")), the engine's CUDA-graph solve.
#   train     benchmarks/train_step.py at the papers' shapes (issue 15): eager, torch.compile, triton, cpp,
#             cpp + CUDA graphs and the floor per case, in the order of GPU_TRAIN_CASES (default: TRM-MLP Sudoku
#             768, HRM Sudoku 768, TRM Maze 192, TRM ARC 192, TRM Maze 768). It gets its own budget and skips what
#             does not fit (torch.compile needs ~150 s left); results are rewritten after every case.
#   roofline  python -m fastrecur.bench.roofline --device cuda (each loop kernel against a copy of its bytes).
#   floor     benchmarks/act_step_floor.py, the eval ACT step against its GEMM floor (TRM-MLP bf16, no compile).
#   kernels   `fastrecur bench --quick --sections kernels` (not in the default list).
#   cpu       the host CPU, for issue 16's AMX goal (not in the default list; a 2nd call: GPU_STEPS="cpu"): when
#             lscpu shows amx_bf16, the CPU kernel roofline and the eval ACT step against its GEMM floor in bf16 and
#             fp32 at batches 1, 8 and 64 on all the host's cores (a GPU host is often a Xeon with AMX); otherwise
#             it only records lscpu.
# The machine returns at most 8 files, so every log and result is packed into $OUT/gpu-results.tgz after each step
# (a later step's timeout cannot lose an earlier one's results); the built extension is copied to $OUT too (carry it
# back in .gpu-carry/ for a call on a fresh machine). torch.compile's caches live in gpu-out/ (TORCHINDUCTOR_CACHE_DIR,
# TRITON_CACHE_DIR): a second call on the same warm machine compiles from them.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-out}"
WORK="$ROOT/gpu-out/run"
PY="${PYTHON:-python3}"
STEPS="${GPU_STEPS:-build tests train roofline floor}"
BUDGET="${GPU_BUDGET:-560}"
TRAIN_CASES="${GPU_TRAIN_CASES:-trm_mlp_sudoku,hrm_sudoku,trm_maze,trm_arc,trm_maze_768}"
TRAIN_ARGS="${GPU_TRAIN_ARGS:-}"
DRY="${GPU_DRY_RUN:-0}"
T0=$(date +%s)
mkdir -p "$OUT" "$WORK" "$ROOT/gpu-out/cache"
cd "$ROOT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$ROOT/gpu-out/cache/inductor" TRITON_CACHE_DIR="$ROOT/gpu-out/cache/triton"

pack() { tar -czf "$OUT/gpu-results.tgz" -C "$WORK" . 2>/dev/null; }
# limit STEP_MAX [RESERVE]: the step's own limit, cut to the budget left less RESERVE s kept for later steps (>= 10 s).
limit() {
  local left=$(( BUDGET - ($(date +%s) - T0) - 5 - ${2:-0} ))
  (( left < 10 )) && left=10
  (( $1 < left )) && echo "$1" || echo "$left"
}
# run LIMIT CMD...: the command under `timeout`, or (GPU_DRY_RUN=1) only printed.
run() {
  local lim=$1; shift
  if [[ "$DRY" == 1 ]]; then echo "[dry run, limit ${lim} s] $*"; return 0; fi
  timeout "$lim" "$@"
}

if [[ "$DRY" != 1 ]]; then
  nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton',
    triton.__version__, torch.cuda.get_device_name())" | tee "$WORK/versions.txt"
fi

ext_ready() {
  "$PY" -c "from fastrecur import _ext; import sys; sys.exit(0 if _ext.has_cuda_kernels() else 1)" 2>/dev/null
}

for step in $STEPS; do
  s0=$(date +%s)
  log="$WORK/$step.log"
  rc=0
  case "$step" in
    build)
      if [[ "${FASTRECUR_GPU_PREBUILT:-0}" == 1 ]] && ls .gpu-carry/_C*.so > /dev/null 2>&1; then
        # The package installed editable without compiling; the extension built by an earlier call is put in place.
        FASTRECUR_NO_EXT=1 run "$(limit 60)" "$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$log" 2>&1
        rc=$?; cp .gpu-carry/_C*.so .gpu-carry/_build_info.py fastrecur/; echo "prebuilt extension, install rc=$rc"
      elif [[ "$DRY" != 1 ]] && ext_ready; then
        echo "extension already built with CUDA kernels on this machine: build skipped" | tee "$log"
      else
        MAX_JOBS=16 run "$(limit 150)" "$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$log" 2>&1
        rc=$?; echo "build rc=$rc"
        [[ "$DRY" != 1 ]] && cp fastrecur/_C*.so fastrecur/_build_info.py "$OUT/" 2>/dev/null
      fi
      [[ "$DRY" != 1 ]] && "$PY" -c "import fastrecur.backend as b; print(b.backends())" | tee -a "$WORK/versions.txt"
      if [[ $rc -ne 0 ]]; then tail -40 "$log"; pack; exit $rc; fi ;;
    tests)
      # The conftest turns the Triton interpreter on for CPU runs; here the kernels must be compiled for the GPU.
      TRITON_INTERPRET=0 FASTRECUR_REQUIRE_EXT=1 run "$(limit 100 300)" "$PY" -m pytest -q -p no:cacheprovider -rfEX \
        --durations=8 tests/test_gpu.py tests/test_sync_free.py \
        tests/test_engine.py::test_cuda_graph_solve_equals_plain_on_gpu > "$log" 2>&1
      rc=$?; grep -E "^(FAILED|ERROR|XPASS)|passed|failed|skipped|slowest|^[0-9.]+s (call|setup)" "$log" | head -40 ;;
    train)
      # Leave 70 s for the roofline and the act-step floor after it; the benchmark stops 15 s before its limit.
      lim=$(limit 480 70)
      run "$lim" "$PY" benchmarks/train_step.py --device cuda --cases "$TRAIN_CASES" --budget-s $(( lim - 15 )) \
        --iters 20 --case-time-s 8 --eval-iters 3 --max-batch estimate --out "$WORK" $TRAIN_ARGS > "$log" 2>&1
      rc=$?; grep -E '^\{|^## |^\| (eager|compile|triton|cpp|cpp_graphs|\*\*floor)|^Fastest|^Floor' "$log" | head -60 ;;
    roofline)
      run "$(limit 40 30)" "$PY" -m fastrecur.bench.roofline --device cuda --dtypes bfloat16 --batches 1,64,768 \
        --rounds 20 --out "$WORK" > "$log" 2>&1
      rc=$?; grep "^|" "$log" | head -24 ;;
    floor)
      # The kernel roofline has its own step above: not again here, where act_step_floor.py offers to skip it.
      extra=""; grep -q -- "--no-roofline" benchmarks/act_step_floor.py && extra="--no-roofline"
      run "$(limit 60)" "$PY" benchmarks/act_step_floor.py --device cuda --archs trm_mlp --dtypes bfloat16 \
        --batches 1,64 --no-compile --iters 30 --iters-large 20 $extra --out "$WORK" > "$log" 2>&1
      rc=$?; grep "^|" "$log" | head -20 ;;
    kernels)
      run "$(limit 120)" "$PY" -m fastrecur.bench --device cuda --quick --sections kernels --out "$WORK" > "$log" 2>&1
      rc=$?; tail -5 "$log" ;;
    cpu)
      lscpu > "$WORK/lscpu.txt" 2>&1
      if [[ "$DRY" != 1 ]] && ! grep -qw amx_bf16 "$WORK/lscpu.txt"; then
        echo "no AMX-BF16 on this host CPU: cpu step skipped" | tee "$log"
      else
        run "$(limit 60 200)" "$PY" -m fastrecur.bench.roofline --device cpu --batches 1,8,64 --rounds 10 \
          --out "$WORK" > "$log" 2>&1
        run "$(limit 400)" "$PY" benchmarks/act_step_floor.py --device cpu --archs trm_mlp \
          --dtypes bfloat16,float32 --batches 1,8,64 --no-compile --iters 5 --iters-large 2 --no-roofline \
          --cpp-gemms aten,onednn,onednn_fused --out "$WORK" >> "$log" 2>&1
        run "$(limit 60)" "$PY" -m fastrecur.bench.gemm_fusion --threads 1 --batches 1,8 --out "$WORK" >> "$log" 2>&1
        rc=$?; grep "^|" "$log" | head -60
      fi ;;
    *) echo "unknown step $step"; rc=2 ;;
  esac
  echo "== $step rc=$rc in $(( $(date +%s) - s0 )) s (total $(( $(date +%s) - T0 )) s)"
  [[ $rc -ne 0 && -f "$log" ]] && tail -30 "$log"
  if [[ "$DRY" == 1 ]]; then cat "$log" 2>/dev/null; else pack; fi
done
exit 0
