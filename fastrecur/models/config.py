"""Config dicts as the reference code takes them, validated strictly.

Each model declares its keys (type and default; no default = required). Unknown keys, missing keys,
wrong types and out-of-range values raise ``ValueError``/``TypeError`` naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    type: type
    default: Any = REQUIRED
    choices: Tuple[Any, ...] = ()


# Keys of HRM ACT v1 (the reference's pydantic config), plus ``causal`` which the reference training
# script passes to every model (only ``False`` exists here: these models are non-causal).
BASE_KEYS: Dict[str, Key] = {
    "batch_size": Key(int),
    "seq_len": Key(int),
    "puzzle_emb_ndim": Key(int, 0),
    "num_puzzle_identifiers": Key(int),
    "vocab_size": Key(int),
    "H_cycles": Key(int),
    "L_cycles": Key(int),
    "H_layers": Key(int),
    "L_layers": Key(int),
    "hidden_size": Key(int),
    "expansion": Key(float),
    "num_heads": Key(int),
    "pos_encodings": Key(str, choices=("rope", "learned")),
    "rms_norm_eps": Key(float, 1e-5),
    "rope_theta": Key(float, 10000.0),
    "halt_max_steps": Key(int),
    "halt_exploration_prob": Key(float),
    "forward_dtype": Key(str, "bfloat16", choices=("bfloat16", "float16", "float32")),
    "causal": Key(bool, False, choices=(False,)),
}

_NON_NEGATIVE = {"puzzle_emb_ndim", "H_layers", "puzzle_emb_len"}


class ModelConfig:
    """A validated config: attribute access to every key, ``to_dict()`` for the plain dict."""

    def __init__(self, values: Dict[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str):
        # Read _values through __dict__: copy/deepcopy/pickle probe attributes before it exists.
        values = self.__dict__.get("_values")
        if values is None or name not in values:
            raise AttributeError(name)
        return values[name]

    def __setattr__(self, name, value):
        raise AttributeError("ModelConfig is immutable; build a new model from a new dict")

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._values)

    def __repr__(self):
        return f"ModelConfig({self._values})"


def validate_config(
    config: Mapping[str, Any], keys: Mapping[str, Key], model: str, head_remainder: bool = False
) -> ModelConfig:
    """Check ``config`` against ``keys`` and fill defaults. See module docstring.

    ``head_remainder``: accept a ``hidden_size`` that ``num_heads`` does not divide (heads of ``hidden_size //
    num_heads`` channels, as the reference computes them; its transformer baseline has 12 heads on 512).
    """
    if isinstance(config, ModelConfig):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"{model} config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise ValueError(f"{model} config: unknown key(s) {unknown}; known keys: {sorted(keys)}")
    values: Dict[str, Any] = {}
    for name, key in keys.items():
        if name not in config:
            if key.default is REQUIRED:
                raise ValueError(f"{model} config: missing required key {name!r}")
            values[name] = key.default
            continue
        v = config[name]
        if key.type is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if key.type is int and isinstance(v, float) and v.is_integer():
            v = int(v)  # YAML/JSON may give 4.0
        if not isinstance(v, key.type) or (key.type is not bool and isinstance(v, bool)):
            raise TypeError(f"{model} config: {name!r} must be {key.type.__name__}, got {type(v).__name__} ({v!r})")
        if key.choices and v not in key.choices:
            raise ValueError(f"{model} config: {name!r} must be one of {list(key.choices)}, got {v!r}")
        if key.type is int and v < (0 if name in _NON_NEGATIVE else 1):
            raise ValueError(f"{model} config: {name!r} must be {'>= 0' if name in _NON_NEGATIVE else '>= 1'}, got {v}")
        if key.type is float and not math.isfinite(v):
            raise ValueError(f"{model} config: {name!r} must be finite, got {v}")
        values[name] = v
    if values["expansion"] <= 0 or values["rms_norm_eps"] <= 0 or values["rope_theta"] <= 0:
        raise ValueError(f"{model} config: expansion, rms_norm_eps and rope_theta must be > 0")
    if not 0.0 <= values["halt_exploration_prob"] <= 1.0:
        p = values["halt_exploration_prob"]
        raise ValueError(f"{model} config: 'halt_exploration_prob' must be in [0, 1], got {p}")
    hidden, heads = values["hidden_size"], values["num_heads"]
    if heads > hidden:
        raise ValueError(f"{model} config: num_heads {heads} exceeds hidden_size {hidden}")
    if hidden % heads and not head_remainder:
        raise ValueError(f"{model} config: hidden_size {hidden} is not divisible by num_heads {heads}")
    return ModelConfig(values)


def puzzle_emb_len(puzzle_emb_ndim: int, hidden_size: int, requested: int = 0) -> int:
    """Number of puzzle-embedding prefix positions: ``requested`` if non-zero, else ``ceil(ndim / hidden)``."""
    return requested if requested else -(puzzle_emb_ndim // -hidden_size)
