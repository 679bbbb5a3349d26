"""calibrate.timing without a GPU: the flush modes and the input rotation of flush "none"
(needs torch; skipped where it is not installed, as in the project's own venv)."""
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def timing(monkeypatch):
    from calibrate import timing as t
    monkeypatch.setattr(t, "DEV", "cpu")
    monkeypatch.setattr(t, "FLUSH_BYTES", 4096)
    monkeypatch.setattr(t, "_FLUSH", {})
    monkeypatch.setattr(t, "L2_BYTES", 50 * 2**20)
    return t


def test_rotation_copies(timing):
    l2 = timing.L2_BYTES
    assert timing.rotation(1.0, "zero") == timing.rotation(1.0, "read") == 1  # the flush empties L2
    assert timing.rotation(l2, "none") == 4                   # 4 x L2 between two uses of a copy
    assert timing.rotation(0.4 * l2, "none") == 10
    assert timing.rotation(0.39 * l2, "none") == 11           # rounded up
    assert timing.rotation(4 * l2 + 1, "none") == 1
    assert timing.rotation(1.0, "none") == timing.ROTATE_MAX_COPIES
    timing.TIMING["flush"], old = "none", timing.TIMING["flush"]
    try:
        assert timing.rotation(l2) == 4                        # the module setting when no mode is given
    finally:
        timing.TIMING["flush"] = old


def test_flush_modes(timing):
    zero = timing._flusher("zero")
    buf = timing._FLUSH["buf"]
    assert buf.numel() * 4 == timing.FLUSH_BYTES
    buf.fill_(3)
    zero()
    assert int(buf.abs().sum()) == 0                           # zero: writes every element
    buf.fill_(2)
    timing._flusher("read")()
    assert int(timing._FLUSH["sum"]) == 2 * buf.numel()        # read: reads every element, writes 8 bytes
    assert int(buf.sum()) == 2 * buf.numel()                   # ... and leaves the buffer as it was
    assert timing._flusher("none") is None
    with pytest.raises(ValueError, match="flush mode"):
        timing._flusher("bogus")


def test_bench_calls_the_rotation_and_the_flush(timing):
    calls = []
    fns = [lambda i=i: calls.append(i) for i in range(3)]
    t = timing.bench(fns, flush="read")
    assert t >= 0 and calls == [2, 0]                          # CPU mode: the last copy, the flush, one timed call
    with pytest.raises(ValueError):
        timing.bench(fns[0], flush="bogus")
