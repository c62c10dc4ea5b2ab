"""fastrecur under the reference training script: one call at the top of a copy of ``pretrain.py``.

    import fastrecur.patch
    fastrecur.patch.apply()          # before the script imports its models (backend="auto")

After it, the reference code's ``load_model_class(arch.name)`` builds fastrecur's models (the pattern of
Liger-Kernel's ``apply_liger_kernel_to_*``). Works for sapientinc/HRM and SamsungSAILMontreal/TinyRecursiveModels.

What it patches (entries of ``sys.modules``; no file is touched):

- the model modules that ``arch.name`` points to -- ``models.hrm.hrm_act_v1`` and
  ``models.recursive_reasoning.{hrm, trm, trm_singlez, trm_hier6, transformers_baseline}`` -- each holding
  fastrecur's class under the reference's class name (``HierarchicalReasoningModel_ACTV1``,
  ``TinyRecursiveReasoningModel_ACTV1``, ``Model_ACTV2``): same constructor ``cls(config_dict)``, config keys
  (an unknown key is an error, where the reference's pydantic config ignores it), state-dict keys (reference
  checkpoints load), ``initial_carry(batch)`` and ``forward(carry=..., batch=...)``; the classes run on
  ``backend``. Their ``__file__`` is fastrecur's source, which the script copies next to its checkpoints.
- ``models.losses``: fastrecur's ``ACTLossHead(model, loss_type)``, ``IGNORE_LABEL_ID``,
  ``stablemax_cross_entropy`` and ``softmax_cross_entropy``.
- ``flash_attn`` (``flash_attn_func`` on PyTorch's scaled-dot-product attention) and ``adam_atan2``
  (``AdamATan2`` from :mod:`fastrecur.train.optim`), only where they cannot be imported; an importable one is
  left as it is unless ``force=True``.

What it leaves alone: everything else in the script and in the reference's ``models`` folder (``layers``,
``sparse_embedding`` -- its sign-SGD optimiser works on fastrecur's puzzle embedding, which has the same
buffers --, ``ema``, the datasets, evaluators, W&B, hydra); the reference's CUDA-only device calls (``with
torch.device("cuda")``, ``.cuda()``, the NCCL process group: the script still needs a CUDA GPU); and its
``torch.compile`` of the model (set ``DISABLE_COMPILE=1``: fastrecur's backends bring their own kernels).
The patched modules are reachable through ``importlib.import_module`` (what ``load_model_class`` uses) and
``from models.x import y``; their parent packages are not imported or changed.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Dict

from fastrecur import backend as _backend
from fastrecur.models import loss as _loss
from fastrecur.models.registry import REFERENCE_LOSSES, REFERENCE_MODELS

PACKAGE = "models"  # the reference's model package, as load_model_class's prefix "models." names it
STAND_INS = {"flash_attn": "fastrecur.patch.flash_attn", "adam_atan2": "fastrecur.patch.adam_atan2"}


def _bind(cls: type, name: str, module: str, backend: str) -> type:
    """``cls`` under the reference's class name, built as the reference's is (``cls(config_dict)``), on ``backend``."""

    def __init__(self, config_dict, backend: str = backend):
        cls.__init__(self, config_dict, backend=backend)

    doc = f"fastrecur's {cls.__module__}.{cls.__name__} as the reference's {module}.{name} (backend {backend!r}).\n\n"
    return type(
        name,
        (cls,),
        {"__init__": __init__, "__module__": module, "__qualname__": name, "__doc__": doc + (cls.__doc__ or "")},
    )


def _module(name: str, source: type, attrs: Dict[str, object]) -> types.ModuleType:
    mod = types.ModuleType(name, f"fastrecur stand-in for the reference module {name!r} (fastrecur.patch).")
    mod.__file__ = inspect.getsourcefile(source)  # the script copies its model's source file into the run folder
    mod.__dict__.update(attrs)
    mod.__all__ = sorted(attrs)
    return mod


def _importable(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def apply(backend: str = "auto", *, force: bool = False) -> Dict[str, str]:
    """Make the reference training script build fastrecur's models (see the module docstring for what changes).

    Call it before the script imports ``models.*``, ``flash_attn`` or ``adam_atan2``; calling it again rebinds the
    model classes to the new ``backend``.

    Args:
        backend: what the models run on: "auto", "eager", "triton" or "cpp" (see ``fastrecur.backends()``).
        force: also replace ``flash_attn`` and ``adam_atan2`` when they are importable.
    Returns:
        ``{module name: what it now is}`` for every entry of ``sys.modules`` set, e.g.
        ``{"models.recursive_reasoning.trm": "fastrecur TRM", "adam_atan2": "fastrecur stand-in", ...}``;
        a stand-in left out because the real module imports is reported as ``"left as installed"``.
    Raises:
        ValueError: an unknown ``backend``; TypeError: ``force`` not a bool.
    """
    _backend.validate_name(backend)
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool, got {type(force).__name__}")
    report: Dict[str, str] = {}
    for module, classes in REFERENCE_MODELS.items():
        full = f"{PACKAGE}.{module}"
        attrs = {name: _bind(cls, name, full, backend) for name, cls in classes.items()}
        sys.modules[full] = _module(full, next(iter(classes.values())), attrs)
        report[full] = "fastrecur " + ", ".join(cls.__name__ for cls in classes.values())
    for module, classes in REFERENCE_LOSSES.items():
        full = f"{PACKAGE}.{module}"
        attrs = dict(
            classes,
            IGNORE_LABEL_ID=_loss.IGNORE_LABEL_ID,
            stablemax_cross_entropy=_loss.stablemax_cross_entropy,
            softmax_cross_entropy=_loss.softmax_cross_entropy,
        )
        sys.modules[full] = _module(full, _loss.ACTLossHead, attrs)
        report[full] = "fastrecur " + ", ".join(classes)
    for name, stand_in in STAND_INS.items():
        if not force and _importable(name) and not getattr(sys.modules[name], "__name__", "").startswith("fastrecur."):
            report[name] = "left as installed"
            continue
        sys.modules[name] = importlib.import_module(stand_in)
        report[name] = "fastrecur stand-in"
    return report


__all__ = ["apply"]
