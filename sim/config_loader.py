"""Loading configs: strict conversion of plain data (YAML, mappings, ``--set`` overrides) into
the frozen dataclasses of ``sim.config``, and back to plain data.

Models: an unknown key, a wrong type or an impossible value raises :class:`ConfigError`
naming the file, the dotted key (``cluster.pools[1].engine.max_num_seqs``) and what was
expected. ``--set a.b=c`` overrides parse their value as YAML and may replace a whole
sub-config. A pool's ``engine`` mapping is merged key by key over the top-level ``engine``
before conversion (a pool overrides only what it names).

Ignores: YAML tags beyond the safe loader's, anchors across files.
"""
from __future__ import annotations

import collections.abc
import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from sim.errors import ConfigError

def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (Mapping, collections.abc.Mapping, dict) or tp in (dict,):
        return "a mapping"
    if origin in (tuple, list):
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, collections.abc.Mapping, dict) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(key, f"unsupported field type {tp}")


def _check_bounds(meta: Mapping, value: Any, key: str) -> None:
    if value is None or not meta:
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(key, f"expected one of {list(meta['choices'])}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("ge") is not None and value < meta["ge"]:
            raise ConfigError(key, f"expected a value >= {meta['ge']}, got {value!r}")
        if meta.get("gt") is not None and value <= meta["gt"]:
            raise ConfigError(key, f"expected a value > {meta['gt']}, got {value!r}")
        if meta.get("le") is not None and value > meta["le"]:
            raise ConfigError(key, f"expected a value <= {meta['le']}, got {value!r}")


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data`` strictly; errors carry the dotted key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{prefix}.{k}" if prefix else str(k),
                          f"unknown key; expected one of {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _convert(hints[name], data[name], key)
            _check_bounds(f.metadata, value, key)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, f"missing required key ({_type_name(hints[name])})")
    obj = cls(**kwargs)
    check = getattr(obj, "_check", None)
    if check:
        check(prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (for YAML/JSON output)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def apply_overrides(data: dict, overrides: Mapping[str, Any] | list[str]) -> dict:
    """Return a copy of ``data`` with dotted-key overrides applied.

    ``overrides`` is either ``["a.b=yaml", ...]`` (CLI form, values parsed as YAML) or a
    mapping ``{"a.b": value}`` (Python form; ``a__b`` is accepted for keyword arguments).
    """
    out = copy.deepcopy(data)
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, Mapping):
        items = [(k.replace("__", "."), v) for k, v in overrides.items()]
    else:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(item, "override must look like key.path=value")
            k, v = item.split("=", 1)
            try:
                items.append((k.strip(), yaml.safe_load(v)))
            except yaml.YAMLError as e:
                raise ConfigError(k.strip(), f"override value is not valid YAML: {e}") from None
    for key, value in items:
        parts = key.split(".")
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(".".join(parts[: i + 1]), "cannot set a sub-key of a non-mapping value")
            node = nxt
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; errors name the file and the line."""
    p = Path(path)
    if not p.exists():
        raise ConfigError("", f"no such file", str(p))
    try:
        # libyaml's C loader when present (same safe semantics; calibrated profiles are large)
        data = yaml.load(p.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"invalid YAML{where}: {getattr(e, 'problem', e)}", str(p)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a mapping at the top level, got {type(data).__name__}", str(p))
    return data


def merge_pool_engines(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data`` with each ``cluster.pools[i].engine`` mapping merged key by key over the
    top-level ``engine`` mapping (a pool's keys win). Anything malformed is left as it is
    for the strict conversion to report."""
    cluster = data.get("cluster") if isinstance(data, Mapping) else None
    pools = cluster.get("pools") if isinstance(cluster, Mapping) else None
    top = data.get("engine", {})
    if not isinstance(pools, (list, tuple)) or not isinstance(top, Mapping) or not top:
        return data
    new_pools = []
    for p in pools:
        if isinstance(p, Mapping) and isinstance(p.get("engine"), Mapping):
            p = {**p, "engine": {**top, **p["engine"]}}
        new_pools.append(p)
    return {**data, "cluster": {**cluster, "pools": new_pools}}


def load_config(source, overrides: Mapping[str, Any] | list[str] | None = None):
    """Load a :class:`sim.config.SimConfig` from a YAML path, a mapping or a config, with
    overrides."""
    from sim.config import SimConfig  # the dataclasses sit above the loader

    src_name = None
    base_dir = "."
    if isinstance(source, SimConfig):
        data = to_dict(source)
        base_dir = source.base_dir
    elif isinstance(source, Mapping):
        data = dict(source)
        src_name = "<dict>"
    else:
        data = read_yaml(source)
        src_name = str(source)
        base_dir = str(Path(source).resolve().parent)
    if overrides:
        data = apply_overrides(data, overrides)
    data.setdefault("base_dir", data.get("base_dir", base_dir))
    data = merge_pool_engines(data)
    try:
        return from_dict(SimConfig, data)
    except ConfigError as e:
        raise e.with_source(src_name or "<config>") from None


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
