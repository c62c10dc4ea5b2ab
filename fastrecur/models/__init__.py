"""Drop-in HRM and TRM, and the seeds' simpler recursions, all configurations of one recursion core."""
from .act import ACTCarry, ACTModel
from .hrm import HRM
from .inner import InnerCarry
from .loss import ACTLossHead, softmax_cross_entropy, stablemax_cross_entropy
from .srm import SRM, FlatRecurrence
from .trm import TRM

__all__ = ["ACTCarry", "ACTModel", "ACTLossHead", "FlatRecurrence", "HRM", "InnerCarry", "SRM", "TRM",
           "softmax_cross_entropy", "stablemax_cross_entropy"]
