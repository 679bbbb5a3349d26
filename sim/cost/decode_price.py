"""Decode-attention price of a step as a function of its context sum, one function per
batch size: the hottest code of a simulation (once per decode step; split out of
sim/cost/roofline.py).

Models: the affine roofline of AttnDecode over the summed context, the profile's residual
correction and, for a measured head configuration, its shape table blended between the two
measured batch rows around the batch size; with a table and no class breaks, in closed form
per segment between measured contexts (K c^g); then the many-sequence terms where the profile
has them (sim.cost.ops.many_seq_s): a fixed cost per sequence per KV head, and the serial chain
of the longest program as a floor, from the longest context when the caller gives it (else
the mean: all contexts equal). Equal to ``op_time`` of the mean-context AttnDecode (with that
longest context) to rounding (tested); stepping and fast-forward call the same function, so
they agree bit for bit.

Ignores: the spread of contexts within a batch beyond the sum and the longest (the tile
padding of each sequence's last K/V tile is priced at the mean).
"""
from __future__ import annotations

import bisect
import math

from sim.cost.ops import chain_token_s, decode_chain_tokens


class DecodePriceMixin:
    """Methods of ``RooflineCost`` (which provides the hoisted profile constants)."""

    @property
    def uses_decode_context_max(self) -> bool:
        """The decode price reads the longest context (a serial-chain floor in the profile); the
        engine tracks it only then."""
        eff = self._dec_eff
        return bool(eff.chain_s_per_token or eff.chain_bytes_per_s)

    def _decode_fn(self, num: int):
        """Decode attention seconds as a function of the context sum, for ``num`` requests:
        the affine roofline, its correction and (if the profile has one) the measured table of
        this head configuration, with every constant of ``num`` hoisted and the piecewise-linear
        lookups inlined (the hottest function of a simulation: once per decode step).

        The table's two batch rows around ``num`` are linear in x = log2(context_sum / num)
        between measured contexts, so the blended log ratio is a + b x there and the factor
        exp(a + b x) = K c^g, with c the context sum, g = b / ln 2 and K = exp(a) num^-g
        (clamped ends: g = 0): one bisect and one pow per step. Stepping and fast-forward call
        the same function, so they agree bit for bit; it equals ``op_time`` of the
        mean-context AttnDecode to rounding (tested)."""
        m, eff = self.model, self._dec_eff
        fc = 4.0 * m.num_heads * m.head_dim
        kvb, qo = self._kv_bytes_tok_layer, num * self._q_o_bytes_per_req
        ff, fb, launch, L = eff.fixed_flops, eff.fixed_bytes, eff.launch_s, m.num_layers
        pc, pbw = self._peak * eff.compute_frac, self._bw * eff.bandwidth_frac
        peak, bw = self._peak, self._bw
        cx, cy = eff.corr_log2_x, eff.corr_factor
        has_corr = bool(cx)
        cx0, cx1, cy0, cy1 = (cx[0], cx[-1], cy[0], cy[-1]) if has_corr else (0.0, 0.0, 1.0, 1.0)
        cb, segs, general = _table_segments(self._dec_table, num)
        log2, bis = math.log2, bisect.bisect_right
        # many-sequence terms (ops.many_seq_s), hoisted: per-program cost, serial-chain floor
        ps = eff.per_seq_s * (num * m.num_kv_heads) if eff.per_seq_s else 0.0
        chain = bool(eff.chain_s_per_token or eff.chain_bytes_per_s)
        per_tok = chain_token_s(eff, 2 * m.head_dim * self._dtype_bytes) if chain else 0.0
        kvh, sms = m.num_kv_heads, self.hw.num_sms

        def f(context_sum: int, context_max: int = 0) -> float:
            """Seconds of all layers; ``context_max``: the longest context (0: the mean)."""
            flops = fc * context_sum
            bytes_ = context_sum * kvb + qo
            t_c = (flops + ff) / pc
            t_m = (bytes_ + fb) / pbw
            t = t_c if t_c > t_m else t_m
            if has_corr:  # OpEfficiency.correction, inlined
                a, b = flops / peak, bytes_ / bw
                x = (a if a > b else b) * 1e9
                if x > 0:
                    lx = log2(x)
                    if lx <= cx0:
                        t = t * cy0
                    elif lx >= cx1:
                        t = t * cy1
                    else:
                        j = bis(cx, lx)
                        t = t * (cy[j - 1] + (cy[j] - cy[j - 1]) * (lx - cx[j - 1]) / (cx[j] - cx[j - 1]))
            t = t + launch
            if context_sum > 0:
                if general is not None:
                    t *= general(context_sum)
                else:
                    k, g = segs[bis(cb, context_sum)]
                    t *= k * context_sum ** g if g else k
            if ps:
                t = t + ps
            if chain:
                c = launch + decode_chain_tokens(num, kvh, context_max or context_sum / num, sms) * per_tok
                if c > t:
                    t = c
            return L * t

        cbx = list(cb or []) + [math.inf]  # segment ends, with a sentinel past the last
        fast = has_corr and general is None

        def memory_bound(c: int) -> bool:
            """Both roofs and both ideal times memory-bound at context sum c, with a margin
            far above rounding: then, being affine in c, they are between two such points."""
            flops, bytes_ = fc * c, c * kvb + qo
            return ((bytes_ + fb) / pbw > (flops + ff) / pc * (1 + 1e-9)
                    and bytes_ / bw > flops / peak * (1 + 1e-9))

        def run(c: int, m: int, t: float, horizon: float, gemm_s: float, other_s: float,
                host_s: float, cmax: int = 0) -> tuple[list[float], list[float], list[float], float]:
            """Up to ``m`` pure-decode steps from context sum ``c`` (growing by ``num`` per
            step) and longest context ``cmax`` (growing by 1 per step; 0: unknown, the mean)
            starting at ``t``: each step's start, total (gemm + attention + other + host,
            in step_time's order) and attention seconds, stopping after the first step that
            ends at or after ``horizon``; returns them and the end time.  Each step's attention
            is ``f``'s, bit for bit (tested): ``f``'s arithmetic without its compute-roof
            branches, with the correction knot and the table segment found by walking forward
            (the context sum only grows).  None where that does not apply (the run is not
            memory-bound throughout, or the profile has no correction or a table with class
            breaks): the caller then prices step by step with ``f``."""
            if not (fast and m > 0 and memory_bound(c) and memory_bound(c + (m - 1) * num)):
                return None  # the caller steps ``f`` one step at a time
            starts, totals, attn = [], [], []
            s_app, t_app, a_app = starts.append, totals.append, attn.append
            jb = bis(cbx, c)
            sk, sg = segs[jb]
            nxt = cbx[jb]
            jc, xn = 0, cx0
            x0 = y0 = dy = dx = 0.0
            for _ in range(m):
                bytes_ = c * kvb + qo
                tt = (bytes_ + fb) / pbw
                lx = log2(bytes_ / bw * 1e9)
                if lx <= cx0:
                    tt = tt * cy0
                elif lx >= cx1:
                    tt = tt * cy1
                else:
                    while lx >= xn:  # jc = bisect_right(cx, lx)
                        jc += 1
                        x0, xn, y0 = xn, cx[jc], cy[jc - 1]
                        dy, dx = cy[jc] - y0, xn - x0
                    tt = tt * (y0 + dy * (lx - x0) / dx)
                tt = tt + launch
                while c >= nxt:  # jb = bisect_right(cb, c)
                    jb += 1
                    nxt = cbx[jb]
                    sk, sg = segs[jb]
                tt *= sk * c ** sg if sg else sk
                if ps:
                    tt = tt + ps
                if chain:
                    ch = launch + decode_chain_tokens(num, kvh, cmax or c / num, sms) * per_tok
                    if ch > tt:
                        tt = ch
                    if cmax:
                        cmax += 1
                a = L * tt
                tot = gemm_s + a + other_s + host_s
                s_app(t)
                t_app(tot)
                a_app(a)
                t = t + tot
                c += num
                if t >= horizon:
                    break
            return starts, totals, attn, t

        f.run = run
        return f


