"""Stand-in for the ``adam-atan2`` package where it is not installed (``fastrecur.patch.apply`` registers it as
``adam_atan2``): :class:`fastrecur.train.optim.AdamATan2`, the same update in PyTorch, same constructor
``AdamATan2(params, lr, betas, weight_decay)``."""

from fastrecur.train.optim import AdamATan2

__all__ = ["AdamATan2"]
