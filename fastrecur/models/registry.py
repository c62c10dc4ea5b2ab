"""The reference code's model names and fastrecur's classes for them.

The reference training scripts name a model ``module@Class`` in ``arch.name`` (``load_model_class`` imports
``models.<module>`` and takes ``Class``) and the loss head in ``arch.loss.name``. These tables say which
fastrecur class stands for each; a name that is not in them is refused, never approximated by another model.
"""

from __future__ import annotations

from typing import Dict

from .ablations import TransformerBaseline, TRMHier6, TRMSingleZ
from .hrm import HRM
from .loss import ACTLossHead
from .trm import TRM

# module (under the reference's ``models`` package) -> {class name: fastrecur class}
REFERENCE_MODELS: Dict[str, Dict[str, type]] = {
    "hrm.hrm_act_v1": {"HierarchicalReasoningModel_ACTV1": HRM},  # sapientinc/HRM
    # SamsungSAILMontreal/TinyRecursiveModels
    "recursive_reasoning.hrm": {"HierarchicalReasoningModel_ACTV1": HRM},
    "recursive_reasoning.trm": {"TinyRecursiveReasoningModel_ACTV1": TRM},
    "recursive_reasoning.trm_singlez": {"TinyRecursiveReasoningModel_ACTV1": TRMSingleZ},
    "recursive_reasoning.trm_hier6": {"TinyRecursiveReasoningModel_ACTV1": TRMHier6},
    "recursive_reasoning.transformers_baseline": {"Model_ACTV2": TransformerBaseline},
}
REFERENCE_LOSSES: Dict[str, Dict[str, type]] = {"losses": {"ACTLossHead": ACTLossHead}}


def _lookup(identifier: str, table: Dict[str, Dict[str, type]], what: str) -> type:
    if not isinstance(identifier, str) or identifier.count("@") != 1:
        raise ValueError(f"{what} name must be 'module@Class', got {identifier!r}")
    module, cls = identifier.split("@")
    if cls not in table.get(module, {}):
        known = sorted(f"{m}@{c}" for m, classes in table.items() for c in classes)
        raise ValueError(f"{identifier!r} is not a {what} fastrecur implements; it implements {known}")
    return table[module][cls]


def reference_model_class(identifier: str) -> type:
    """fastrecur's class for a reference ``arch.name`` such as
    ``recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1``.

    Raises:
        ValueError: naming ``identifier`` when fastrecur does not implement it (or it is not ``module@Class``).
    """
    return _lookup(identifier, REFERENCE_MODELS, "model")


def reference_loss_class(identifier: str) -> type:
    """fastrecur's class for a reference ``arch.loss.name`` (``losses@ACTLossHead``); ``ValueError`` otherwise."""
    return _lookup(identifier, REFERENCE_LOSSES, "loss head")


__all__ = ["REFERENCE_LOSSES", "REFERENCE_MODELS", "reference_loss_class", "reference_model_class"]
