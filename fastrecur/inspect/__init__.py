"""Instruments to look inside the recursion: per-update traces and the participation ratio."""

from .pr import participation_ratio
from .trace import ActStepRecord, Trace, UpdateRecord, trace

__all__ = ["ActStepRecord", "Trace", "UpdateRecord", "participation_ratio", "trace"]
