// fastrecur._C: op registration only. Registered with TORCH_LIBRARY(fastrecur_C), so Python reaches every op
// as torch.ops.fastrecur_C.<op>; fastrecur/_ext.py loads the library and registers the ops' fake (meta)
// implementations for torch.compile and opcheck.
//
// The logic lives in headers, compiled here as one translation unit (torch's headers cost most of a
// translation unit's build time):
//   checks.h           argument checks and the error macros (ValueError / TypeError / RuntimeError)
//   cpu_kernels.h      the CPU kernels (vectorised at::vec, no torch types)
//   cuda_api.h         the torch-free interface to the CUDA kernels in kernels.cu
//   dispatch.h         CPU/CUDA dispatch of each fused kernel on validated views
//   elementwise_ops.h  the fused kernels as validated public ops
//   program.h          run_steps' program, states and blocks, validated
//   planner.h          threading mode (whole batch or per item) and workspace layout
//   workspace.h        the workspace cache and its counters
//   cpu_gemm.h         the loop's CPU GEMMs: ATen or oneDNN (with SwiGLU post-ops), the fastest per site
//   loop.h             run_steps itself
//   isa_info.h         what the build contains (CPU instruction set, CUDA kernels)
// FASTRECUR_WITH_CUDA is defined by the build when kernels.cu is compiled in.
//
// Every op that writes a tensor argument declares it in its schema (Tensor(a!)), so functionalization
// (torch.compile) and torch.library.opcheck see the mutation; none returns a tensor.

#include <Python.h>

#include <torch/library.h>

#include "elementwise_ops.h"
#include "isa_info.h"
#include "loop.h"
#include "workspace.h"

TORCH_LIBRARY(fastrecur_C, m) {
  m.def("add_rms_norm(Tensor a, Tensor b, float eps, Tensor(a!) out) -> ()");
  m.def("swiglu(Tensor gate_up, Tensor(a!) out) -> ()");
  m.def("rope_(Tensor(a!) x, Tensor cos, Tensor sin) -> ()");
  m.def("add_rms_norm_dim1(Tensor a, Tensor b, float eps, Tensor(a!) out) -> ()");
  m.def("inject_add(Tensor(a!) target, Tensor[] srcs) -> ()");
  m.def(
      "run_steps(Tensor(a!)[] states, Tensor x, Tensor program, Tensor[] weights, int[] level_offsets, "
      "Tensor? cos, Tensor? sin, int num_heads, float eps, int block_kind, int per_item=-1, int gemm=-1) -> ()");
  m.def("workspace_info() -> int[]", &fastrecur::workspace_info_op);
  m.def("clear_workspaces() -> ()", &fastrecur::clear_workspaces_op);
  m.def("has_cuda_kernels() -> bool", &fastrecur::has_cuda_kernels_op);
  m.def("cpu_isa() -> str", &fastrecur::cpu_isa_op);
  m.def("gemm_choices() -> str[]", &fastrecur::gemm_choices_op);
}

// The same implementations serve both devices: each op dispatches on its tensors' device (dispatch.h).
#define FR_IMPL_TENSOR_OPS(m)                                      \
  m.impl("add_rms_norm", &fastrecur::add_rms_norm_op);             \
  m.impl("swiglu", &fastrecur::swiglu_op);                         \
  m.impl("rope_", &fastrecur::rope_op);                            \
  m.impl("add_rms_norm_dim1", &fastrecur::add_rms_norm_dim1_op);   \
  m.impl("inject_add", &fastrecur::inject_add_op);                 \
  m.impl("run_steps", &fastrecur::run_steps_op)

TORCH_LIBRARY_IMPL(fastrecur_C, CPU, m) { FR_IMPL_TENSOR_OPS(m); }

TORCH_LIBRARY_IMPL(fastrecur_C, CUDA, m) { FR_IMPL_TENSOR_OPS(m); }

// Importing fastrecur._C loads this library, which runs the registrations above; the Python module itself is
// empty (the ops live under torch.ops.fastrecur_C).
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastrecur native ops (torch.ops.fastrecur_C)",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
