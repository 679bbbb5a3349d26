"""Strict configuration loading: errors name the file, the dotted key and what was expected."""
import pytest
import yaml

from sim.config import ConfigError, SimConfig, apply_overrides, dump_yaml, load_config
from tests.conftest import ROOT, small_config


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_example_loads():
    cfg = load_config(ROOT / "workloads" / "default.yaml")
    assert isinstance(cfg, SimConfig)
    assert cfg.engine.max_num_seqs == 256 and cfg.workload.arrival.params == {"rate_per_s": 10}
    with pytest.raises(Exception):
        cfg.seed = 3  # frozen


@pytest.mark.parametrize("text,key,fragment", [
    ("model: a\nhardware: b\nengine: {max_num_seq: 3}\n", "engine.max_num_seq", "unknown key"),
    ("model: a\nhardware: b\nengine: {max_num_seqs: many}\n", "engine.max_num_seqs", "expected an integer"),
    ("model: a\nhardware: b\nengine: {max_num_seqs: 0}\n", "engine.max_num_seqs", ">= 1"),
    ("model: a\nhardware: b\nengine: {gpu_memory_utilization: 1.5}\n", "engine.gpu_memory_utilization", "<= 1"),
    ("model: a\nhardware: b\nengine: {preemption: evict}\n", "engine.preemption", "one of"),
    ("hardware: b\n", "model", "missing required key"),
    ("model: a\nhardware: b\nworkload: {arrival: {params: {}}}\n", "workload.arrival.name", "missing"),
    ("model: a\nhardware: b\nengine: 5\n", "engine", "expected a mapping"),
])
def test_errors_name_file_and_key(tmp_path, text, key, fragment):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and f"'{key}'" in msg and fragment in msg


def test_invalid_yaml_names_line(tmp_path):
    p = write(tmp_path, "model: a\nhardware: [b\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_config(p)


def test_overrides_parse_yaml_and_replace_subconfigs(tmp_path):
    p = write(tmp_path, yaml.safe_dump(small_config()))
    cfg = load_config(p, ["workload.output_tokens={name: uniform, params: {low: 16, high: 1024}}",
                          "engine.max_num_seqs=8", "seed=3"])
    assert cfg.workload.output_tokens.name == "uniform"
    assert cfg.workload.output_tokens.params == {"low": 16, "high": 1024}
    assert cfg.engine.max_num_seqs == 8 and cfg.seed == 3
    with pytest.raises(ConfigError, match="engine.nope"):
        load_config(p, ["engine.nope=1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["engine.max_num_seqs"])


def test_python_overrides_and_round_trip(tmp_path):
    cfg = load_config(small_config(), {"engine__max_num_seqs": 5})
    assert cfg.engine.max_num_seqs == 5
    again = load_config(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
