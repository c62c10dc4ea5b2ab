// The workspace cache of run_steps: one flat buffer per (device, CUDA stream, dtype), kept process-wide and
// grown (never shrunk) when a call needs more; clear_workspaces() releases it. workspace_info() reports how
// many buffers were ever allocated (a repeated call with the same shapes must allocate nothing new), the
// bytes held, and what the last call did (native ops issued, threading mode).
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#ifdef FASTRECUR_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace fastrecur {

struct Workspace {
  std::mutex mu;  // held for a whole run_steps call: the buffer is not shared between concurrent calls
  at::Tensor buf;
};

// (device type, device index, CUDA stream id or 0, dtype): calls on different streams get different
// buffers, so work queued on one stream never races with another stream's use of the buffer.
using WsKey = std::tuple<int, int, int64_t, int>;

inline std::mutex g_ws_mu;
// Never destroyed: a static destructor runs after the CUDA runtime has shut down, and freeing a CUDA buffer
// then aborts the process at exit (seen on an H100 with PYTORCH_NO_CUDA_MEMORY_CACHING=1). The OS reclaims it.
inline std::map<WsKey, std::shared_ptr<Workspace>>& g_ws = *new std::map<WsKey, std::shared_ptr<Workspace>>();
inline std::atomic<int64_t> g_ws_allocs{0};
// What the last run_steps call did (workspace_info reports it): native ops issued, threading mode.
inline std::atomic<int64_t> g_last_native_ops{0};
inline std::atomic<int64_t> g_last_per_item{0};

inline std::shared_ptr<Workspace> workspace_for(const at::Tensor& x) {
  int64_t stream = 0;
#ifdef FASTRECUR_WITH_CUDA
  if (x.is_cuda()) stream = c10::cuda::getCurrentCUDAStream(x.device().index()).id();
#endif
  const WsKey key{static_cast<int>(x.device().type()), static_cast<int>(x.device().index()), stream,
                  static_cast<int>(x.scalar_type())};
  std::lock_guard<std::mutex> lock(g_ws_mu);
  auto& ws = g_ws[key];
  if (!ws) ws = std::make_shared<Workspace>();
  return ws;
}

inline std::vector<int64_t> workspace_info_op() {
  std::lock_guard<std::mutex> lock(g_ws_mu);
  int64_t bytes = 0;
  for (const auto& kv : g_ws) {
    if (kv.second->buf.defined()) bytes += kv.second->buf.nbytes();
  }
  return {g_ws_allocs.load(), static_cast<int64_t>(g_ws.size()), bytes, g_last_native_ops.load(),
          g_last_per_item.load()};
}

inline void clear_workspaces_op() {
  std::lock_guard<std::mutex> lock(g_ws_mu);
  g_ws.clear();  // a call in flight keeps its shared_ptr alive until it finishes
}

// The buffer of `ws` as at least `numel` elements of x's dtype and device (the caller holds ws->mu).
inline at::Tensor workspace_buffer(Workspace& ws, int64_t numel, const at::Tensor& x) {
  if (!ws.buf.defined() || ws.buf.numel() < numel) {
    ws.buf = at::Tensor();  // release the old buffer before allocating the larger one
    ws.buf = at::empty({numel}, x.options());
    g_ws_allocs.fetch_add(1);
  }
  return ws.buf;
}

inline void record_last_call(int64_t native_ops, bool per_item) {
  g_last_native_ops.store(native_ops);
  g_last_per_item.store(per_item ? 1 : 0);
}

}  // namespace fastrecur
