"""Tests of the strict config loader (medvit.shared.config) and the lazy folder roots (medvit.shared.paths)."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from medvit import __version__
from medvit.shared import paths
from medvit.shared.config import (
    dump_config,
    from_dict,
    load_config,
    parse_set,
    preset_file,
    preset_layer,
    read_yaml,
    replace_path,
    to_dict,
)
from medvit.shared.errors import ConfigError, MedvitError


class Norm(enum.Enum):
    LAYER = "layer"
    BATCH = "batch"


@dataclass(frozen=True, kw_only=True)
class OptimCfg:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass(frozen=True, kw_only=True)
class ModelCfg:
    name: str = "test_vit_2d"
    patch_size: tuple[int, ...] = (16, 16)
    depth: int = 4
    drop_path: Optional[float] = None  # noqa: UP045 - Optional[...] is one of the supported spellings
    checkpoint: Path | None = None
    norm: Norm = Norm.LAYER

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")


@dataclass(frozen=True, kw_only=True)
class TrainCfg:
    # Defaults of a nested section that differ from the section class's own defaults.
    model: ModelCfg = field(default_factory=lambda: ModelCfg(depth=12))
    optim: OptimCfg = field(default_factory=OptimCfg)
    steps: int = 10
    amp: bool = False
    seed: int | None = 0
    out: Path = Path("runs/x")
    labels: dict[str, int] = field(default_factory=lambda: {"background": 0})
    tags: list[str] = field(default_factory=list)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class NeedsRoot:
    root: Path
    size: int = 1


# ---------------------------------------------------------------------------------------------------------------
# from_dict / to_dict
# ---------------------------------------------------------------------------------------------------------------


def test_from_dict_defaults_and_nested_section_defaults() -> None:
    cfg = from_dict(TrainCfg, {"model": {"name": "vit_b"}})
    # A partial section updates the field's default (depth=12), not ModelCfg's own default (depth=4).
    assert cfg.model == ModelCfg(name="vit_b", depth=12)
    assert cfg.optim == OptimCfg()
    assert cfg == dataclasses.replace(TrainCfg(), model=ModelCfg(name="vit_b", depth=12))


def test_from_dict_converts_yaml_forms() -> None:
    cfg = from_dict(
        TrainCfg,
        {
            "model": {"patch_size": [4, 4, 4], "checkpoint": "w/x.safetensors", "norm": "batch"},
            "optim": {"lr": 1, "betas": [0.8, 0.9]},
            "out": "runs/y",
            "spacing": [1, 2.5, 3],
        },
    )
    assert cfg.model.patch_size == (4, 4, 4) and isinstance(cfg.model.patch_size, tuple)
    assert cfg.model.checkpoint == Path("w/x.safetensors")
    assert cfg.model.norm is Norm.BATCH
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.out == Path("runs/y")
    assert cfg.spacing == (1.0, 2.5, 3.0) and all(isinstance(v, float) for v in cfg.spacing)


@pytest.mark.parametrize(
    ("data", "key", "valid"),
    [
        ({"stpes": 3}, "'stpes'", "valid keys at the top level: amp, labels, model, optim, out, seed, spacing"),
        ({"optim": {"lrr": 0.1}}, "'optim.lrr'", "valid keys under 'optim': betas, lr, schedule, weight_decay"),
        ({"model": {"depht": 2}}, "'model.depht'", "valid keys under 'model':"),
    ],
    ids=["top-level", "nested", "nested-2"],
)
def test_unknown_key_names_dotted_path_and_valid_keys(data: dict, key: str, valid: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(TrainCfg, data)
    msg = str(exc.value)
    assert f"unknown config key {key}" in msg
    assert valid in msg


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'optim\.lr'\?"):
        from_dict(TrainCfg, {"optim": {"lrr": 0.1}})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"steps": "10"}, "config key 'steps': expected int, got '10' (str)"),
        ({"steps": 1.5}, "config key 'steps': expected int, got 1.5 (float)"),
        ({"steps": True}, "config key 'steps': expected int, got True (bool)"),
        ({"amp": 1}, "config key 'amp': expected bool, got 1 (int)"),
        ({"amp": "true"}, "config key 'amp': expected bool, got 'true' (str)"),
        ({"amp": None}, "config key 'amp': expected bool, got None (NoneType)"),
        ({"optim": {"lr": True}}, "config key 'optim.lr': expected float, got True (bool)"),
        ({"optim": {"lr": "fast"}}, "config key 'optim.lr': expected float, got 'fast' (str)"),
        ({"model": {"name": 12}}, "config key 'model.name': expected str, got 12 (int)"),
        ({"model": {"patch_size": [16, "a"]}}, "config key 'model.patch_size[1]': expected int, got 'a' (str)"),
        ({"model": {"patch_size": 16}}, "config key 'model.patch_size': expected tuple[int, ...], got 16 (int)"),
        ({"spacing": [1.0, 2.0]}, "config key 'spacing': expected 3 items"),
        ({"optim": {"schedule": "linear"}}, "config key 'optim.schedule': expected one of 'cosine', 'constant'"),
        ({"optim": 0.1}, "config key 'optim': expected OptimCfg, got 0.1 (float)"),
        ({"labels": {"liver": "1"}}, "config key 'labels.liver': expected int, got '1' (str)"),
        ({"tags": "a"}, "config key 'tags': expected list[str], got 'a' (str)"),
        ({"seed": "x"}, "config key 'seed': expected int, got 'x' (str)"),
        ({"model": {"norm": "group"}}, "config key 'model.norm': expected one of 'layer', 'batch', got 'group'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_type_mismatch_names_path_type_and_value(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(TrainCfg, data)
    assert expected in str(exc.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("amp", True, True),
        ("amp", False, False),
        ("steps", 0, 0),
        ("seed", None, None),
        ("seed", 7, 7),
        ("optim.schedule", "constant", "constant"),
        ("model.drop_path", None, None),
        ("model.drop_path", 0, 0.0),
        ("model.checkpoint", None, None),
        ("model.checkpoint", "w.safetensors", Path("w.safetensors")),
    ],
    ids=["bool-true", "bool-false", "int-0", "optional-none", "optional-int", "literal", "optional-float-none",
         "optional-float-from-int", "optional-path-none", "optional-path"],
)  # fmt: skip
def test_accepted_values(key: str, value: object, expected: object) -> None:
    data: dict = {}
    node, parts = data, key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    got: object = from_dict(TrainCfg, data)
    for part in parts:
        got = getattr(got, part)
    assert got == expected and type(got) is type(expected)


def test_missing_required_key_and_post_init_error() -> None:
    with pytest.raises(ConfigError, match=r"missing required config key 'root' \(Path\)"):
        from_dict(NeedsRoot, {"size": 2})
    assert from_dict(NeedsRoot, {"root": "/data"}).root == Path("/data")
    with pytest.raises(ConfigError, match=r"config 'model': depth must be >= 1, got 0"):
        from_dict(TrainCfg, {"model": {"depth": 0}})


def test_non_string_key_from_yaml_is_explained() -> None:
    # YAML 1.1 reads an unquoted `on:` key as True.
    with pytest.raises(ConfigError, match=r"config key True under 'optim' is not a string"):
        from_dict(TrainCfg, {"optim": {True: 1}})


def test_to_dict_is_yaml_safe_and_round_trips() -> None:
    cfg = from_dict(TrainCfg, {"model": {"checkpoint": "a/b.safetensors"}, "tags": ["x"], "labels": {"liver": 1}})
    data = to_dict(cfg)
    assert data["model"]["patch_size"] == [16, 16]
    assert data["model"]["checkpoint"] == "a/b.safetensors"
    assert data["model"]["norm"] == "layer"
    assert data["out"] == "runs/x"
    assert data["optim"]["betas"] == [0.9, 0.95]
    yaml.safe_dump(data)  # raises on anything that is not plain YAML
    assert from_dict(TrainCfg, data) == cfg


# ---------------------------------------------------------------------------------------------------------------
# parse_set
# ---------------------------------------------------------------------------------------------------------------


def test_parse_set_types_and_nesting() -> None:
    got = parse_set(["optim.lr=0.1", "steps=3", "amp=true", "model.patch_size=[8, 8]", "seed=", "model.name=vit_b"])
    assert got == {
        "optim": {"lr": 0.1},
        "steps": 3,
        "amp": True,
        "model": {"patch_size": [8, 8], "name": "vit_b"},
        "seed": None,
    }
    # Later items win, and a value may itself contain "=".
    assert parse_set(["steps=1", "steps=2", "model.name=a=b"]) == {"steps": 2, "model": {"name": "a=b"}}


def test_set_1e_minus_3_for_a_float_field() -> None:
    # PyYAML (YAML 1.1) reads 1e-3 as a string; the float field accepts it.
    assert parse_set(["optim.lr=1e-3"]) == {"optim": {"lr": "1e-3"}}
    cfg = load_config(TrainCfg, overrides=["optim.lr=1e-3", "optim.weight_decay=5E-2"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == pytest.approx(0.05)
    # ... but not for an int field.
    with pytest.raises(ConfigError, match=r"config key 'steps': expected int, got '1e3' \(str\)"):
        load_config(TrainCfg, overrides=["steps=1e3"])


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", "inf", "nan", "1e999"])
def test_non_finite_float_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match=r"optim\.lr: must be a finite number") as exc:
        load_config(TrainCfg, overrides=[f"optim.lr={value}"])
    assert "--set" in str(exc.value)  # which layer set it
    with pytest.raises(ConfigError, match=r"spacing\[1\]: must be a finite number|spacing.*finite"):
        load_config(TrainCfg, overrides=[f"spacing=[1.0, {value}, 1.0]"])


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("optim.lr", "expected KEY=VALUE"),
        ("=3", "empty key"),
        ("optim..lr=3", "empty key"),
        (".lr=3", "empty key"),
        ("optim.=3", "empty key"),
        ("steps=[1, 2", "not valid YAML"),
    ],
    ids=["no-equals", "empty-key", "empty-segment", "leading-dot", "trailing-dot", "bad-yaml"],
)
def test_parse_set_malformed_items(item: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as exc:
        parse_set([item])
    assert repr(item) in str(exc.value)


# ---------------------------------------------------------------------------------------------------------------
# load_config / dump_config
# ---------------------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_precedence_defaults_file_set_options(tmp_path: Path) -> None:
    cfg_file = _write(
        tmp_path / "c.yaml",
        "steps: 20\nseed: 1\namp: true\noptim:\n  lr: 0.5\n  weight_decay: 0.1\nlabels:\n  liver: 1\n",
    )
    defaults = load_config(TrainCfg)
    assert defaults == TrainCfg()

    from_file = load_config(TrainCfg, cfg_file)
    assert (from_file.steps, from_file.seed, from_file.optim.lr, from_file.optim.weight_decay) == (20, 1, 0.5, 0.1)
    assert from_file.optim.betas == OptimCfg().betas  # untouched keys keep their defaults
    assert from_file.labels == {"liver": 1}  # a dict in the file replaces the default dict

    with_set = load_config(TrainCfg, cfg_file, ["steps=30", "optim.lr=0.25", "labels.kidney=2"])
    assert (with_set.steps, with_set.seed, with_set.optim.lr, with_set.optim.weight_decay) == (30, 1, 0.25, 0.1)
    assert with_set.labels == {"liver": 1, "kidney": 2}  # layers deep-merge

    with_opts = load_config(
        TrainCfg, cfg_file, ["steps=30", "optim.lr=0.25"], steps=40, seed=None, **{"optim.lr": 0.125, "out": "o"}
    )
    # seed=None means "option not given": the file's value stays.
    assert (with_opts.steps, with_opts.seed, with_opts.optim.lr, with_opts.out) == (40, 1, 0.125, Path("o"))
    assert with_opts.amp is True and with_opts.optim.weight_decay == 0.1


def test_round_trip_dump_then_load(tmp_path: Path) -> None:
    cfg = load_config(
        TrainCfg,
        overrides=[
            "optim.lr=3e-4",
            "optim.betas=[0.5, 0.999]",
            "model.patch_size=[4, 8, 8]",
            "model.checkpoint=/w/vit.safetensors",
            "model.drop_path=0.1",
            "model.norm=batch",
            "model.name='2024'",
            "seed=null",
            "tags=[a, 'yes', '1e-3']",
            "optim.weight_decay=1e-10",
        ],
    )
    out = dump_config(cfg, tmp_path / "run" / "config.yaml")
    text = out.read_text(encoding="utf-8")
    assert text.startswith(f"# resolved TrainCfg written by medvit {__version__}\n")
    assert load_config(TrainCfg, out) == cfg
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp file left behind
    # Writing again replaces the file in place.
    cfg2 = replace_path(cfg, "steps", 99)
    dump_config(cfg2, out)
    assert load_config(TrainCfg, out) == cfg2 != cfg


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("steps: [1, 2\n", r"invalid YAML at line \d+, column \d+"),
        ("- 1\n- 2\n", "top level must be a mapping of config keys, got list"),
        ("steps: 1\nsteps: 2\n", "duplicate key 'steps'"),
    ],
    ids=["syntax-error", "list-top-level", "duplicate-key"],
)
def test_bad_yaml_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    cfg_file = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=match) as exc:
        load_config(TrainCfg, cfg_file)
    assert str(exc.value).startswith(str(cfg_file))


_LAUGHS = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("steps: " + "[" * 5000 + "]" * 5000 + "\n", "the YAML is nested deeper than 32 levels"),  # RecursionError
        ("optim: " + "{a: " * 40 + "1" + "}" * 40 + "\n", "the YAML is nested deeper than 32 levels"),
        (_LAUGHS, "holds more than 100,000 values"),  # aliases expanding to 10**9 values
    ],
    ids=["recursion", "deep-mapping", "billion-laughs"],
)
def test_deep_or_exploding_yaml_is_a_config_error(tmp_path: Path, text: str, match: str) -> None:
    cfg_file = _write(tmp_path / "deep.yaml", text)
    with pytest.raises(ConfigError, match=match) as exc:
        load_config(TrainCfg, cfg_file)
    assert str(exc.value).startswith(str(cfg_file)) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match=match):
        read_yaml(cfg_file)


@pytest.mark.parametrize(
    "item",
    ["steps=" + "[" * 3000 + "]" * 3000, "steps=" + "[" * 40 + "]" * 40, "a.b.c=" + "{x: " * 31 + "1" + "}" * 31],
)
def test_deep_set_values_are_config_errors(item: str) -> None:
    with pytest.raises(ConfigError, match=r"--set '.*': the YAML is nested deeper than 32 levels"):
        parse_set([item])


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as exc:
        load_config(TrainCfg, missing)
    assert str(missing) in str(exc.value)
    assert load_config(TrainCfg, _write(tmp_path / "empty.yaml", "# nothing\n")) == TrainCfg()


def test_load_config_says_which_layer_set_a_bad_key(tmp_path: Path) -> None:
    cfg_file = _write(tmp_path / "c.yaml", "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(TrainCfg, cfg_file)
    assert str(exc.value).startswith(f"{cfg_file}: unknown config key 'optim.lrr'")
    with pytest.raises(ConfigError, match=r"config key 'amp': expected bool, got 1 \(int\).*\(from --set\)"):
        load_config(TrainCfg, overrides=["amp=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.foo'.*\(from command-line option\)"):
        load_config(TrainCfg, **{"optim.foo": 1})


def test_config_errors_are_user_errors() -> None:
    # The CLI prints MedvitError subclasses as one line with exit code 2.
    with pytest.raises(MedvitError):
        load_config(TrainCfg, overrides=["nope=1"])


def test_replace_path_validates_and_keeps_original() -> None:
    cfg = TrainCfg()
    new = replace_path(cfg, "optim.lr", 2)
    assert new.optim.lr == 2.0 and isinstance(new.optim.lr, float)
    assert cfg.optim.lr == 1e-3  # frozen original untouched
    assert new.model is cfg.model  # untouched sections are shared, not rebuilt
    assert replace_path(cfg, "model.patch_size", [2, 2]).model.patch_size == (2, 2)
    assert replace_path(cfg, "model.depth", 3).model == ModelCfg(depth=3)  # other fields keep current values
    # A dotted key into a dict field sets one entry and keeps the others.
    assert replace_path(cfg, "labels.liver", 1).labels == {"background": 0, "liver": 1}
    assert cfg.labels == {"background": 0}
    with pytest.raises(ConfigError, match=r"config key 'labels.liver': expected int"):
        replace_path(cfg, "labels.liver", "one")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'"):
        replace_path(cfg, "optim.lrr", 1.0)
    with pytest.raises(ConfigError, match=r"config key 'amp': expected bool"):
        replace_path(cfg, "amp", "yes")


def test_refuses_non_dataclass() -> None:
    with pytest.raises(TypeError):
        from_dict(dict, {})
    with pytest.raises(TypeError):
        to_dict({"a": 1})


# ---------------------------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "var", "default"),
    [
        (paths.weights_dir, "MEDVIT_WEIGHTS", lambda home, cwd: home / ".cache" / "medvit" / "weights"),
        (paths.runs_dir, "MEDVIT_RUNS", lambda home, cwd: cwd / "runs"),
        (paths.insightface_models_dir, "INSIGHTFACE_HOME", lambda home, cwd: home / ".insightface" / "models"),
    ],
    ids=["weights", "runs", "insightface"],
)
def test_env_paths_are_lazy_with_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, func, var, default) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(var, raising=False)
    assert func() == default(home, tmp_path)
    monkeypatch.setenv(var, "")  # empty means unset
    assert func() == default(home, tmp_path)
    monkeypatch.setenv(var, "~/elsewhere")  # read at call time, ~ expanded
    assert func() == home / "elsewhere"
    monkeypatch.setenv(var, "rel")
    assert func() == tmp_path / "rel"
    assert func(override=tmp_path / "cli") == tmp_path / "cli"  # a CLI option wins


def test_preset_layer_sits_between_defaults_and_config_file(tmp_path: Path) -> None:
    preset = tmp_path / "tiny.yaml"
    preset.write_text("optim:\n  lr: 0.5\n  betas: [0.8, 0.9]\n")
    cfg_file = tmp_path / "user.yaml"
    cfg_file.write_text("optim:\n  lr: 0.25\n")
    cfg = load_config(TrainCfg, cfg_file, preset=preset)
    assert cfg.optim.lr == 0.25  # the user's file wins over the preset
    assert cfg.optim.betas == (0.8, 0.9)  # the preset wins over the defaults
    cfg = load_config(TrainCfg, preset={"optim": {"lr": 0.5}}, **{"optim.lr": 0.125})
    assert cfg.optim.lr == 0.125
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  nope: 1\n")
    with pytest.raises(ConfigError, match="preset bad"):
        load_config(TrainCfg, preset=bad)


def test_preset_file_and_layer(tmp_path: Path) -> None:
    assert preset_file(tmp_path, "tiny", ("base", "tiny"), "demo") == tmp_path / "tiny.yaml"
    with pytest.raises(ConfigError, match="unknown demo preset 'huge'; choose one of base, tiny"):
        preset_file(tmp_path, "huge", ("base", "tiny"), "demo")
    (tmp_path / "tiny.yaml").write_text("optim:\n  lr: 0.5\n")
    assert preset_layer(tmp_path / "tiny.yaml", "tiny") == {"optim": {"lr": 0.5}, "preset": "tiny"}
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert preset_layer(tmp_path / "empty.yaml", "empty") == {"preset": "empty"}
    (tmp_path / "dup.yaml").write_text("steps: 1\nsteps: 2\n")
    with pytest.raises(ConfigError, match="dup.yaml: invalid YAML.*duplicate key"):
        preset_layer(tmp_path / "dup.yaml", "dup")
