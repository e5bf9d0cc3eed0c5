"""Validation of what files describe before anything is built from it: architecture kwargs and JSON sidecars.

A weight file's sidecar (``encoder.json``, ``model.json``, a FIQA model's ``.json``) says which network to build,
and a user's ``--set`` or ``backbone_overrides`` changes it. Both come from outside: a missing key, a string
where a number belongs, ``embed_dim: 1e9`` or ``depth: 1000000`` must become one clear error, raised before a
single tensor is allocated. This module holds the one schema of :class:`~medvit.shared.backbone.VisionTransformer`
kwargs (types, bounds, and a parameter count estimated from them) and the one reader of JSON sidecars (size,
nesting, top-level object, ``format`` / ``format_version`` types, then an app's own fields).

It imports neither torch nor the backbone at module level, so configs can validate overrides cheaply.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit.shared.errors import ConfigError, MedvitError, WeightsError

__all__ = [
    "ARCH_CHECKS",
    "MAX_JSON_DEPTH",
    "MAX_JSON_VALUES",
    "MAX_PARAMETERS",
    "MAX_SIDECAR_BYTES",
    "SchemaError",
    "SidecarSchema",
    "check_arch_kwargs",
    "estimate_parameters",
    "nesting_problem",
    "parse_arch_overrides",
    "read_json_sidecar",
    "validate_sidecar",
]

#: Largest backbone we agree to build, counted before allocation (ViT-g is 1.0 B, ViT-22B far beyond any use here).
MAX_PARAMETERS = 4_000_000_000
#: Sidecars are a few KB; a larger one is not ours (and reading it whole would be the attack).
MAX_SIDECAR_BYTES = 1 << 20
#: Our sidecars nest 3 levels; JSON nested thousands deep would exhaust the recursion limit of any walker.
MAX_JSON_DEPTH = 32
#: Values a sidecar or config may hold (counted through YAML aliases); ours hold a few hundred.
MAX_JSON_VALUES = 100_000
#: Tokens of one input at ``img_size``: the position table is tokens x width (16.7 M tokens is a 4096^2 image
#: in 1-pixel patches; no ViT attends over that).
MAX_TOKENS = 1 << 24

# Activation names of ``layers.make_activation`` (kept here so that this module needs no torch; a test keeps
# both lists equal).
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "relu6", "silu")


class SchemaError(ValueError):
    """A value that breaks the schema; the message says which key and why, the caller adds the file or option."""


# =============================================================================================== value checks
Check = Callable[[Any], "str | None"]
"""A check returns None for a good value, else the problem in a few words (``"must be an integer in [1, 8]"``)."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def int_in(lo: int, hi: int) -> Check:
    """An integer (not a bool, not ``1e9`` as a float) in ``[lo, hi]``."""

    def check(value: Any) -> str | None:
        if _is_int(value) and lo <= value <= hi:
            return None
        return f"must be an integer in [{lo}, {hi}], got {_show(value)}"

    return check


def real_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A finite number in the interval (ends open or closed)."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"

    def check(value: Any) -> str | None:
        if _is_real(value):
            v = float(value)
            if (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi):
                return None
        return f"must be a finite number in {left}{lo:g}, {hi:g}{right}, got {_show(value)}"

    return check


def one_of(*choices: Any) -> Check:
    """One of ``choices`` (compared with type, so ``1`` is not ``True``)."""

    def check(value: Any) -> str | None:
        if any(type(value) is type(c) and value == c for c in choices):
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}, got {_show(value)}"

    return check


def optional(inner: Check) -> Check:
    """None, or what ``inner`` accepts."""

    def check(value: Any) -> str | None:
        return None if value is None else inner(value)

    return check


def int_or_ints(lo: int, hi: int, lengths: Sequence[int]) -> Check:
    """An integer in ``[lo, hi]`` or a list of ``lengths`` such integers (a size per spatial axis)."""
    item = int_in(lo, hi)

    def check(value: Any) -> str | None:
        if _is_int(value):
            return item(value)
        if isinstance(value, (list, tuple)) and len(value) in lengths:
            for i, v in enumerate(value):
                problem = item(v)
                if problem:
                    return f"[{i}] {problem}"
            return None
        sizes = " or ".join(str(n) for n in lengths)
        return f"must be an integer or a list of {sizes} integers in [{lo}, {hi}], got {_show(value)}"

    return check