def _table_segments(tab, num: int):
    """(context-sum breakpoints, (K, g) per segment, None) for the factor K c^g of decode table
    ``tab`` at batch ``num``; ([], [(1.0, 0.0)], None) without a table; for a table with class
    breaks (never fitted for decode), (None, None, a function of the context sum)."""
    if tab is None:
        return [], [(1.0, 0.0)], None
    rc = tab._row_coords
    r = math.log2(num)
    i0 = i1 = 0
    w = 0.0
    if len(rc) == 1 or r <= rc[0]:
        pass
    elif r >= rc[-1]:
        i0 = i1 = len(rc) - 1
    else:
        i1 = bisect.bisect_right(rc, r)
        i0 = i1 - 1
        w = (r - rc[i0]) / (rc[i1] - rc[i0])
    if tab.breaks:
        return None, None, lambda c: math.exp(tab.log_factor((r, math.log2(c / num))))
    (_, xs0, ys0), (_, xs1, ys1) = tab.rows[i0], tab.rows[i1]
    if i1 == i0:
        w = 0.0

    def interp(xs, ys, x):
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        j = bisect.bisect_right(xs, x)
        return ys[j - 1] + (ys[j] - ys[j - 1]) * (x - xs[j - 1]) / (xs[j] - xs[j - 1])

    def y_at(x):
        y0 = interp(xs0, ys0, x)
        return y0 + (interp(xs1, ys1, x) - y0) * w if w else y0

    xb = sorted(set(xs0) | set(xs1))
    cb = [num * 2.0 ** x for x in xb]  # segment i covers cb[i-1] <= c < cb[i]
    segs = [(math.exp(y_at(xb[0])), 0.0)]
    for xa, xz in zip(xb, xb[1:]):
        ya, yz = y_at(xa), y_at(xz)
        b = (yz - ya) / (xz - xa)
        g = b / math.log(2.0)
        segs.append((math.exp(ya - b * xa) * num ** -g, g))
    segs.append((math.exp(y_at(xb[-1])), 0.0))
    return cb, segs, None
