"""fastrecur: fused-kernel engine for recursive latent-reasoning models (HRM, TRM and relatives).

Quick start::

    from fastrecur.models import TRM
    model = TRM(config_dict)                 # the reference config dict
    carry = model.initial_carry(batch)
    carry, outputs = model(carry=carry, batch=batch)

``fastrecur.backends()`` says which execution backends work here and why the others do not.
"""

__version__ = "0.1.0"
__all__ = ["backends", "load_checkpoint", "save_checkpoint", "__version__"]

_LAZY = {"backends": ".backend", "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint"}


def __getattr__(name):
    # Lazy, so that `import fastrecur` (and the CLI's --help) does not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    # The lazy names are not in the module's namespace until first used: list them (dir(), tab completion).
    return sorted(set(globals()) | set(__all__))
