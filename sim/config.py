"""Frozen configuration dataclasses and the strict YAML loader.

Models: every knob of a simulation as plain, picklable, frozen data. A run is a pure
function of (resolved config, seed). Loading is strict: an unknown key, a wrong type or
an impossible value raises :class:`ConfigError` naming the file, the dotted key and what
was expected. ``--set a.b=c`` overrides parse their value as YAML and may replace a
whole sub-config.

Ignores: anything not declared here; there are no global defaults outside these classes.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the file, the dotted key and what was expected."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key = key
        self.source = source
        self.message = message
        where = f"{source}: " if source else ""
        keytxt = f"key '{key}': " if key else ""
        super().__init__(f"{where}{keytxt}{message}")

    def with_source(self, source: str) -> "ConfigError":
        return ConfigError(self.key, self.message, source)


def _c(*, ge: float | None = None, gt: float | None = None, le: float | None = None,
       choices: tuple | None = None, doc: str = "") -> dict:
    """Field metadata: numeric bounds, allowed values and a one-line description."""
    return {"ge": ge, "gt": gt, "le": le, "choices": choices, "doc": doc}


@dataclass(frozen=True)
class DistSpec:
    """A named distribution or process with its parameters (checked by its registry)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TraceSpec:
    """Replay of a recorded trace (see sim.workload.traces)."""

    path: str = field(metadata=_c(doc="trace file; relative paths resolve against the config file"))
    format: str = field(default="auto", metadata=_c(doc="reader name or 'auto' (by file name)"))
    columns: Mapping[str, str] = field(default_factory=dict,
                                       metadata=_c(doc="generic CSV/JSONL: our field -> your column"))
    start_s: float = field(default=0.0, metadata=_c(ge=0))
    end_s: float | None = field(default=None, metadata=_c(gt=0))
    max_requests: int | None = field(default=None, metadata=_c(ge=1))
    time_scale: float = field(default=1.0, metadata=_c(gt=0, doc="multiply inter-arrival times"))
    target_rate_per_s: float | None = field(default=None, metadata=_c(gt=0))
    sample_frac: float = field(default=1.0, metadata=_c(gt=0, le=1))
    on_bad_row: str = field(default="error", metadata=_c(choices=("error", "skip")))


@dataclass(frozen=True)
class WorkloadConfig:
    """Which requests arrive when, with how many prompt and output tokens."""

    num_requests: int | None = field(default=None, metadata=_c(ge=1))
    duration_s: float | None = field(default=None, metadata=_c(gt=0))
    arrival: DistSpec = field(default_factory=lambda: DistSpec("poisson", {"rate_per_s": 1.0}))
    prompt_tokens: DistSpec = field(default_factory=lambda: DistSpec("fixed", {"value": 512}))
    output_tokens: DistSpec = field(default_factory=lambda: DistSpec("fixed", {"value": 128}))
    trace: TraceSpec | None = None
    priority: DistSpec | None = field(default=None, metadata=_c(
        doc="per-request priority class, a length distribution (lower = more urgent; engine.scheduling_policy: priority)"))


@dataclass(frozen=True)
class EngineConfig:
    """One serving engine replica's settings (vLLM names where vLLM has the knob).

    Fields left None take their value from ``preset`` if it sets them, else the base
    default (vLLM v1's); this happens at construction, so a loaded config always shows the
    expanded values (see ``sim.engine.presets`` and docs/policies.md).
    """

    preset: str | None = field(default=None, metadata=_c(
        doc="engine preset: static, orca, vllm-v0, vllm-v1, sarathi-serve (sim.engine.presets)"))
    batching: str | None = field(default=None, metadata=_c(
        doc="batching policy (sim.engine.batching); None = preset or vllm-v1"))
    max_num_seqs: int = field(default=256, metadata=_c(ge=1))
    max_num_batched_tokens: int | None = field(default=None, metadata=_c(ge=1, doc="token budget per step; None = preset or 8192"))
    block_size_tokens: int = field(default=16, metadata=_c(ge=1))
    gpu_memory_utilization: float = field(default=0.9, metadata=_c(gt=0, le=1))
    activation_reserve_bytes: float | None = field(
        default=None, metadata=_c(ge=0, doc="workspace held back from KV; None = estimated from max_num_batched_tokens"))
    enable_chunked_prefill: bool | None = field(default=None, metadata=_c(doc="None = preset or the batching policy's default"))
    max_model_len: int | None = field(default=None, metadata=_c(ge=1))
    scheduling_policy: str | None = field(default=None, metadata=_c(
        doc="queue order: fcfs, priority, shortest-prompt-first (sim.engine.queues); None = preset or fcfs"))
    preemption: str | None = field(default=None, metadata=_c(choices=("recompute", "swap"), doc="None = preset or recompute"))
    swap_space_bytes: float = field(default=4.0 * 2**30, metadata=_c(ge=0, doc="host swap space (vLLM --swap-space)"))
    kv_mode: str | None = field(default=None, metadata=_c(
        choices=("paged", "contiguous"), doc="contiguous = reserve each request's max length at admission"))
    max_tokens: int | None = field(default=None, metadata=_c(
        ge=1, doc="contiguous KV: output tokens reserved beyond the prompt; None = up to max_model_len"))
    watermark_frac: float | None = field(default=None, metadata=_c(
        ge=0, le=0.5, doc="fraction of blocks admission keeps free (vLLM v0: 0.01); None = preset or 0"))
    tbt_target_s: float | None = field(default=None, metadata=_c(
        gt=0, doc="Sarathi-Serve: choose the token budget so a step meets this time-between-tokens"))
    host_overhead_s: float = field(default=3.0e-3, metadata=_c(ge=0, doc="CPU time per step (schedule, prepare, sample)"))
    cuda_graphs: bool = field(default=False, metadata=_c(doc="decode-only steps replay CUDA graphs (padded batch, cheap launches)"))
    cuda_graph_max_batch_size: int = field(default=512, metadata=_c(ge=1, doc="largest captured decode batch"))
    cuda_graph_launch_s: float = field(default=1.0e-6, metadata=_c(ge=0, doc="per-kernel launch cost inside a graph"))

    def __post_init__(self):
        from sim.engine.presets import resolve  # lazy: sim.engine sits above sim.config

        for name, value in resolve(self).items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class CostConfig:
    """Which cost model prices a step, and its overrides."""

    name: str = "roofline"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SLOTargets:
    """Latency targets; a request meets them if it meets every target given (None = no target)."""

    ttft_s: float | None = field(default=None, metadata=_c(gt=0))
    tpot_s: float | None = field(default=None, metadata=_c(gt=0))
    e2e_s: float | None = field(default=None, metadata=_c(gt=0))


