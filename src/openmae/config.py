"""Configuration: nested dataclasses are the single source of defaults; YAML files and ``key.sub=value``
overrides only change them. Every value is type-checked and every section validated before work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range; the message names key, value and what is allowed."""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null (unset)"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the type hint ``tp`` (converting int -> float, list -> tuple, str -> number)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}={value!r} is not a valid {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(args)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, (int, float)) and origin is tuple and args and args[-1] is not Ellipsis:
            value = [value] * len(args)  # img_size=32 -> (32, 32)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}={value!r} must have {len(args)} items")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-3" (no dot) as a string
            except ValueError:
                raise ConfigError(f"{key}={value!r} must be a number") from None
        raise ConfigError(f"{key}={value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} must be a string")
    if isinstance(tp, type) and issubclass(tp, dict):
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key}={value!r} must be a mapping")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# The official MAE code's command-line names (main_pretrain.py, main_finetune.py, main_linprobe.py) and other
# common spellings, by the setting they are called here: ``accum_iter=4`` is met with ``train.accum_steps``.
OTHER_NAMES = {"accum_iter": "accum_steps", "input_size": "img_size", "image_size": "img_size", "preset": "name",
               "data_path": "path", "nb_classes": "num_classes", "aa": "auto_augment", "finetune": "init",
               "num_epochs": "epochs", "warmup": "warmup_epochs", "lr_min": "min_lr", "drop_path_rate": "drop_path"}


def _sections(cls: type) -> list[tuple[str, type]]:
    """The dataclass sections of ``cls``, by name."""
    hints = _hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]


def _guess(cls: type, key: str, prefix: str, root: type | None = None) -> str | None:
    """The setting an unknown ``key`` most likely meant: a close spelling in its section (``train.lrr``:
    ``train.lr``), the one it begins (``pretrain.mask``: ``pretrain.mask_ratio``), the same name in a section
    below (``epochs`` at the top level: ``train.epochs``) or in another section of the ``root`` configuration
    (``data.img_size``: ``model.img_size``), or the setting the official code's name for it is called here
    (``train.accum_iter``: ``train.accum_steps``)."""
    names = [f.name for f in dataclasses.fields(cls)]
    if key in OTHER_NAMES and OTHER_NAMES[key] in names:
        return prefix + OTHER_NAMES[key]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.75) or [n for n in names if n.startswith(key)][:1]
    if close:
        return prefix + close[0]
    below = [(f"{prefix}{name}.", tp) for name, tp in _sections(cls)]
    beside = [(f"{name}.", tp) for name, tp in (_sections(root) if root is not None else []) if tp is not cls]
    for wanted in (key, OTHER_NAMES.get(key)):
        for place, tp in below + beside:
            if wanted in {f.name for f in dataclasses.fields(tp)}:
                return place + wanted
    return None


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "", base: T | None = None,
              root: type | None = None) -> T:
    """Build dataclass ``cls`` from a (partial) nested dict, refusing unknown keys and wrong types.

    Values not in ``data`` keep those of ``base`` (default: ``cls()``), so a section whose default comes
    from a task-specific factory (fine-tuning's ``train.blr``) keeps it when only other keys are set. ``root``: the
    whole configuration a section belongs to, where an unknown key's likely meaning is looked for too.
    """
    if not isinstance(data, dict):
        if not prefix:
            raise ConfigError(f"a configuration must be a mapping of sections, got {data!r}")
        fields = [f.name for f in dataclasses.fields(cls)]
        # the setting a single value most likely meant (model=mae_vit_base_patch16: model.name, as the official
        # code's --model; finetune=weights.pth: finetune.init; data=/my/images: data.path)
        meant = [n for n in ("path", "init", "name") if n in fields and (n != "path" or "/" in str(data))]
        raise ConfigError(f"{prefix.rstrip('.')} is a section of settings, not a value: got {data!r}"
                          + (f"; did you mean {prefix}{meant[0]}={data}?" if meant and not isinstance(data, list)
                             else f"; its settings are {sorted(fields)}"))
    base = cls() if base is None else base
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        guesses = [guess for k in unknown if (guess := _guess(cls, k, prefix, root))]
        raise ConfigError(f"unknown setting(s) {[prefix + k for k in unknown]}"
                          + (f" (did you mean {', '.join(guesses)}?)" if guesses else "")
                          + f"; valid under '{prefix.rstrip('.') or 'top level'}': {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}.", getattr(base, name), root or cls)
        else:
            kwargs[name] = coerce(value, tp, prefix + name)
    return dataclasses.replace(base, **kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON and checkpoints."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=10"`` -> ("train.epochs", 10); the value is read as YAML (numbers, lists, true/false)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


PRESETS = Path(__file__).parent / "configs"  # the YAML presets installed with openmae: pretrain/, finetune/, linprobe/


def preset_names(folder: str) -> list[str]:
    """The names of the presets in ``PRESETS/<folder>`` (``mae_vit_base_imagenet``, ...), sorted."""
    return sorted(p.stem for p in (PRESETS / folder).glob("*.yaml")) if folder else []


def config_file(given: str | Path, folder: str = "") -> Path:
    """The YAML file ``given`` names: a file's path, else one of the installed presets, by name in ``folder``
    (``mae_vit_base_imagenet``), by ``<folder>/<name>``, or by its path in a source checkout
    (``configs/pretrain/cifar10.yaml``, which a ``pip install`` leaves behind)."""
    path = Path(given)
    if path.is_file():
        return path
    name = path.as_posix().removeprefix("configs/").removesuffix(".yaml")
    if ".." not in path.parts:  # a name within the presets' folder, never above it
        for candidate in (PRESETS / folder / f"{name}.yaml", PRESETS / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    names = preset_names(folder)
    close = difflib.get_close_matches(Path(name).name, names, n=1)
    presets = (f"; did you mean the preset {close[0]}?" if close else "") + (
        f" The presets of this command: {', '.join(names)} (-c <name>)" if names else "")
    raise ConfigError(f"config file {given} does not exist{presets}")


def load_config(cls: type[T], files: list[str | Path] | None = None, overrides: list[str] | None = None,
                check: bool = True) -> T:
    """Defaults of ``cls``, then each YAML file in order (a path, or the name of one of ``cls``'s presets:
    :func:`config_file`), then ``key.sub=value`` overrides; validated unless ``check`` is false (types are checked
    either way)."""
    tree: dict[str, Any] = {}
    for given in files or []:
        path = config_file(given, getattr(cls, "PRESETS", ""))
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        loaded.pop("base", None)
        tree = _merge(tree, loaded)
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    cfg = from_dict(cls, tree)
    if check:
        validate(cfg)
    return cfg


def validate(cfg: Any, prefix: str = "") -> None:
    """Call ``check()`` on every nested dataclass that defines one."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
    check = getattr(cfg, "check", None)
    if callable(check):
        check()


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` naming the key, the value seen and the allowed range when ``ok`` is false."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: must be {allowed}")


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
