"""CUDA graphs for the no-grad recursion of one ACT step (opt-in; CUDA only).

:class:`GraphCache` captures "run these schedule steps on (states, x)" -- a backend's no-grad runner
(``Backend.run_fn``: the C++ loop call or the eager Python loop) -- into a ``torch.cuda.CUDAGraph`` once per
shape, and replays it: one graph launch instead of hundreds of kernel launches per ACT step. The
result equals the un-graphed call (same kernels, same order).

Tested on a GPU by ``tests/test_gpu.py`` (every model variant gives the same outputs and states through the
graphs as without them; a graphed eval ACT step is one graph launch; the engine's q-halting solve equals the
plain solve); the CPU tests cover the cache keys, the buckets, the copy-in/copy-out and the invalidation logic
through a stand-in for the capture.

How a call works (``cache.run(steps, states, x, backend)``, ``backend`` a :class:`~fastrecur.backend.Backend`):

1. The batch size ``n`` is rounded up to a **bucket** (the next power of two, so compaction of halted rows
   does not capture a graph per batch size); rows ``n..bucket-1`` are padding (zeros at first, stale rows
   later: rows never interact, so padding cannot change real rows).
2. Key = (steps, backend, bucket, seq, hidden, dtype, device, the identity -- ``data_ptr``, dtype and shape --
   of every parameter and buffer of the inner model). A new key captures a graph: static input buffers
   (``x`` and the carried states) are allocated, the work is run twice on the cache's own side stream
   (warm-up: cuBLAS handles, the C++ workspace and SDPA's kernels are set up outside the capture), then
   captured on that stream into a memory pool shared by this cache's graphs.
3. Replay: ``x`` and the states are copied into the static buffers, the graph is replayed on the current
   stream, and the new states are copied back **into the caller's state tensors** (in place, like
   ``run_steps_cpp``).

Limits (read before use):

- **Static shapes**: one graph per (bucket, seq, hidden, dtype, device); at most ``max_graphs`` are kept
  (least recently used dropped). Each holds its static buffers and its part of the shared pool.
- **Memory pool**: the graphs of one cache share one private pool; they are replayed one at a time on one
  stream and their outputs are copied out right after each replay, which is what makes sharing safe. Do
  not replay from several threads or streams at once (the cache is not thread-safe).
- **Weights**: the graph reads the parameters' memory at replay. In-place updates (``optimizer.step()``,
  ``load_state_dict`` into existing tensors, ``p.data.copy_``) are seen by the next replay; weights cast to
  the activation dtype are re-cast inside the graph, so those are seen too. Replacing a tensor
  (``p.data = ...``, ``model.to(...)``) changes its ``data_ptr`` and the next call re-captures; the stale
  graph is dropped when evicted or on :meth:`GraphCache.clear`.
- **Workspace**: the C++ loop's workspace must exist before capture (the warm-up allocates it) and must not
  be freed or grown while a graph that captured it lives. The cache snapshots the extension's workspace
  counters after each capture and, when they changed at the next call (a workspace was allocated, grown
  or cleared anywhere, e.g. by ``fastrecur._ext.clear_workspaces()``), drops **all** its graphs and
  re-captures. A graph for a larger bucket can grow the workspace during its own warm-up; the graphs
  captured before it are dropped then too.
- **No host synchronisation inside**: the captured code must not read device values on the host (neither
  the C++ loop nor the eager levels do); RNG, dropout and data-dependent shapes are not supported.
- **No autograd**: everything runs under ``torch.no_grad()`` (the grad tail of a training step stays outside
  the graph).
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from . import get
from .base import Backend, RunFn


def bucket_size(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"batch size must be a positive int, got {n!r}")
    return 1 << (n - 1).bit_length()


def weights_key(inner: torch.nn.Module) -> Tuple:
    """Identity of the memory a graph of ``inner`` reads: (data_ptr, dtype, shape) of every parameter and buffer.

    In-place updates keep the key (and are seen by replays); replaced tensors change it."""
    return tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in itertools.chain(inner.parameters(), inner.buffers()))


@dataclass
class _Entry:
    graph: object  # has .replay()
    static_x: torch.Tensor
    static_in: Dict[str, torch.Tensor]
    static_out: Dict[str, torch.Tensor]
    replays: int = 0


@dataclass
class GraphStats:
    """Counters of a :class:`GraphCache` (for tests and tuning)."""

    captures: int = 0
    replays: int = 0
    invalidations: int = 0  # times every graph was dropped because the C++ workspace changed
    evictions: int = 0
    keys: list = field(default_factory=list)


class GraphCache:
    """Captured no-grad recursions of one inner model, one per shape (see the module docstring).

    Args:
        inner: the model's ``RecursiveInner`` (held weakly).
        max_graphs: graphs kept at most (least recently used evicted).
        bucket: round batch sizes up to powers of two (False: one graph per exact batch size).
    """

    def __init__(self, inner: torch.nn.Module, max_graphs: int = 8, bucket: bool = True):
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be a positive int, got {max_graphs!r}")
        self._inner = weakref.ref(inner)
        self.max_graphs = max_graphs
        self.bucket = bool(bucket)
        self._entries: "OrderedDict[Tuple, _Entry]" = OrderedDict()
        self._guard: Optional[Tuple[int, int]] = None
        self._pool = None
        self._streams: Dict[torch.device, object] = {}
        self.stats = GraphStats()

    # ----- public -----
    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every graph (and with the last reference, its memory)."""
        self._entries.clear()
        self._guard = None

    def key(self, steps: Tuple, backend: Union[str, Backend], x: torch.Tensor) -> Tuple:
        backend = get(backend)
        inner = self._get_inner()
        b = bucket_size(x.shape[0]) if self.bucket else x.shape[0]
        return (steps, backend.name, b) + tuple(x.shape[1:]) + (x.dtype, x.device, weights_key(inner))

    def run(
        self, steps: Sequence, states: Dict[str, torch.Tensor], x: torch.Tensor, backend: Union[str, Backend]
    ) -> None:
        """Run ``steps`` on ``states`` (updated in place) and ``x`` through a (cached) graph of ``backend``'s
        no-grad runner (:meth:`Backend.run_fn`).

        ``states`` must hold every carried state the steps read, each a contiguous [B, S, D] tensor like ``x``
        that may be written (it receives the result)."""
        backend = get(backend)
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] < 1:
            raise ValueError(f"x must be a non-empty [B, S, D] tensor, got {getattr(x, 'shape', type(x).__name__)}")
        self._check_device(x)
        steps = tuple(steps)
        carried = self._carried(states)
        for k in carried:
            t = states[k]
            if not isinstance(t, torch.Tensor) or t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
                raise ValueError(f"states[{k!r}] must be a tensor of x's shape, dtype and device")
        n = x.shape[0]
        guard = backend.workspace_state()
        if self._entries and guard != self._guard:
            self.stats.invalidations += 1
            self.clear()
        k = self.key(steps, backend, x)
        entry = self._entries.get(k)
        if entry is None:
            entry = self._new_entry(k, steps, backend, carried, x)
        else:
            self._entries.move_to_end(k)
        with torch.no_grad():
            entry.static_x[:n].copy_(x)
            for name in carried:
                entry.static_in[name][:n].copy_(states[name])
            entry.graph.replay()
            for name in carried:
                states[name].copy_(entry.static_out[name][:n])
        entry.replays += 1
        self.stats.replays += 1

    # ----- internals -----
    def _get_inner(self):
        inner = self._inner()
        if inner is None:
            raise RuntimeError("the model of this GraphCache no longer exists")
        return inner

    def _carried(self, states) -> Tuple[str, ...]:
        names = tuple(self._get_inner().schedule.states)
        missing = [s for s in names if s not in states]
        if missing:
            raise ValueError(f"states is missing {missing} (the carried states are {list(names)})")
        return names

    def _check_device(self, x: torch.Tensor) -> None:
        if x.device.type != "cuda":
            raise ValueError(f"CUDA graphs need CUDA tensors; x is on {x.device} (use the non-graph path there)")
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device, and torch.cuda.is_available() is False")

    def _new_entry(self, k, steps, backend, carried, x) -> _Entry:
        inner = self._get_inner()
        b = k[2]
        shape = (b,) + tuple(x.shape[1:])
        with torch.no_grad():
            static_x = torch.zeros(shape, dtype=x.dtype, device=x.device)
            static_in = {name: torch.zeros(shape, dtype=x.dtype, device=x.device) for name in carried}
            before = backend.workspace_state()
            graph, static_out = self._capture(backend.run_fn(inner, steps, for_capture=True), static_in, static_x)
        after = backend.workspace_state()
        if before != after and self._entries:
            # This capture's warm-up allocated or grew a workspace: graphs captured earlier may point into
            # the freed buffer.
            self.stats.invalidations += 1
            self._entries.clear()
        self._guard = after
        # Keep every output (scratch states too): the graph wrote into that memory and must keep it.
        entry = _Entry(graph, static_x, static_in, static_out)
        self._entries[k] = entry
        self.stats.captures += 1
        self.stats.keys.append(k[1:7])
        while len(self._entries) > self.max_graphs:
            self._entries.popitem(last=False)
            self.stats.evictions += 1
        return entry

    def _capture(self, fn: RunFn, static_in: Dict[str, torch.Tensor], static_x: torch.Tensor):
        """Warm up ``fn`` on a side stream, then capture it; returns (graph, outputs by state name).

        The outputs are the tensors holding the new states after a replay: for the C++ loop the static inputs
        themselves (updated in place), for the eager loop tensors allocated in the graph's pool."""
        device = static_x.device
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device=device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        out = dict(static_in)
        # The warm-up runs on copies of the state dict: the eager loop replaces its entries, and the capture
        # must read the static inputs. The C++ workspace is keyed by stream, so the warm-up on the capture
        # stream allocates the buffer the capture will use.
        graph = capture_graph(
            lambda: fn(out, static_x),
            device,
            warmup=lambda: fn(dict(static_in), static_x),
            warmups=2,
            pool=self._pool,
            stream=stream,
        )
        return graph, out


