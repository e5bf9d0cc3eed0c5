"""Strict configs: frozen nested dataclasses are the source of truth, YAML is only their stored form.

Precedence, lowest first: dataclass defaults < ``--config file.yaml`` < ``--set a.b=c`` (repeatable) <
first-class CLI options. Unknown keys and type mismatches raise :class:`~medvit.shared.errors.ConfigError`
naming the dotted key. YAML is read with ``yaml.safe_load`` semantics only; there is no eval/exec, no
interpolation and no ``_target_`` instantiation (ARCHITECTURE.md, "Configs"; the strictness follows nanoGPT's
``configurator.py``, the file handling timm's ``args.yaml`` and DINOv2's ``write_config``).

Example::

    @dataclass(frozen=True, kw_only=True)
    class OptimCfg:
        lr: float = 1e-3
        betas: tuple[float, float] = (0.9, 0.95)

    @dataclass(frozen=True, kw_only=True)
    class TrainCfg:
        optim: OptimCfg = field(default_factory=OptimCfg)
        out: Path = Path("runs/x")

    cfg = load_config(TrainCfg, "train.yaml", ["optim.lr=3e-4"], out=args.out)
    dump_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import enum
import functools
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from medvit import __version__
from medvit.shared.errors import ConfigError
from medvit.shared.files import write_text_atomic
from medvit.shared.schema import nesting_problem

__all__ = [
    "ConfigError",
    "dump_config",
    "from_dict",
    "load_config",
    "parse_set",
    "preset_file",
    "preset_layer",
    "read_yaml",
    "replace_path",
    "to_dict",
]

T = TypeVar("T")

_MISSING = dataclasses.MISSING

#: Deepest nesting a config file or ``--set`` value may have; real configs nest 3 levels.
MAX_CONFIG_DEPTH = 32


class _KeyConfigError(ConfigError):
    """A :class:`ConfigError` about one dotted key, so :func:`load_config` can say which layer set it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------------------------------------------------
# dict -> dataclass
# --------------------------------------------------------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Modules use `from __future__ import annotations`, so field.type is a string; resolve it once per class.
    try:
        return typing.get_type_hints(cls)
    except NameError as err:  # a programming error in the dataclass, not a user error
        raise TypeError(f"cannot resolve the type annotations of {cls.__qualname__}: {err}") from err


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else origin.__name__
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _mismatch(path: str, tp: Any, value: Any, hint: str = "") -> _KeyConfigError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    where = f"config key '{path}'" if path else "config"
    return _KeyConfigError(path, f"{where}: expected {_type_name(tp)}, got {shown} ({type(value).__name__}){hint}")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return _MISSING


