"""fastrecur: fused-kernel engine for recursive latent-reasoning models (HRM, TRM and relatives).

Quick start::

    from fastrecur.models import TRM
    model = TRM(config_dict)                 # the reference config dict
    carry = model.initial_carry(batch)
    carry, outputs = model(carry=carry, batch=batch)

``fastrecur.backends()`` says which execution backends work here and why the others do not.
"""
from ._backends import backends
from .checkpoint import load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = ["backends", "load_checkpoint", "save_checkpoint", "__version__"]
