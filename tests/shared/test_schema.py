"""The one schema of architecture kwargs and JSON sidecars: bounds, parameter estimate, hostile documents."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medvit.shared.backbone import VisionTransformer
from medvit.shared.errors import ConfigError, WeightsError
from medvit.shared.schema import (
    ACTIVATIONS,
    ARCH_CHECKS,
    MAX_JSON_DEPTH,
    MAX_PARAMETERS,
    MAX_SIDECAR_BYTES,
    SchemaError,
    SidecarSchema,
    check_arch_kwargs,
    estimate_parameters,
    nesting_problem,
    parse_arch_overrides,
    read_json_sidecar,
)

SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def test_schema_keys_match_the_constructor_and_the_activation_table() -> None:
    from medvit.shared.backbone.layers import _ACTIVATIONS

    params = set(inspect.signature(VisionTransformer.__init__).parameters) - {"self", "block_fn", "mlp_layer"}
    assert set(ARCH_CHECKS) == params
    assert set(ACTIVATIONS) == set(_ACTIVATIONS)


@pytest.mark.parametrize(
    "kwargs",
    [
        SMALL,
        {**SMALL, "num_classes": 7, "init_values": 1e-5, "reg_tokens": 2, "extra_tokens": ["quality"]},
        {**SMALL, "pos_embed": "none", "class_token": False, "global_pool": "avg", "qkv_bias": False},
        {**SMALL, "patch_size": [8, 8, 4], "img_size": [32, 16, 16], "in_chans": 1, "pos_embed_prefix": False},
        {**SMALL, "mlp_ratio": 2.5, "patch_bias": False, "pos_embed": "sincos"},
    ],
)
def test_parameter_estimate_is_exact(kwargs: dict[str, Any]) -> None:
    model = VisionTransformer(**kwargs)
    assert estimate_parameters(kwargs) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"embed_dim": 1e9}, "embed_dim must be an integer in [1, 32768], got 1000000000.0"),
        ({"embed_dim": 10**9}, "embed_dim must be an integer"),
        ({"embed_dim": "768"}, "embed_dim must be an integer"),
        ({"depth": 10**6}, "depth must be an integer in [1, 512]"),
        ({"depth": -1}, "depth must be an integer"),
        ({"depth": True}, "depth must be an integer"),
        ({"img_size": 10**6}, "img_size must be an integer in [1, 65536], got 1000000"),
        ({"img_size": [32, -32]}, "img_size [1] must be an integer"),
        ({"patch_size": [8, 8, 8, 8]}, "patch_size must be an integer or a list of 2 or 3"),
        ({"mlp_ratio": float("nan")}, "mlp_ratio must be a finite number"),
        ({"drop_path_rate": 1.5}, "drop_path_rate must be a finite number in [0, 1)"),
        ({"act": "os.system"}, "act must be one of"),
        ({"extra_tokens": ["a b"]}, "extra_tokens [0] must be an identifier"),
        ({"embed_dimm": 32}, "unknown key 'embed_dimm' (did you mean 'embed_dim'?)"),
        ({"block_fn": "x"}, "unknown key 'block_fn'"),
    ],
)
def test_bad_values_are_named(kwargs: dict[str, Any], phrase: str) -> None:
    with pytest.raises(SchemaError) as info:
        check_arch_kwargs({**SMALL, **kwargs})
    assert phrase in str(info.value)
    with pytest.raises(SchemaError):
        check_arch_kwargs(kwargs, partial=True)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"embed_dim": 32768, "depth": 512, "num_heads": 16}, "parameters"),  # each value in range, the sum not
        ({"img_size": 65536, "patch_size": 1, "embed_dim": 8, "depth": 1, "num_heads": 1}, "tokens"),
        ({"embed_dim": 30, "num_heads": 4}, "not divisible by num_heads"),
        ({"img_size": [32, 32, 32]}, "has not the 2 axes"),
        ({"img_size": 4}, "smaller than one patch"),
        ({"class_token": False}, "needs a class, extra or register token"),
        ({"num_classes": 10_000_000, "embed_dim": 1024, "num_heads": 16}, "parameters"),
    ],
)
def test_whole_architectures_are_bounded(kwargs: dict[str, Any], phrase: str) -> None:
    with pytest.raises(SchemaError, match="architecture") as info:
        check_arch_kwargs({**SMALL, **kwargs})
    assert phrase in str(info.value)
    assert MAX_PARAMETERS < 10**10


def test_constructor_refuses_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    import medvit.shared.backbone.vit as vit

    def no_patch_embed(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("layers were allocated")

    monkeypatch.setattr(vit, "PatchEmbed", no_patch_embed)
    with pytest.raises(SchemaError, match="depth"):
        vit.VisionTransformer(**{**SMALL, "depth": 10**6})
    with pytest.raises(SchemaError, match="parameters"):
        vit.VisionTransformer(**{**SMALL, "embed_dim": 32768, "depth": 512, "num_heads": 16})


# ----------------------------------------------------------------------------------------------- overrides
@pytest.mark.parametrize(
    ("item", "phrase"),
    [
        ("embed_dim=[1,", "not valid YAML"),
        ("embed_dimm=96", "unknown key 'embed_dimm' (did you mean 'embed_dim'?)"),
        ("model.embed_dim=96", "architecture keys have no dots"),
        ("depth=1e6", "depth must be an integer"),
        ("img_size=" + "[" * 200 + "]" * 200, "nested deeper"),
        ("num_heads", "expected KEY=VALUE"),
    ],
)
def test_architecture_overrides_from_the_command_line(item: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_arch_overrides([item])
    assert phrase in str(info.value) and "\n" not in str(info.value)


def test_good_overrides_parse() -> None:
    assert parse_arch_overrides(["num_heads=16", "img_size=[96,96,96]"]) == {"num_heads": 16, "img_size": [96, 96, 96]}


# ----------------------------------------------------------------------------------------------- sidecars
SCHEMA = SidecarSchema(format="medvit", max_version=1, arch_key="kwargs")


def _good() -> dict[str, Any]:
    return {"format": "medvit", "format_version": 1, "kwargs": dict(SMALL), "spacing": [1.5, 1.5, 1.5]}


def _with_kwarg(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**doc, "kwargs": {**doc["kwargs"], key: value}}


# Hostile sidecars: an edit of a good document (kind -> (edit, phrase its error must contain)) ...
_HOSTILE_DOCS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "top_level_list": (lambda d: [d], "must be a JSON object, got a list"),
    "string_version": (lambda d: {**d, "format_version": "1"}, "'format_version' must be a positive integer, got '1'"),
    "newer_version": (lambda d: {**d, "format_version": 99}, "written by a newer medvit"),
    "missing_kwargs": (lambda d: {k: v for k, v in d.items() if k != "kwargs"}, "has no 'kwargs'"),
    "kwargs_list": (lambda d: {**d, "kwargs": [1, 2]}, "must be an object of VisionTransformer arguments"),
    "unexpected_keyword": (lambda d: _with_kwarg(d, "evil", 1), "unknown key 'evil'"),
    "embed_dim_1e9": (lambda d: _with_kwarg(d, "embed_dim", 1e9), "embed_dim must be an integer"),
    "img_size_1e6": (lambda d: _with_kwarg(d, "img_size", 1000000), "img_size must be"),
    "depth_1e6": (lambda d: _with_kwarg(d, "depth", 1000000), "depth must be an integer in [1, 512]"),
    "negative": (lambda d: _with_kwarg(d, "embed_dim", -32), "embed_dim must be"),
    "deep_value": (
        lambda d: {**d, "extra": json.loads("[" * 40 + "]" * 40)},
        f"nested deeper than {MAX_JSON_DEPTH} levels",
    ),
}
# ... or raw file content (kind -> (content, phrase)).
_HOSTILE_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "deep_recursion": (lambda: ("[" * 200_000 + "]" * 200_000).encode(), "corrupt sidecar JSON"),
    "nan": (
        lambda: json.dumps(_good()).replace('"spacing": [1.5', '"spacing": [NaN').encode(),
        "non-finite number NaN",
    ),
    "huge": (lambda: (" " * (MAX_SIDECAR_BYTES + 1) + json.dumps(_good())).encode(), "larger than the"),
    "not_utf8": (lambda: b"\xff\xfe{}", "unreadable sidecar"),
    "not_json": (lambda: b"{'format': 'medvit'", "corrupt sidecar JSON"),
}


def _hostile(kind: str, path: Path) -> str:
    """Write one hostile sidecar; return a phrase its error must contain."""
    if kind in _HOSTILE_FILES:
        content, phrase = _HOSTILE_FILES[kind]
        path.write_bytes(content())
        return phrase
    edit, phrase = _HOSTILE_DOCS[kind]
    path.write_text(json.dumps(edit(_good())))
    return phrase


HOSTILE = [
    "top_level_list",
    "string_version",
    "newer_version",
    "missing_kwargs",
    "kwargs_list",
    "unexpected_keyword",
    "embed_dim_1e9",
    "img_size_1e6",
    "depth_1e6",
    "negative",
    "deep_value",
    "deep_recursion",
    "nan",
    "huge",
    "not_utf8",
    "not_json",
]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_sidecars_are_one_line_errors_naming_the_file(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "encoder.json"
    phrase = _hostile(kind, path)
    with pytest.raises(WeightsError) as info:
        read_json_sidecar(path, SCHEMA)
    msg = str(info.value)
    assert msg.startswith(str(path)) and phrase in msg and "\n" not in msg, msg


def test_good_sidecar_reads(tmp_path: Path) -> None:
    path = tmp_path / "encoder.json"
    path.write_text(json.dumps(_good()))
    assert read_json_sidecar(path, SCHEMA)["kwargs"] == SMALL


def test_aliases_cannot_expand_a_document() -> None:
    import yaml

    text = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
    )
    doc = yaml.safe_load(text)  # 10**9 values when walked naively
    assert nesting_problem(doc) == "holds more than 100,000 values"
    assert nesting_problem({"a": [[1]]}) is None


def test_every_registered_backbone_and_preset_fits_the_schema() -> None:
    from medvit.pretrain.presets import build_encoder, get_preset, list_presets
    from medvit.shared.backbone.registry import backbone_kwargs, list_backbones

    for name in list_backbones():
        check_arch_kwargs(backbone_kwargs(name))
    for item in list_presets():
        preset = get_preset(*item.split(":"))
        check_arch_kwargs({**backbone_kwargs(preset.backbone), **preset.backbone_overrides})
        if preset.name == "tiny":
            assert isinstance(build_encoder(preset), VisionTransformer)