def _coerce(tp: Any, value: Any, path: str, base: Any = None) -> Any:
    """Check ``value`` against annotation ``tp`` and convert YAML forms (list -> tuple, str -> Path, ...).

    ``base`` is the current value of a nested dataclass field: a partial mapping updates it field by field
    instead of starting again from the nested class's own defaults.
    """
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _mismatch(path, tp, value)

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(tp, args, value, path, base)
    if origin is Literal:
        return _coerce_literal(tp, args, value, path)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _coerce_dataclass(tp, value, path, base)
    scalar = _SCALARS.get(tp) if isinstance(tp, type) else None
    if scalar is not None:
        return scalar(tp, value, path)
    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise _mismatch(path, tp, value)
    if tp is tuple or origin is tuple:
        return _coerce_tuple(tp, args, value, path)
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise _mismatch(path, tp, value, " (a list)")
        item_tp = args[0] if args else Any
        return [_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        return _coerce_dict(tp, args, value, path)
    return _coerce_class(tp, value, path)


def _coerce_union(tp: Any, args: tuple[Any, ...], value: Any, path: str, base: Any) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    # An exact-type arm wins, so `float | int` keeps an int and `float | str` keeps a string.
    if type(value) in options and type(value) in (bool, int, float, str):
        return value
    errors: list[ConfigError] = []
    for arm in options:
        try:
            return _coerce(arm, value, path, base if dataclasses.is_dataclass(arm) else None)
        except ConfigError as err:
            errors.append(err)
    # A single non-None arm (Optional[X]) gives the most useful message: report that one.
    if len(options) == 1:
        raise errors[0]
    raise _mismatch(path, tp, value)


def _coerce_literal(tp: Any, args: tuple[Any, ...], value: Any, path: str) -> Any:
    for allowed in args:
        # `True == 1`: compare types as well, so Literal[1] does not take True.
        if type(value) is type(allowed) and value == allowed:
            return value
    raise _mismatch(path, tp, value)


def _coerce_dataclass(tp: type, value: Any, path: str, base: Any) -> Any:
    if isinstance(value, tp):
        return value
    if isinstance(value, Mapping):
        return _build(tp, value, path, base if isinstance(base, tp) else None)
    raise _mismatch(path, tp, value, " (a mapping of its fields)")


def _coerce_bool(tp: type, value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _mismatch(path, tp, value, " (write true or false)")


def _coerce_int(tp: type, value: Any, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _mismatch(path, tp, value)


def _coerce_float(tp: type, value: Any, path: str) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        # YAML 1.1 (PyYAML) reads `1e-3` as a string: it wants a dot in the mantissa (`1.0e-3`).
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None:
        raise _mismatch(path, tp, value)
    if not math.isfinite(number):  # `.inf` / `.nan` in YAML: no setting of the project means infinity
        raise _KeyConfigError(path, f"{path}: must be a finite number, got {value!r}")
    return number


def _coerce_str(tp: type, value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    # YAML turns yes/no/on/off/2024/1.0 into non-strings; quoting keeps them strings.
    raise _mismatch(path, tp, value, " (quote it in YAML to keep it a string)")


_SCALARS: dict[type, Any] = {bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str}


def _coerce_tuple(tp: Any, args: tuple[Any, ...], value: Any, path: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _mismatch(path, tp, value, " (a list)")
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise _KeyConfigError(
            path, f"config key '{path}': expected {len(args)} items ({_type_name(tp)}), got {len(value)}: {value!r}"
        )
    return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))


def _coerce_dict(tp: Any, args: tuple[Any, ...], value: Any, path: str) -> dict:
    if not isinstance(value, Mapping):
        raise _mismatch(path, tp, value, " (a mapping)")
    key_tp, val_tp = args if args else (Any, Any)
    out = {}
    for k, v in value.items():
        out[_coerce(key_tp, k, f"{path}.<key {k!r}>")] = _coerce(val_tp, v, _join(path, str(k)))
    return out


def _coerce_class(tp: Any, value: Any, path: str) -> Any:
    """Enums (from their stored value) and any other class (exact instances only); else a programming error."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)  # stored form is the member's value (see `_plain`)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in tp)
            raise _KeyConfigError(path, f"config key '{path}': expected one of {valid}, got {value!r}") from None
    if isinstance(tp, type):
        # Any other class: exact instances only; nothing is constructed from strings.
        if isinstance(value, tp):
            return value
        raise _mismatch(path, tp, value)
    raise TypeError(f"config field '{path}' has an unsupported annotation {tp!r}")


def _build(cls: type[T], data: Mapping, path: str, base: T | None) -> T:
    if not isinstance(data, Mapping):
        raise _mismatch(path, cls, data, " (a mapping of its fields)")
    fields = {f.name: f for f in _init_fields(cls)}
    hints = _hints(cls)
    for key in data:
        if not isinstance(key, str):
            raise _KeyConfigError(
                path,
                f"config key {key!r} under '{path or '<top level>'}' is not a string "
                "(YAML reads unquoted yes/no/on/off/null and numbers as non-strings; quote it)",
            )
        if key not in fields:
            full = _join(path, key)
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{_join(path, close[0])}'?)" if close else ""
            where = f"under '{path}'" if path else "at the top level"
            valid = ", ".join(sorted(fields)) or "(none)"
            raise _KeyConfigError(full, f"unknown config key '{full}'{hint}; valid keys {where}: {valid}")

    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        full = _join(path, name)
        tp = hints[name]
        if name in data:
            if base is not None:
                nested_base = getattr(base, name)
            else:
                nested_base = _field_default(f) if dataclasses.is_dataclass(_strip_optional(tp)) else None
            kwargs[name] = _coerce(tp, data[name], full, nested_base if nested_base is not _MISSING else None)
        elif base is None and f.default is _MISSING and f.default_factory is _MISSING:
            raise _KeyConfigError(full, f"missing required config key '{full}' ({_type_name(tp)})")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (ValueError, TypeError) as err:
        # __post_init__ validation failed: report it against the section that holds the bad values.
        raise _KeyConfigError(path, f"config '{path or cls.__name__}': {err}") from err


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return arms[0]
    return tp


def from_dict(cls: type[T], data: Mapping, path: str = "") -> T:
    """Build a (nested) config dataclass from plain data, strictly.

    Lists become tuples for tuple fields, strings become ``Path`` for Path fields, ints are accepted for
    floats (and so are strings that ``float()`` accepts, because YAML 1.1 reads ``1e-3`` as a string);
    nothing else is converted: a bool field refuses ``1`` and ``"true"``, an int field refuses ``True``.

    Args:
        cls: A dataclass type (usually ``@dataclass(frozen=True, kw_only=True)``).
        data: Mapping of field name to value; nested dataclass fields take nested mappings.
        path: Dotted prefix of ``data`` inside a larger config, used only in error messages.

    Returns:
        An instance of ``cls``; fields absent from ``data`` keep their defaults.

    Raises:
        ConfigError: Unknown key (with the full dotted path and the valid keys), missing required key,
            or a value of the wrong type (with the path, the expected type and the value).
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    return _build(cls, data, path, None)


# --------------------------------------------------------------------------------------------------------------------
# dataclass -> dict
# --------------------------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in _init_fields(type(value))}
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Turn a config dataclass into plain YAML-safe data (tuples -> lists, Path -> str).

    Args:
        cfg: A dataclass instance.

    Returns:
        Nested dicts of its init fields, which :func:`from_dict` turns back into an equal instance.
    """
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


# --------------------------------------------------------------------------------------------------------------------
# Overrides and loading
# --------------------------------------------------------------------------------------------------------------------


def _split_key(key: str, origin: str) -> list[str]:
    parts = key.strip().split(".")
    if not key.strip() or any(not p.strip() for p in parts):
        raise ConfigError(f"{origin}: empty key or key segment in {key!r} (expected a.b.c)")
    return [p.strip() for p in parts]


def _set_nested(target: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            # A later `a.b=..` wins over an earlier scalar `a=..`.
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = to_dict(value)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        elif isinstance(value, Mapping):
            out[key] = _merge({}, value)
        else:
            out[key] = value
    return out


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """Parse repeatable ``--set a.b=c`` overrides into a nested dict.

    Values are read with ``yaml.safe_load`` (``3`` -> int, ``true`` -> bool, ``[1,2]`` -> list,
    ``null`` or nothing -> None). Later items win over earlier ones.

    Args:
        items: Strings of the form ``dotted.key=value``.

    Returns:
        Nested dict, e.g. ``["optim.lr=0.1"]`` -> ``{"optim": {"lr": 0.1}}``.

    Raises:
        ConfigError: An item without ``=``, with an empty key or key segment, or a value that is not YAML.
    """
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-3")
        key, raw = item.split("=", 1)
        parts = _split_key(key, f"--set {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            problem = str(err).splitlines()[0]
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({problem}); quote it") from None
        except RecursionError:
            # PyYAML's composer recurses once per level: a few hundred nested brackets exhaust the stack.
            problem = f"the YAML is nested deeper than {MAX_CONFIG_DEPTH} levels"
            raise ConfigError(f"--set {_clip(item)}: {problem}") from None
        _check_depth(value, f"--set {_clip(item)}", len(parts) - 1)
        _set_nested(out, parts, value)
    return out


def _clip(item: str) -> str:
    return repr(item if len(item) <= 60 else item[:57] + "...")


def _check_depth(value: Any, where: str, above: int = 0) -> None:
    """Refuse data nested deeper or larger than any config (merging and validation walk it recursively).

    Args:
        value: parsed YAML.
        where: the file or ``--set`` item, for the message.
        above: levels the value sits under (``a.b.c=...`` adds two).

    Raises:
        ConfigError: deeper than :data:`MAX_CONFIG_DEPTH`, or expanding (through aliases) to too many values.
    """
    problem = nesting_problem(value, max_depth=MAX_CONFIG_DEPTH, above=above)
    if problem:
        raise ConfigError(f"{where}: the YAML is {problem}")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: let the SafeLoader raise its own error below
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(config_file: str | Path) -> dict[str, Any]:
    path = Path(config_file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a YAML config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file ({err})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe_load semantics
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        # PyYAML's composer recurses once per level: a few hundred nested brackets exhaust the stack.
        raise ConfigError(f"{path}: the YAML is nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    if data is None:  # an empty file or only comments: nothing to override
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys, got {type(data).__name__}")
    _check_depth(data, str(path))
    return data


def read_yaml(config_file: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping, read strictly (safe-load semantics, no duplicate keys, bounded nesting).

    Every config file medvit reads (``--config``, presets, a run's stored ``config.yaml``) goes through here.

    Args:
        config_file: the file.

    Returns:
        Its top-level mapping (``{}`` for an empty file).

    Raises:
        ConfigError: missing or unreadable, invalid YAML, not a mapping, nested too deep or too large (naming the
            file).
    """
    return _read_yaml(config_file)


def _layer_has(layer: Mapping[str, Any], key: str) -> bool:
    """Whether ``layer`` sets ``key`` or one of its prefixes (``optim.betas[1]`` is checked as ``optim.betas``)."""
    node: Any = layer
    for part in key.split("[", 1)[0].split("."):
        if not isinstance(node, Mapping):
            return True  # a prefix of the key was set here as a scalar
        if part not in node:
            return False
        node = node[part]
    return True


def load_config(
    cls: type[T],
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    preset: str | Path | Mapping[str, Any] | None = None,
    **options: Any,
) -> T:
    """Resolve a config: defaults < preset < YAML file < ``--set`` overrides < first-class options.

    Args:
        cls: The config dataclass type.
        config_file: Optional YAML file (read with safe-load semantics; duplicate keys are errors).
        preset: Optional app preset applied over the defaults: a YAML file (e.g. ``presets/tiny.yaml`` shipped
            as package data) or an already parsed mapping.
        overrides: ``--set`` items, ``dotted.key=value``.
        **options: First-class CLI options as dotted keys (pass ``**{"train.out": out}`` for nested ones);
            entries whose value is None (option not given) are ignored.

    Returns:
        A validated instance of ``cls``.

    Raises:
        ConfigError: Missing file, invalid YAML, non-mapping top level (naming the file); malformed
            ``--set``; unknown keys or wrong types (naming the dotted key and where it was set).
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if isinstance(preset, Mapping):
        layers.append(("preset", dict(preset)))
    elif preset is not None:
        layers.append((f"preset {Path(preset).stem}", _read_yaml(preset)))
    if config_file is not None:
        layers.append((str(Path(config_file).expanduser()), _read_yaml(config_file)))
    if overrides:
        if isinstance(overrides, str):  # a lone string would be iterated character by character
            overrides = [overrides]
        layers.append(("--set", parse_set(overrides)))
    opts: dict[str, Any] = {}
    for key, value in options.items():
        if value is not None:
            _set_nested(opts, _split_key(key, f"option {key!r}"), value)
    if opts:
        layers.append(("command-line option", opts))

    merged: dict[str, Any] = {}
    for _, layer in layers:
        merged = _merge(merged, layer)
    try:
        return from_dict(cls, merged)
    except _KeyConfigError as err:
        source = next((name for name, layer in reversed(layers) if err.key and _layer_has(layer, err.key)), None)
        if source is None:
            raise ConfigError(str(err)) from None
        if source in ("--set", "command-line option"):
            raise ConfigError(f"{err} (from {source})") from None
        raise ConfigError(f"{source}: {err}") from None


def preset_file(folder: str | Path, name: str, names: Sequence[str], app: str) -> Path:
    """YAML file ``folder/<name>.yaml`` of a named app preset (shipped as package data beside the app's config).

    Args:
        folder: the app's ``presets`` folder.
        name: preset name.
        names: the app's presets.
        app: the app as errors name it (``ct-seg``).

    Returns:
        The preset's path.

    Raises:
        ConfigError: ``name`` is not one of ``names`` (listing them).
    """
    if name not in names:
        raise ConfigError(f"unknown {app} preset {name!r}; choose one of {', '.join(names)}")
    return Path(folder) / f"{name}.yaml"


def resumed_run_config(
    run: str | Path, *, resume: bool, preset: str | None, config_file: str | Path | None
) -> dict[str, Any] | None:
    """The stored ``RUN/config.yaml`` a resumed run starts from, or None.

    A ``--resume`` without ``--preset`` or ``--config`` keeps the run's own settings (the apps' ``load_train_config``
    layer it where the preset would be, with ``--set`` and the options still over it); a new run, or a resume that
    names a preset or a config file, gets None.

    Raises:
        ConfigError: an unreadable stored config.
    """
    stored = Path(run) / "config.yaml"
    if resume and stored.is_file() and preset is None and config_file is None:
        return read_yaml(stored) or None
    return None


def preset_layer(path: str | Path, name: str) -> dict[str, Any]:
    """A preset file as the ``preset`` layer of :func:`load_config`: its mapping plus ``preset: name``.

    Args:
        path: the preset YAML (read strictly, as a config file).
        name: recorded in the config's ``preset`` field.

    Returns:
        The layer.

    Raises:
        ConfigError: unreadable or invalid YAML (naming the file).
    """
    return {**_read_yaml(path), "preset": name}


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that writes short lists of scalars inline (``patch_size: [16, 16]``)."""


def _represent_list(dumper: _Dumper, data: list) -> yaml.Node:
    flow = len(data) <= 8 and all(isinstance(v, (bool, int, float, str, type(None))) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically, with a header naming the medvit version.

    Args:
        cfg: A config dataclass instance.
        path: Output file (parents are created). :func:`load_config` reads it back to an equal config.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    text = f"# resolved {type(cfg).__name__} written by medvit {__version__}\n{body}"
    return write_text_atomic(path, text)


def replace_path(cfg: T, key: str, value: Any) -> T:
    """Return a copy of ``cfg`` with the dotted ``key`` set to ``value``, validated like :func:`from_dict`.

    Args:
        cfg: A config dataclass instance (left unchanged).
        key: Dotted field path, e.g. ``"optim.lr"``.
        value: New value; plain YAML forms are converted as in :func:`from_dict` (list -> tuple, ...).

    Returns:
        The updated copy; untouched nested sections are shared with ``cfg``.

    Raises:
        ConfigError: Unknown key or wrong type.
    """
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"replace_path needs a dataclass instance, got {type(cfg).__name__}")
    parts = _split_key(key, f"replace_path({key!r})")
    update: dict[str, Any] = {}
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        node = getattr(node, part, None) if dataclasses.is_dataclass(node) else None
        if isinstance(node, Mapping):
            # A key inside a dict field updates that one entry; the rest of the dict stays.
            inner = copy.deepcopy(dict(node))
            _set_nested(inner, parts[i + 1 :], value)
            _set_nested(update, parts[: i + 1], inner)
            break
    else:
        _set_nested(update, parts, value)
    try:
        return _build(type(cfg), update, "", cfg)
    except _KeyConfigError as err:
        raise ConfigError(str(err)) from None
