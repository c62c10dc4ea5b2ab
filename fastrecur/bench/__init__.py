"""``fastrecur bench`` / ``python -m fastrecur.bench``: fastrecur against eager PyTorch and torch.compile.

Four sections, all written to ``OUT/<device>-<date>/`` as ``results.json``, ``results.md`` and ``speedup.png``
(the plot needs matplotlib; without it the run says so and skips it):

* **kernels**: every fused op (add_rms_norm, swiglu_mlp_block, token_mix_block, rotary_attention,
  stablemax_cross_entropy) against the eager op sequence it replaces (the models' eager code) and
  ``torch.compile`` of that sequence, forward and forward+backward, at TRM-Sudoku (B=768, S=97, D=512),
  HRM-Sudoku (S=82) and TRM-Maze (S=916) shapes (the batch is scaled down by ``--quick``). Median time,
  achieved GB/s and TFLOP/s computed from the bytes and FLOPs the op must move (:func:`op_cost`), the
  fraction of a roofline measured in the same run (a device copy and a large matmul), peak memory on CUDA.
* **models**: one training step (ACT step + backward + optimizer step) and a 16-step solve for HRM,
  TRM-attention, TRM-MLP, SRM and FlatRecurrence per backend (eager, torch.compile, fastrecur triton,
  fastrecur cpp; on CUDA also torch.compile with CUDA graphs for the solve): puzzles/s, peak memory, and the
  ratio to the **GEMM floor** -- the same step's GEMMs alone, timed in the same process. On a CPU an
  HRM/TRM step is GEMM-bound even at batch 1, so the floor, not eager, says how much is left on the table.
* **counters** (device independent, measured on the CPU too): kernel launches per eval ACT step and per
  training step for each backend (ATen kernels from the profiler, Triton launches counted at the
  launchers, the C++ loop's own native op count) and the bytes saved for backward per training step
  (``torch.autograd.graph.saved_tensors_hooks``).
* **grad_cycles**: TRM/SRM with ``grad_cycles`` 1..H_cycles: saved-for-backward bytes and step time, i.e.
  what backpropagating through more recursion cycles costs in memory.

On the CPU the Triton kernels run only through the interpreter, which says nothing about speed: they are
skipped there with the reason recorded, unless ``--triton-cpu`` is given with ``TRITON_INTERPRET=1`` set.
Only their launch counts are measured on the CPU (through the interpreter, in a subprocess, at a small
hidden size with the same schedule: launch counts do not depend on the sizes).

``python -m fastrecur.bench --readout DIR/results.json`` prints the README "Results" section from a JSON.
Every number in it is measured; nothing is extrapolated.

Layout: ``common`` (constants, environment, timing), ``kernels``, ``models`` (with the GEMM floor),
``counters``, ``report`` (markdown, plot, readout) and ``cli``. Everything is re-exported here, so
``from fastrecur.bench import gemm_floor_fn`` and ``fastrecur.bench.main()`` work as before.
"""

from .cli import add_arguments, main, run  # noqa: F401
from .common import *  # noqa: F401,F403
from .common import _loadavg, _sync  # noqa: F401  (used by benchmarks/act_step_floor.py)
from .counters import *  # noqa: F401,F403
from .kernels import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .report import *  # noqa: F401,F403