def list_of(inner: Check, *, max_len: int) -> Check:
    """A list of at most ``max_len`` items, each accepted by ``inner``."""

    def check(value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or len(value) > max_len:
            return f"must be a list of at most {max_len} items, got {_show(value)}"
        for i, v in enumerate(value):
            problem = inner(v)
            if problem:
                return f"[{i}] {problem}"
        return None

    return check


def identifier(value: Any) -> str | None:
    """A Python identifier of at most 64 characters (a token name becomes ``<name>_token``)."""
    if isinstance(value, str) and value.isidentifier() and len(value) <= 64:
        return None
    return f"must be an identifier, got {_show(value)}"


def mapping_of(checks: Mapping[str, Check], *, required: Sequence[str] = (), extra: bool = False) -> Check:
    """A JSON object whose known keys pass their checks; ``required`` keys must be present; unknown keys are an
    error unless ``extra``."""

    def check(value: Any) -> str | None:
        if not isinstance(value, Mapping):
            return f"must be an object, got {type(value).__name__}"
        missing = [k for k in required if k not in value]
        if missing:
            return f"missing key(s) {', '.join(missing)}"
        for key, v in value.items():
            if key not in checks:
                if extra:
                    continue
                return _unknown_key(str(key), checks)
            problem = checks[key](v)
            if problem:
                return f"{key} {problem}"
        return None

    return check


def _unknown_key(key: str, known: Mapping[str, Any] | Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"


# =============================================================================================== architecture
# One check per VisionTransformer keyword that a JSON file or a --set can carry (block_fn / mlp_layer are classes
# and never come from a file). A test keeps these keys equal to the constructor's signature.
ARCH_CHECKS: dict[str, Check] = {
    "img_size": int_or_ints(1, 65536, (2, 3)),
    "patch_size": int_or_ints(1, 1024, (2, 3)),
    "in_chans": int_in(1, 4096),
    "num_classes": int_in(0, 10_000_000),
    "global_pool": one_of("token", "avg", "none"),
    "embed_dim": int_in(1, 32768),
    "depth": int_in(1, 512),
    "num_heads": int_in(1, 32768),
    "mlp_ratio": real_in(0.0, 64.0, lo_open=True),
    "qkv_bias": one_of(True, False),
    "act": one_of(*ACTIVATIONS),
    "norm_eps": real_in(0.0, 1.0, lo_open=True, hi_open=True),
    "class_token": one_of(True, False),
    "extra_tokens": list_of(identifier, max_len=64),
    "reg_tokens": int_in(0, 1024),
    "pos_embed": one_of("learn", "sincos", "none"),
    "pos_embed_prefix": one_of(True, False),
    "fc_norm": optional(one_of(True, False)),
    "init_values": optional(real_in(-1e6, 1e6)),
    "drop_rate": real_in(0.0, 1.0, hi_open=True),
    "attn_drop_rate": real_in(0.0, 1.0, hi_open=True),
    "drop_path_rate": real_in(0.0, 1.0, hi_open=True),
    "patch_bias": one_of(True, False),
    "dynamic_img_size": one_of(True, False),
}


@functools.cache
def _arch_defaults() -> dict[str, Any]:
    # The constructor's own defaults, read from its signature so there is one source of truth.
    from medvit.shared.backbone.vit import VisionTransformer

    params = inspect.signature(VisionTransformer.__init__).parameters
    return {k: p.default for k, p in params.items() if k in ARCH_CHECKS}


def _sizes(value: Any, n: int) -> tuple[int, ...]:
    return (int(value),) * n if _is_int(value) else tuple(int(v) for v in value)


def estimate_parameters(kwargs: Mapping[str, Any]) -> int:
    """Number of values a ``VisionTransformer(**kwargs)`` allocates (parameters and the position table).

    Computed from the kwargs alone (no torch), after :func:`check_arch_kwargs` accepted their types, so that a
    sidecar asking for a 10-billion-parameter model is refused before it costs any memory. Counts the standard
    block (qkv, proj, MLP, two norms, optional LayerScale).

    Args:
        kwargs: complete constructor kwargs (missing ones take the constructor's defaults).

    Returns:
        The count (exact for the standard block and head).
    """
    kw = {**_arch_defaults(), **kwargs}
    nd = 2 if _is_int(kw["patch_size"]) else len(kw["patch_size"])
    patch, img = _sizes(kw["patch_size"], nd), _sizes(kw["img_size"], nd)
    d, depth, c = int(kw["embed_dim"]), int(kw["depth"]), int(kw["in_chans"])
    hidden = int(d * float(kw["mlp_ratio"]))
    tokens = math.prod(max(s // p, 0) for s, p in zip(img, patch, strict=True))
    prefix = int(bool(kw["class_token"])) + len(kw["extra_tokens"]) + int(kw["reg_tokens"])
    total = d * c * math.prod(patch) + d * bool(kw["patch_bias"])  # patch embedding
    total += prefix * d
    if kw["pos_embed"] != "none":
        total += (tokens + (prefix if kw["pos_embed_prefix"] else 0)) * d
    qkv = 3 * d * d + 3 * d * bool(kw["qkv_bias"])
    block = 2 * d + qkv + d * d + d + 2 * d + (d * hidden + hidden) + (hidden * d + d)
    if kw["init_values"] is not None:
        block += 2 * d  # LayerScale gammas
    total += depth * block + 2 * d  # blocks, then norm or fc_norm
    if int(kw["num_classes"]) > 0:
        total += d * int(kw["num_classes"]) + int(kw["num_classes"])
    return total


def check_arch_kwargs(kwargs: Any, *, partial: bool = False) -> dict[str, Any]:
    """Validate VisionTransformer kwargs from a file or the command line, before any allocation.

    Args:
        kwargs: the kwargs (a JSON object); unknown keys are errors (with the closest known key).
        partial: only the given keys, each on its own (overrides that a complete set will later absorb). Otherwise
            the set is complete: dimensions must agree (2D/3D sizes, heads dividing the width, at least one
            patch), and the estimated parameter count must stay under :data:`MAX_PARAMETERS`.

    Returns:
        ``dict(kwargs)``.

    Raises:
        SchemaError: the first problem, naming the key (``embed_dim must be an integer in [1, 32768], got 1e9``).
    """
    if not isinstance(kwargs, Mapping):
        raise SchemaError(f"architecture must be an object of VisionTransformer arguments, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if not isinstance(key, str) or key not in ARCH_CHECKS:
            raise SchemaError(f"architecture: {_unknown_key(str(key), ARCH_CHECKS)}")
        problem = ARCH_CHECKS[key](value)
        if problem:
            raise SchemaError(f"architecture: {key} {problem}")
    if partial:
        return dict(kwargs)
    kw = {**_arch_defaults(), **kwargs}
    nd = 2 if _is_int(kw["patch_size"]) else len(kw["patch_size"])
    if not _is_int(kw["img_size"]) and len(kw["img_size"]) != nd:
        raise SchemaError(f"architecture: img_size {list(kw['img_size'])} has not the {nd} axes of patch_size")
    patch, img = _sizes(kw["patch_size"], nd), _sizes(kw["img_size"], nd)
    if any(s < p for s, p in zip(img, patch, strict=True)):
        raise SchemaError(f"architecture: img_size {list(img)} is smaller than one patch {list(patch)}")
    tokens = math.prod(s // p for s, p in zip(img, patch, strict=True))
    if tokens > MAX_TOKENS:
        raise SchemaError(
            f"architecture: img_size {list(img)} in patches of {list(patch)} gives {tokens:,} tokens "
            f"(limit {MAX_TOKENS:,})"
        )
    if kw["embed_dim"] % kw["num_heads"]:
        raise SchemaError(f"architecture: embed_dim {kw['embed_dim']} is not divisible by num_heads {kw['num_heads']}")
    if kw["global_pool"] == "token" and not (kw["class_token"] or kw["extra_tokens"] or kw["reg_tokens"]):
        raise SchemaError("architecture: global_pool 'token' needs a class, extra or register token")
    n_params = estimate_parameters(kw)
    if n_params > MAX_PARAMETERS:
        raise SchemaError(
            f"architecture: about {n_params:,} parameters (embed_dim {kw['embed_dim']}, depth {kw['depth']}, "
            f"{tokens:,} tokens), more than the {MAX_PARAMETERS:,} medvit builds"
        )
    return dict(kwargs)


def parse_arch_overrides(items: Sequence[str], *, option: str = "--set") -> dict[str, Any]:
    """Architecture overrides ``KEY=VALUE`` (YAML values) from the command line, each key and value checked.

    Args:
        items: ``["num_heads=16", "img_size=[96,96,96]"]``.
        option: the option as errors name it.

    Returns:
        ``{"num_heads": 16, "img_size": [96, 96, 96]}``.

    Raises:
        ConfigError: no ``=``, a value that is not YAML, an unknown key or a bad value (naming the item).
    """
    from medvit.shared.config import parse_set

    out: dict[str, Any] = {}
    for item in items:
        key = item.partition("=")[0].strip()
        if "." in key:
            raise ConfigError(f"{option} {item!r}: {_unknown_key(key, ARCH_CHECKS)} (architecture keys have no dots)")
        value = parse_set([item])[key]  # ConfigError for a missing '=', an empty key or a value that is not YAML
        try:
            check_arch_kwargs({key: value}, partial=True)
        except SchemaError as err:
            raise ConfigError(f"{option} {item!r}: {err}") from None
        out[key] = value
    return out


# =============================================================================================== JSON sidecars
def nesting_problem(doc: Any, *, max_depth: int = MAX_JSON_DEPTH, above: int = 0) -> str | None:
    """Why parsed JSON/YAML is too deep or too big to walk, or None; iterative, so it cannot overflow the stack.

    YAML aliases can make a small file expand to billions of values when walked (the "billion laughs"), so the
    walk counts every value it visits and stops at :data:`MAX_JSON_VALUES`.

    Args:
        doc: parsed data (dicts, lists, scalars).
        max_depth: deepest nesting allowed (``[]`` is 1 level).
        above: levels the data already sits under (``--set a.b.c=...`` adds two).

    Returns:
        ``"nested deeper than 32 levels"``, ``"holds more than 100,000 values"`` or None.
    """
    stack, visited = [(doc, above)], 0
    while stack:
        node, level = stack.pop()
        if isinstance(node, Mapping):
            children: Sequence[Any] = list(node.values())
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        level += 1
        if level > max_depth:
            return f"nested deeper than {max_depth} levels"
        visited += len(children)
        if visited > MAX_JSON_VALUES:
            return f"holds more than {MAX_JSON_VALUES:,} values"
        stack.extend((child, level) for child in children)
    return None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} (not JSON)")


@dataclass(frozen=True)
class SidecarSchema:
    """What one kind of sidecar must hold besides the common fields.

    Attributes:
        format: the value of its ``format`` field (``medvit``, ``medvit-fiqa``, ``medvit-ct-seg``).
        max_version: the newest ``format_version`` this medvit reads.
        arch_key: the field holding VisionTransformer kwargs, checked by :func:`check_arch_kwargs`.
        fields: further required fields and their checks.
        optional_fields: checks of fields that may be absent.
    """

    format: str
    max_version: int
    arch_key: str
    fields: Mapping[str, Check] = field(default_factory=dict)
    optional_fields: Mapping[str, Check] = field(default_factory=dict)


def read_json_sidecar(
    path: str | os.PathLike[str], schema: SidecarSchema | None = None, *, error: type[MedvitError] = WeightsError
) -> dict[str, Any]:
    """Read a JSON sidecar, bounded and validated; every sidecar reader goes through here.

    Args:
        path: the ``.json`` file.
        schema: the kind of sidecar expected; None checks only what all sidecars share (an object of bounded
            size and nesting; ``format`` a string and ``format_version`` a positive integer where present).
        error: the error type raised.

    Returns:
        The parsed object.

    Raises:
        WeightsError (or ``error``): unreadable, too large, not JSON, nested too deep, not an object, or against
            the schema; the message names the file and the problem in one line.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_SIDECAR_BYTES:
            raise error(f"{p}: sidecar of {size:,} bytes, larger than the {MAX_SIDECAR_BYTES:,} a sidecar may have")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{p}: unreadable sidecar ({type(err).__name__}: {err})") from None
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise error(f"{p}: corrupt sidecar JSON (nested deeper than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise error(f"{p}: corrupt sidecar JSON ({err})") from None
    return validate_sidecar(doc, p, schema, error=error)


def validate_sidecar(
    doc: Any,
    path: str | os.PathLike[str],
    schema: SidecarSchema | None = None,
    *,
    error: type[MedvitError] = WeightsError,
) -> dict[str, Any]:
    """Check parsed sidecar JSON (see :func:`read_json_sidecar`); ``path`` only names the file in errors.

    Returns:
        ``doc``.
    """
    p = os.fspath(path)
    if not isinstance(doc, dict):
        raise error(f"{p}: the sidecar must be a JSON object, got a {type(doc).__name__}")
    problem = nesting_problem(doc)
    if problem:
        raise error(f"{p}: the sidecar is {problem}")
    fmt = doc.get("format")
    if fmt is not None and not isinstance(fmt, str):
        raise error(f"{p}: sidecar 'format' must be a string, got {_show(fmt)}")
    version = doc.get("format_version", 1)
    if not (_is_int(version) and version >= 1):
        raise error(f"{p}: sidecar 'format_version' must be a positive integer, got {_show(version)}")
    if schema is None:
        return doc
    if fmt != schema.format:
        raise error(f"{p}: sidecar format {fmt!r}, expected {schema.format!r}")
    if version > schema.max_version:
        raise error(
            f"{p}: written by a newer medvit (format_version {version}, this version reads up to {schema.max_version})"
        )
    if schema.arch_key not in doc:
        raise error(f"{p}: the sidecar has no {schema.arch_key!r} (the architecture to rebuild)")
    for key, check in schema.fields.items():
        if key not in doc:
            raise error(f"{p}: the sidecar has no {key!r}")
        problem = check(doc[key])
        if problem:
            raise error(f"{p}: sidecar {key!r} {problem}")
    for key, check in schema.optional_fields.items():
        problem = check(doc[key]) if key in doc else None
        if problem:
            raise error(f"{p}: sidecar {key!r} {problem}")
    try:
        check_arch_kwargs(doc[schema.arch_key])
    except SchemaError as err:
        raise error(f"{p}: sidecar {schema.arch_key!r}: {err}") from None
    return doc
