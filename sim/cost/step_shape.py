"""The textual syntax of one engine step's batch shape, and the ``BatchShape`` it stands for.

Models: the syntax that calibrate/stepshape.py defines for the in-step and whole-step
measurements (``servesim cost step`` accepts the same strings, so a measured step can be priced
by pasting its shape), without torch or the calibrate package (which is not installed with ``sim``):

  prefill  ``NEW[+PRIOR]xCOUNT[,...]``: COUNT chunks of NEW new tokens over PRIOR tokens already
           cached (default 0). ``2048x1,512x4`` is one 2048-token and four 512-token prompts;
           ``512+1536x1`` one 512-token chunk over 1536 cached tokens.
  decode   ``COUNT@CTX`` or ``COUNT@LO:HI``, comma-separated: COUNT sequences attending to CTX keys
           each (the cached context plus the new token, as ``BatchShape.decode_context_sum``
           counts them), or COUNT contexts spread evenly from LO to HI (context i is
           ``LO + (HI - LO) * i // (COUNT - 1)``; COUNT = 1 gives LO).

Both sides may be empty. The step samples one token per prefill chunk and per decode sequence
(every chunk taken as its prompt's last) unless told otherwise.

Ignores: which requests the chunks belong to (a cost model never sees identity).
"""
from __future__ import annotations

import re

from sim.cost.base import BatchShape

_CHUNK = re.compile(r"(\d+)(?:\+(\d+))?x(\d+)")
_GROUP = re.compile(r"(\d+)@(\d+)(?::(\d+))?")


def parse_prefill(text: str) -> list[tuple[int, int]]:
    """``2048x1,512+1536x2`` -> [(2048, 0), (512, 1536), (512, 1536)]: (new, prior) per chunk.
    Raises ValueError naming the bad part."""
    out: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = _CHUNK.fullmatch(part)
        if not m or int(m[1]) < 1 or int(m[3]) < 1:
            raise ValueError(f"prefill chunk {part!r}: expected NEW[+PRIOR]xCOUNT with NEW, COUNT >= 1 "
                             "(e.g. 512x4 or 512+1536x1)")
        out += [(int(m[1]), int(m[2] or 0))] * int(m[3])
    return out


def spread(count: int, lo: int, hi: int) -> list[int]:
    """The contexts ``COUNT@LO:HI`` stands for."""
    if count == 1:
        return [lo]
    return [lo + (hi - lo) * i // (count - 1) for i in range(count)]


def parse_decode(text: str) -> list[int]:
    """``32@1024`` -> [1024] * 32; ``4@64:1984`` -> [64, 704, 1344, 1984]; groups joined by commas.
    Raises ValueError naming the bad part."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = _GROUP.fullmatch(part)
        if not m or int(m[1]) < 1 or int(m[2]) < 1 or (m[3] is not None and int(m[3]) < int(m[2])):
            raise ValueError(f"decode group {part!r}: expected COUNT@CTX or COUNT@LO:HI with COUNT, CTX >= 1, "
                             "LO <= HI (e.g. 32@1024 or 64@64:1984)")
        n, lo = int(m[1]), int(m[2])
        out += [lo] * n if m[3] is None else spread(n, lo, int(m[3]))
    return out


def format_prefill(chunks: list[tuple[int, int]]) -> str:
    """The run-length prefill text of ``chunks`` (``[(512, 0)] * 4`` -> ``512x4``)."""
    runs: list[list] = []
    for c in chunks:
        if runs and runs[-1][0] == c:
            runs[-1][1] += 1
        else:
            runs.append([c, 1])
    return ",".join(f"{new}{'+' + str(prior) if prior else ''}x{n}" for (new, prior), n in runs)


def parse_shape(prefill: str, decode: str) -> tuple[list[tuple[int, int]], list[int]]:
    """(prefill chunks as (new, prior), decode contexts) of a step in the syntax above."""
    return parse_prefill(prefill), parse_decode(decode)


def parse_step(text: str) -> tuple[str, str]:
    """``PREFILL;DECODE`` -> (PREFILL, DECODE)."""
    if text.count(";") != 1:
        raise ValueError(f"step {text!r}: expected PREFILL;DECODE")
    p, d = text.split(";")
    return p.strip(), d.strip()


def phase(chunks, contexts) -> str:
    """``prefill``, ``decode`` or ``mixed``."""
    return "mixed" if chunks and contexts else ("prefill" if chunks else "decode")


def batch_shape(chunks: list[tuple[int, int]], contexts: list[int], num_sampled: int | None = None) -> BatchShape:
    """The ``BatchShape`` of a step: decode count and summed context; ``num_sampled`` defaults to
    one token per chunk and per decode sequence."""
    n = len(chunks) + len(contexts) if num_sampled is None else int(num_sampled)
    return BatchShape(list(chunks), len(contexts), sum(contexts), n)