@dataclass(frozen=True)
class SLOConfig(SLOTargets):
    """Latency targets for all requests, optionally per priority class (``Request.priority``).

    ``classes: {c: {ttft_s: ...}}`` judges a request of class ``c`` against its entry; a
    target the entry leaves out (or null) falls back to the top-level one, and a class with
    no entry uses the top-level targets. Keys are class numbers (integers >= 0; the digit
    strings that JSON/YAML dumps write are accepted too). Entries are normalised at
    construction to ``{int: SLOTargets}``.
    """

    classes: Mapping[int, SLOTargets] = field(default_factory=dict, metadata=_c(
        doc="per priority class targets; missing targets fall back to the top-level ones"))

    def __post_init__(self):
        object.__setattr__(self, "classes", _slo_classes(self.classes, "slo.classes"))

    def targets_for(self, cls: int) -> SLOTargets:
        """The targets a request of priority class ``cls`` is judged against."""
        own = self.classes.get(cls)
        if own is None:
            return SLOTargets(self.ttft_s, self.tpot_s, self.e2e_s)
        return SLOTargets(*(getattr(self, n) if getattr(own, n) is None else getattr(own, n)
                            for n in ("ttft_s", "tpot_s", "e2e_s")))


def _slo_classes(value: Any, key: str) -> dict[int, SLOTargets]:
    """Strict ``{class: targets}``: keys integers >= 0, values SLOTargets mappings."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping of class number -> targets, got {value!r}")
    out: dict[int, SLOTargets] = {}
    for k, v in value.items():
        if isinstance(k, str) and k.isdigit():
            c = int(k)
        elif isinstance(k, int) and not isinstance(k, bool) and k >= 0:
            c = k
        else:
            raise ConfigError(f"{key}.{k}", f"expected a class number (an integer >= 0) as key, got {k!r}")
        if c in out:
            raise ConfigError(f"{key}.{k}", f"class {c} is given twice")
        out[c] = _convert(SLOTargets, v, f"{key}.{c}")
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class SimConfig:
    """A whole simulation: model, hardware, engine, workload, seed."""

    model: str = field(metadata=_c(doc="shipped model name or path to an HF config.json / model YAML"))
    hardware: str = field(metadata=_c(doc="hardware profile name or path to a profile YAML"))
    engine: EngineConfig = field(default_factory=EngineConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    cost_model: CostConfig = field(default_factory=CostConfig)
    slo: SLOConfig | None = None
    seed: int = field(default=0, metadata=_c(ge=0))
    fast_forward: bool = field(default=True, metadata=_c(doc="fast-forward pure-decode runs (same results, faster)"))
    base_dir: str = field(default=".", metadata=_c(doc="where relative paths resolve (set by the loader)"))


# ----------------------------------------------------------------------------- loading

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
    import copy

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


def load_config(source: str | Path | Mapping | SimConfig,
                overrides: Mapping[str, Any] | list[str] | None = None) -> SimConfig:
    """Load a :class:`SimConfig` from a YAML path, a mapping or a config, with overrides."""
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
    try:
        return from_dict(SimConfig, data)
    except ConfigError as e:
        raise e.with_source(src_name or "<config>") from None


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
