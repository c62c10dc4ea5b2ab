"""Pure Triton kernels and their launchers, one file per fused op (installed as ``fastrecur.kernels``).

Nothing here knows about models: each launcher takes tensors, checks nothing beyond what the kernel
needs, allocates outputs and launches. Input validation and autograd live in ``fastrecur.ops``.
"""
