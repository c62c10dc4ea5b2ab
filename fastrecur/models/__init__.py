"""Drop-in HRM and TRM, the TRM paper's comparison architectures and the seeds' simpler recursions, all
configurations of one recursion core."""

from .ablations import TransformerBaseline, TRMHier6, TRMSingleZ
from .act import ACTCarry, ACTModel
from .hrm import HRM
from .inner import InnerCarry
from .loss import ACTLossHead, softmax_cross_entropy, stablemax_cross_entropy
from .registry import reference_loss_class, reference_model_class
from .srm import SRM, FlatRecurrence
from .trm import TRM

__all__ = [
    "ACTCarry",
    "ACTModel",
    "ACTLossHead",
    "FlatRecurrence",
    "HRM",
    "InnerCarry",
    "SRM",
    "TRM",
    "TRMHier6",
    "TRMSingleZ",
    "TransformerBaseline",
    "reference_loss_class",
    "reference_model_class",
    "softmax_cross_entropy",
    "stablemax_cross_entropy",
]