def capture_graph(
    run: Callable[[], None],
    device,
    warmup: Optional[Callable[[], None]] = None,
    warmups: int = 1,
    pool=None,
    stream=None,
):
    """One call of ``run`` captured into a ``torch.cuda.CUDAGraph``, after ``warmups`` calls of ``warmup``
    (default: ``run``) on the capture stream, so that cuBLAS handles, workspaces and lazily set-up kernels are
    allocated outside the capture (inside it they would land in the graph's pool). ``stream``: the capture
    stream (default: a new side stream); ``pool``: a pool handle shared with other graphs.

    The graph reads and writes the memory of every tensor ``run`` touched that was allocated outside it: the
    caller must keep those tensors alive as long as the graph."""
    stream = stream if stream is not None else torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmups):
            (warmup or run)()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        run()
    return graph


_CACHES: "weakref.WeakKeyDictionary[torch.nn.Module, GraphCache]" = weakref.WeakKeyDictionary()


def graphs_for(inner: torch.nn.Module) -> GraphCache:
    """The :class:`GraphCache` of ``inner`` (created on first use, dropped with the model)."""
    cache = _CACHES.get(inner)
    if cache is None:
        cache = _CACHES[inner] = GraphCache(inner)
    return cache


__all__ = ["GraphCache", "GraphStats", "bucket_size", "capture_graph", "graphs_for", "weights_key"]
