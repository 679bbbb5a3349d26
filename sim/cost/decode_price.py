"""Decode-attention price of a step as a function of its context sum, one function per
batch size: the hottest code of a simulation (once per decode step; split out of
sim/cost/roofline.py).

Models: the affine roofline of AttnDecode over the summed context, the profile's residual
correction and, for a measured head configuration, its shape table blended between the two
measured batch rows around the batch size; with a table and no class breaks, in closed form
per segment between measured contexts (K c^g). Equal to ``op_time`` of the mean-context
AttnDecode to rounding (tested); stepping and fast-forward call the same function, so they
agree bit for bit.

Ignores: per-request context spread within a batch (the price sees the sum), as the
roofline does.
"""
from __future__ import annotations

import bisect
import math


class DecodePriceMixin:
    """Methods of ``RooflineCost`` (which provides the hoisted profile constants)."""

    def _decode_fn(self, num: int):
        """Decode attention seconds as a function of the context sum, for ``num`` requests:
        the affine roofline, its correction and (if the profile has one) the measured table of
        this head configuration, with every constant of ``num`` hoisted and the piecewise-linear
        lookups inlined (the hottest function of a simulation: once per decode step). Stepping
        and fast-forwarding both call it, so they agree bit for bit; it equals ``op_time`` of
        the mean-context AttnDecode to rounding (tested)."""
        m, eff = self.model, self._dec_eff
        fc = 4.0 * m.num_heads * m.head_dim
        kvb, qo = self._kv_bytes_tok_layer, num * self._q_o_bytes_per_req
        ff, fb, launch, L = eff.fixed_flops, eff.fixed_bytes, eff.launch_s, m.num_layers
        pc, pbw = self._peak * eff.compute_frac, self._bw * eff.bandwidth_frac
        peak, bw = self._peak, self._bw
        cx, cy = eff.corr_log2_x, eff.corr_factor
        has_corr = bool(cx)
        if has_corr:
            cx0, cx1, cy0, cy1 = cx[0], cx[-1], cy[0], cy[-1]
        tab = self._dec_table
        i0 = i1 = 0
        w = 0.0
        general_row = None
        xs0 = ys0 = xs1 = ys1 = ()
        if tab is not None:
            rc = tab._row_coords
            r = math.log2(num)
            if len(rc) == 1 or r <= rc[0]:
                pass
            elif r >= rc[-1]:
                i0 = i1 = len(rc) - 1
            else:
                i1 = bisect.bisect_right(rc, r)
                i0 = i1 - 1
                w = (r - rc[i0]) / (rc[i1] - rc[i0])
            if tab.breaks:
                general_row = tab._row
            else:  # no class breaks (decode tables): _interp_class on the two rows, inlined below
                (_, xs0, ys0), (_, xs1, ys1) = tab.rows[i0], tab.rows[i1]
        two_rows = i1 != i0
        log2, exp, bis = math.log2, math.exp, bisect.bisect_right
        if tab is not None and general_row is None:
            return self._decode_fn_segments(num, xs0, ys0, xs1, ys1, w if two_rows else 0.0)

        def f(context_sum: int) -> float:
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
                else:
                    t = t * 1.0
            t = t + launch
            if tab is not None and context_sum > 0:
                x = log2(context_sum / num)
                if general_row is not None:
                    y0 = general_row(i0, x)
                    y = y0 + (general_row(i1, x) - y0) * w if two_rows else y0
                else:  # _interp_class(xs0, ys0, x) and (xs1, ys1, x), inlined
                    if x <= xs0[0]:
                        y0 = ys0[0]
                    elif x >= xs0[-1]:
                        y0 = ys0[-1]
                    else:
                        j = bis(xs0, x)
                        y0 = ys0[j - 1] + (ys0[j] - ys0[j - 1]) * (x - xs0[j - 1]) / (xs0[j] - xs0[j - 1])
                    if two_rows:
                        if x <= xs1[0]:
                            y1 = ys1[0]
                        elif x >= xs1[-1]:
                            y1 = ys1[-1]
                        else:
                            j = bis(xs1, x)
                            y1 = ys1[j - 1] + (ys1[j] - ys1[j - 1]) * (x - xs1[j - 1]) / (xs1[j] - xs1[j - 1])
                        y = y0 + (y1 - y0) * w
                    else:
                        y = y0
                t *= exp(y)
            return L * t
        return f

    def _decode_fn_segments(self, num: int, xs0, ys0, xs1, ys1, w: float):
        """``_decode_fn`` for a table without class breaks, in closed form per segment: between
        consecutive measured contexts both table rows are linear in x = log2(context_sum /
        num), so the blended log ratio is a + b x and the factor exp(a + b x) = K c^g with
        c the context sum, g = b / ln 2 and K = exp(a) num^-g (clamped ends: g = 0). One
        bisect and one pow per step instead of two log/exp and three bisects; the same
        function to rounding (tested against op_time)."""
        m, eff = self.model, self._dec_eff
        fc = 4.0 * m.num_heads * m.head_dim
        kvb, qo = self._kv_bytes_tok_layer, num * self._q_o_bytes_per_req
        ff, fb, launch, L = eff.fixed_flops, eff.fixed_bytes, eff.launch_s, m.num_layers
        pc, pbw = self._peak * eff.compute_frac, self._bw * eff.bandwidth_frac
        peak, bw = self._peak, self._bw
        cx, cy = eff.corr_log2_x, eff.corr_factor
        has_corr = bool(cx)
        if has_corr:
            cx0, cx1, cy0, cy1 = cx[0], cx[-1], cy[0], cy[-1]

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
        log2, bis = math.log2, bisect.bisect_right

        def f(context_sum: int) -> float:
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
                k, g = segs[bis(cb, context_sum)]
                t *= k * context_sum ** g if g else k
            return L * t
        return f
