"""Model dimensions and derived sizes."""
import json

import pytest

from sim.config import ConfigError
from sim.model_spec import load_model, shipped_models


@pytest.mark.parametrize("name,params_b", [
    ("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.55), ("qwen2.5-0.5b", 0.494),
    ("qwen2.5-7b", 7.62), ("qwen2.5-72b", 72.71), ("mistral-7b", 7.25)])
def test_parameter_counts_match_published_sizes(name, params_b):
    m = load_model(name)
    assert m.num_params / 1e9 == pytest.approx(params_b, rel=2e-3)
    assert m.weight_bytes == m.num_params * 2


def test_kv_bytes_per_token_llama8b():
    m = load_model("llama-3.1-8b")
    assert m.kv_bytes_per_token == 32 * 2 * 8 * 128 * 2  # layers * (K,V) * kv_heads * head_dim * bf16


def test_hf_config_json(tmp_path):
    cfg = {"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": True,
           "torch_dtype": "bfloat16"}
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    m = load_model(str(d / "config.json"))
    assert m.name == "tiny" and m.head_dim == 16 and m.qkv_bias
    per_layer = 64 * (64 + 2 * 32) + 64 * 64 + (64 + 64) + 3 * 64 * 128 + 2 * 64
    assert m.num_params == 2 * per_layer + 1000 * 64 + 64


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'gpt-9'"):
        load_model("gpt-9")
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="num_attention_heads"):
        load_model(str(p))
    p.write_text(json.dumps({"model_type": "deepseek_v3"}))
    with pytest.raises(ConfigError, match="unsupported architecture"):
        load_model(str(p))


def test_six_models_ship():
    assert {"llama-3.1-8b", "llama-3.1-70b", "qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-72b", "mistral-7b"} <= set(shipped_models())
