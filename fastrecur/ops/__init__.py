"""Fused ops, one per file: input validation, ``torch.library`` registration (fake impls, autograd) and an
eager reference of the same math. The kernels live in ``fastrecur.kernels`` (Triton) and ``csrc/`` (C++).

The public names are the functions (``fastrecur.ops.add_rms_norm(...)``), not the submodules of the same
name. Without Triton installed, only the eager references are importable from the submodules.
"""

try:
    from .add_rms_norm import add_rms_norm, add_rms_norm_reference, rms_norm_reference
    from .rotary_attention import rotary_attention, rotary_attention_reference
    from .stablemax_ce import softmax_cross_entropy, stablemax_cross_entropy, stablemax_cross_entropy_reference
    from .swiglu_mlp import swiglu_mlp_block, swiglu_mlp_block_reference, swiglu_reference
    from .token_mix import token_mix_block, token_mix_block_reference
except ImportError as _e:  # triton missing: the eager backend does not need these
    IMPORT_ERROR = _e
else:
    IMPORT_ERROR = None

__all__ = [
    "add_rms_norm",
    "add_rms_norm_reference",
    "rms_norm_reference",
    "rotary_attention",
    "rotary_attention_reference",
    "softmax_cross_entropy",
    "stablemax_cross_entropy",
    "stablemax_cross_entropy_reference",
    "swiglu_mlp_block",
    "swiglu_mlp_block_reference",
    "swiglu_reference",
    "token_mix_block",
    "token_mix_block_reference",
]
