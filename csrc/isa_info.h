// What the loaded build contains: the x86 instruction set its CPU kernels were compiled for (set by
// csrc/build_config.py as -DFASTRECUR_CPU_ISA=...) and whether its CUDA kernels are compiled in.
#pragma once

#include <string>

namespace fastrecur {

#ifndef FASTRECUR_CPU_ISA
#define FASTRECUR_CPU_ISA default
#endif
#define FR_STRINGIFY2(x) #x
#define FR_STRINGIFY(x) FR_STRINGIFY2(x)
// The x86 instruction set the CPU kernels were compiled for (csrc/build_config.py).
inline std::string cpu_isa_op() { return FR_STRINGIFY(FASTRECUR_CPU_ISA); }

inline bool has_cuda_kernels_op() {
#ifdef FASTRECUR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace fastrecur
