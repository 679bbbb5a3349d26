"""Transformer model dimensions and the sizes derived from them.

Models: dense decoder-only transformers of the Llama / Qwen2 / Mistral families (GQA,
SwiGLU MLP, RMSNorm, rotary embeddings, optional QKV bias, optional tied embeddings) as
read from a shipped YAML (``sim/models/<name>.yaml``) or from a Hugging Face
``config.json``. Derives parameter count, weight bytes and KV-cache bytes per token.

Ignores: MoE and MLA (DeepSeek) layouts, sliding-window attention (Mistral v0.1's 4k
window is treated as full attention), quantization scales' own bytes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from sim.config import ConfigError

MODELS_DIR = Path(__file__).resolve().parent / "models"

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2,
               "fp8": 1, "float8_e4m3fn": 1, "int8": 1, "int4": 0.5}
SUPPORTED_ARCH = {"llama", "qwen2", "mistral"}


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions of one model; all derived sizes are properties."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    max_position_embeddings: int = 131072
    architecture: str = "llama"
    source: str = ""

    @property
    def weight_bytes_per_param(self) -> float:
        return DTYPE_BYTES[self.weight_dtype]

    @property
    def kv_bytes_per_elem(self) -> float:
        return DTYPE_BYTES[self.kv_dtype]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        h, q, kv, i = self.hidden_size, self.q_size, self.kv_size, self.intermediate_size
        attn = h * (q + 2 * kv) + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        mlp = 3 * h * i
        norms = 2 * h
        return attn + mlp + norms

    @property
    def num_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        return self.num_layers * self.params_per_layer + embed + head + self.hidden_size

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.weight_bytes_per_param

    @property
    def kv_bytes_per_token_per_layer(self) -> float:
        return 2 * self.kv_size * self.kv_bytes_per_elem

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes of K and V cache one token holds across all layers."""
        return self.num_layers * self.kv_bytes_per_token_per_layer

    def summary(self) -> dict:
        return {"name": self.name, "layers": self.num_layers, "hidden": self.hidden_size,
                "heads": self.num_heads, "kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "params_b": round(self.num_params / 1e9, 3),
                "weight_gb": round(self.weight_bytes / 1e9, 2),
                "kv_kb_per_token": round(self.kv_bytes_per_token / 1e3, 1)}


def _from_hf(cfg: dict, name: str, source: str) -> ModelSpec:
    def need(key: str):
        if key not in cfg:
            raise ConfigError(key, "missing in model config (expected an HF config.json field)", source)
        return cfg[key]

    arch = str(cfg.get("model_type", "llama"))
    if arch not in SUPPORTED_ARCH:
        raise ConfigError("model_type", f"unsupported architecture '{arch}'; expected one of {sorted(SUPPORTED_ARCH)}", source)
    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    dtype = str(cfg.get("weight_dtype") or cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    if dtype not in DTYPE_BYTES:
        raise ConfigError("torch_dtype", f"unknown dtype '{dtype}'; expected one of {sorted(DTYPE_BYTES)}", source)
    kv_dtype = str(cfg.get("kv_dtype", dtype))
    if kv_dtype not in DTYPE_BYTES:
        raise ConfigError("kv_dtype", f"unknown dtype '{kv_dtype}'; expected one of {sorted(DTYPE_BYTES)}", source)
    spec = ModelSpec(
        name=name,
        num_layers=int(need("num_hidden_layers")),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads", heads)),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(need("intermediate_size")),
        vocab_size=int(need("vocab_size")),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
        weight_dtype=dtype, kv_dtype=kv_dtype,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 131072)),
        architecture=arch, source=str(cfg.get("source", source)),
    )
    for field_name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "vocab_size"):
        if getattr(spec, field_name) <= 0:
            raise ConfigError(field_name, "must be a positive integer", source)
    if spec.num_heads % spec.num_kv_heads:
        raise ConfigError("num_key_value_heads", "must divide num_attention_heads", source)
    return spec


def shipped_models() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def load_model(name_or_path: str, base_dir: str | Path = ".", kv_dtype: str | None = None) -> ModelSpec:
    """A shipped model by name, or a path to an HF ``config.json`` or a model YAML."""
    shipped = MODELS_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        path = shipped
    else:
        path = Path(name_or_path)
        if not path.is_absolute():
            path = Path(base_dir) / path
        if not path.exists():
            raise ConfigError("model", f"unknown model '{name_or_path}'; expected one of {shipped_models()} "
                                       "or a path to an HF config.json")
    text = path.read_text()
    try:
        cfg = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError("model", f"cannot parse model config: {e}", str(path)) from None
    if not isinstance(cfg, dict):
        raise ConfigError("model", "expected a mapping", str(path))
    if kv_dtype:
        cfg = {**cfg, "kv_dtype": kv_dtype}
    name = str(cfg.get("name", path.parent.name if path.name == "config.json" else path.stem))
    return _from_hf(cfg, name, str(path))
