"""Hot loops of the hit generator (numba) and their plain numpy twins.

* A counter-based random generator (splitmix64 finalizer of ``key + counter*golden``):
  the n-th number of a stream is a pure function of (key, n), so the numba kernel and
  its vectorised numpy twin draw exactly the same numbers, independent of loop order.
* :func:`expand_clusters`: charge cloud -> fired pixels with ToT and timewalk.
* :func:`assemble_stream`: merge time-sorted hits with trigger/heartbeat words and apply
  the FIFO disorder, giving the word stream and the stream order of the hits.
* :func:`finish_stream`: pixel fields, sort, encode and assemble one chip's slice;
  :func:`fill_hit_truth`: the hits' truth records in stream order.

Formulas are documented in docs/simulator-physics.md and in :class:`simulators.physics.PhysicsModel`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .encode import encode_pixels, encode_pixels_np, pixel_time_fields

__all__ = [
    "N_PARAMS", "P_NOISE_E", "P_TOT_A", "P_TOT_B", "P_TOT_C", "P_TOT_D", "P_WALK_A", "P_WALK_B",
    "P_JITTER_NS", "P_MAX_RADIUS",
    "rng_uniform_np", "rng_normal2_np", "ndtri_np", "phi_np",
    "expand_clusters", "expand_clusters_np",
    "assemble_stream", "assemble_stream_np", "finish_stream", "finish_stream_np", "fill_hit_truth",
]

# Layout of the float64 parameter vector the cluster kernel takes (see PhysicsModel.kernel_params).
P_NOISE_E, P_TOT_A, P_TOT_B, P_TOT_C, P_TOT_D, P_WALK_A, P_WALK_B, P_JITTER_NS, P_MAX_RADIUS = range(9)
N_PARAMS = 9

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53
#: Box positions per cluster reserved in the counter space (a 17 x 17 box, radius <= 8); each
#: position ctr draws its charge noise from uniform 2*ctr and its time jitter from 2*ctr+1.
_BOX_STRIDE = 17
_CTR_PER_CLUSTER = _BOX_STRIDE * _BOX_STRIDE
UNITS_PER_NS = 4096.0 / 25.0


# ---------------------------------------------------------------- counter-based random numbers

@njit(cache=True, inline="always")
def _mix64(z):
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def _uniform(key, ctr):
    """Uniform in (0, 1) from (key, ctr); both uint64."""
    return (np.float64(_mix64(key + ctr * _GOLDEN) >> _S11) + 0.5) * _INV53


# Inverse of the standard normal CDF (P. J. Acklam's rational approximation, relative error
# < 1.2e-9): much cheaper than Box-Muller's log/sqrt/cos in the central 95 %.
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
      1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
      6.680131188771972e+01, -1.328068155288572e+01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
      -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
_P_LOW = 0.02425
_A0, _A1, _A2, _A3, _A4, _A5 = _A
_B0, _B1, _B2, _B3, _B4 = _B
_C0, _C1, _C2, _C3, _C4, _C5 = _C
_D0, _D1, _D2, _D3 = _D


@njit(cache=True, inline="always")
def _ndtri(p):
    if p < _P_LOW:
        q = math.sqrt(-2.0 * math.log(p))
        return ((((((_C0 * q + _C1) * q + _C2) * q + _C3) * q + _C4) * q + _C5)
                / ((((_D0 * q + _D1) * q + _D2) * q + _D3) * q + 1.0))
    if p > 1.0 - _P_LOW:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        return -((((((_C0 * q + _C1) * q + _C2) * q + _C3) * q + _C4) * q + _C5)
                 / ((((_D0 * q + _D1) * q + _D2) * q + _D3) * q + 1.0))
    q = p - 0.5
    r = q * q
    return ((((((_A0 * r + _A1) * r + _A2) * r + _A3) * r + _A4) * r + _A5) * q
            / (((((_B0 * r + _B1) * r + _B2) * r + _B3) * r + _B4) * r + 1.0))


def ndtri_np(p):
    """numpy twin of the kernel's inverse normal CDF."""
    p = np.asarray(p, np.float64)
    out = np.empty_like(p)
    lo, hi = p < _P_LOW, p > 1.0 - _P_LOW
    mid = ~(lo | hi)
    for sel, sign, pp in ((lo, 1.0, p[lo]), (hi, -1.0, 1.0 - p[hi])):
        q = np.sqrt(-2.0 * np.log(pp))
        out[sel] = sign * ((((((_C0 * q + _C1) * q + _C2) * q + _C3) * q + _C4) * q + _C5)
                           / ((((_D0 * q + _D1) * q + _D2) * q + _D3) * q + 1.0))
    q = p[mid] - 0.5
    r = q * q
    out[mid] = ((((((_A0 * r + _A1) * r + _A2) * r + _A3) * r + _A4) * r + _A5) * q
                / (((((_B0 * r + _B1) * r + _B2) * r + _B3) * r + _B4) * r + 1.0))
    return out


def rng_uniform_np(key, ctr):
    """numpy twin of the kernel's uniform(key, ctr)."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + np.asarray(ctr, dtype=np.uint64) * _GOLDEN
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        z = z ^ (z >> _S31)
    return ((z >> _S11).astype(np.float64) + 0.5) * _INV53


def rng_normal2_np(key, ctr):
    """The two normals the kernel draws for counter ``ctr``: ndtri(uniform(2*ctr)) (charge noise)
    and ndtri(uniform(2*ctr + 1)) (time jitter)."""
    ctr = np.asarray(ctr, dtype=np.uint64)
    return (ndtri_np(rng_uniform_np(key, np.uint64(2) * ctr)),
            ndtri_np(rng_uniform_np(key, np.uint64(2) * ctr + np.uint64(1))))


# ---------------------------------------------------------------- cluster expansion

# The normal CDF by linear interpolation in a table (512 steps per unit on [-8, 8]; error < 2e-7,
# far below anything a pixel's charge could show): math.erf costs ~25 ns, this ~3 ns.
_PHI_STEPS = 512
_PHI_HALF = 8.0
_PHI_N = int(2 * _PHI_HALF * _PHI_STEPS)
_PHI_TABLE = np.array([0.5 * (1.0 + math.erf((i / _PHI_STEPS - _PHI_HALF) / math.sqrt(2.0)))
                       for i in range(_PHI_N + 1)])


@njit(cache=True, inline="always")
def _phi(z):
    u = (z + _PHI_HALF) * _PHI_STEPS
    if u <= 0.0:
        return 0.0
    if u >= _PHI_N:
        return 1.0
    i = int(u)
    f = u - i
    return _PHI_TABLE[i] + f * (_PHI_TABLE[i + 1] - _PHI_TABLE[i])


def phi_np(z):
    """numpy twin of the kernel's normal CDF."""
    u = (np.asarray(z, np.float64) + _PHI_HALF) * _PHI_STEPS
    i = np.clip(u.astype(np.int64), 0, _PHI_N - 1)
    f = u - i
    out = _PHI_TABLE[i] + f * (_PHI_TABLE[i + 1] - _PHI_TABLE[i])
    return np.where(u <= 0.0, 0.0, np.where(u >= _PHI_N, 1.0, out))


@njit(cache=True, inline="always")
def _tot_counts(q_e, thr_e, a, b, c, d):
    qk = q_e * 1e-3
    tot = int(math.floor(a * qk + b - c / (qk - (thr_e * 1e-3 - d)) + 0.5))
    if tot < 1:
        return 1
    if tot > 1023:
        return 1023
    return tot


@njit(cache=True, nogil=True)
def expand_clusters(cx, cy, charge, sigma, t_units, cl_index0, key, thr_e, params, first,
                    out_x, out_y, out_tot, out_t, out_cl, size):
    """Turn entries ``first..`` into fired pixels, writing into the ``out_*`` arrays.

    An entry with ``sigma > 0`` is a particle: a Gaussian charge cloud (centre cx, cy in pixel
    units, rms ``sigma`` pixels, total ``charge`` electrons). A pixel collects the integral of
    the cloud over its square plus electronic noise N(0, noise_e) and fires above its threshold
    ``thr_e[x*256+y]`` (inf = masked). An entry with ``sigma <= 0`` is a noise hit of pixel
    (floor(cx), floor(cy)) with exactly ``charge`` electrons (already above threshold).
    ToT counts = round(a*q + b - c/(q - (thr - d))) in ke, clamped 1..1023; hit time =
    t + timewalk + N(0, jitter) with timewalk_ns = A / (ToT_ns + B).
    Pixels whose noiseless charge is below thr - 5*noise are skipped without drawing noise.
    ``out_cl`` gets the entry's position in the input; ``size`` its fired count.
    Returns (n_written, next_entry): stops early, before an entry that might not fit.
    """
    noise = params[P_NOISE_E]
    a, b, c, d = params[P_TOT_A], params[P_TOT_B], params[P_TOT_C], params[P_TOT_D]
    wa, wb, jit = params[P_WALK_A], params[P_WALK_B], params[P_JITTER_NS]
    rmax = int(params[P_MAX_RADIUS])
    cap = out_x.shape[0]
    ukey = np.uint64(key)
    cdfx = np.empty(_BOX_STRIDE + 1, np.float64)
    cdfy = np.empty(_BOX_STRIDE + 1, np.float64)
    fxs = np.empty(_BOX_STRIDE, np.float64)
    fys = np.empty(_BOX_STRIDE, np.float64)
    cols = np.empty(_BOX_STRIDE, np.int64)
    thr_min = np.inf
    for p in range(thr_e.shape[0]):
        if thr_e[p] < thr_min:
            thr_min = thr_e[p]
    low = thr_min - 5.0 * noise
    n = 0
    k = first
    ncl = cx.shape[0]
    while k < ncl:
        s = sigma[k]
        base = np.uint64(cl_index0 + k) * np.uint64(_CTR_PER_CLUSTER)
        if s <= 0.0:                                   # a noise hit
            if n + 1 > cap:
                break
            px = int(cx[k])
            py = int(cy[k])
            tot = _tot_counts(charge[k], thr_e[px * 256 + py], a, b, c, d)
            walk = wa / (25.0 * tot + wb) + jit * _ndtri(_uniform(ukey, np.uint64(2) * base + np.uint64(1)))
            out_x[n] = px
            out_y[n] = py
            out_tot[n] = tot
            out_t[n] = t_units[k] + np.int64(math.floor(walk * UNITS_PER_NS + 0.5))
            out_cl[n] = k
            n += 1
            size[k] = 1
            k += 1
            continue
        r = int(3.0 * s) + 1
        if r > rmax:
            r = rmax
        w = 2 * r + 1
        if n + w * w > cap:
            break
        x0 = int(math.floor(cx[k]))
        y0 = int(math.floor(cy[k]))
        inv = 1.0 / s
        for i in range(w + 1):                 # cloud cdf at the pixel edges
            cdfx[i] = _phi((x0 - r + i - cx[k]) * inv)
            cdfy[i] = _phi((y0 - r + i - cy[k]) * inv)
        fxmax = 0.0
        fymax = 0.0
        for i in range(w):
            fx = cdfx[i + 1] - cdfx[i]
            fy = cdfy[i + 1] - cdfy[i]
            fxs[i] = fx
            fys[i] = fy
            if fx > fxmax:
                fxmax = fx
            if fy > fymax:
                fymax = fy
        q0 = charge[k]
        # candidate rows and columns: only they can hold a pixel above every threshold - 5 sigma
        nj = 0
        for j in range(w):
            py = y0 - r + j
            if 0 <= py <= 255 and q0 * fxmax * fys[j] >= low:
                cols[nj] = j
                nj += 1
        fired = 0
        for i in range(w):
            px = x0 - r + i
            fx = fxs[i]
            if px < 0 or px > 255 or q0 * fx * fymax < low:
                continue
            for jj in range(nj):
                j = cols[jj]
                py = y0 - r + j
                qm = q0 * fx * fys[j]
                if qm < low:                 # below every pixel's threshold - 5 sigma
                    continue
                thr = thr_e[px * 256 + py]
                if qm < thr - 5.0 * noise:   # also skips masked pixels (thr = inf)
                    continue
                # counter of this box position: fixed 17x17 layout so it does not depend on r;
                # charge noise from uniform 2*ctr, time jitter from 2*ctr+1 (drawn only if it fires)
                ctr2 = np.uint64(2) * (base + np.uint64((i - r + 8) * _BOX_STRIDE + (j - r + 8)))
                q = qm + noise * _ndtri(_uniform(ukey, ctr2))
                if q <= thr:
                    continue
                tot = _tot_counts(q, thr, a, b, c, d)
                walk = wa / (25.0 * tot + wb) + jit * _ndtri(_uniform(ukey, ctr2 + np.uint64(1)))
                out_x[n] = px
                out_y[n] = py
                out_tot[n] = tot
                out_t[n] = t_units[k] + np.int64(math.floor(walk * UNITS_PER_NS + 0.5))
                out_cl[n] = k
                n += 1
                fired += 1
        size[k] = fired
        k += 1
    return n, k


def expand_clusters_np(cx, cy, charge, sigma, t_units, cl_index0, key, thr_e, params):
    """numpy twin of :func:`expand_clusters` (whole input at once).

    Returns (x, y, tot, t, cl, size) in the kernel's order: entry, then box column, then row.
    """
    cx, cy, charge, sigma = (np.asarray(v, np.float64) for v in (cx, cy, charge, sigma))
    t_units = np.asarray(t_units, np.int64)
    ncl = len(cx)
    noise = params[P_NOISE_E]
    a, b, c, d = params[P_TOT_A], params[P_TOT_B], params[P_TOT_C], params[P_TOT_D]
    wa, wb, jit = params[P_WALK_A], params[P_WALK_B], params[P_JITTER_NS]
    rmax = int(params[P_MAX_RADIUS])
    is_noise = sigma <= 0
    sg = np.where(is_noise, 1.0, sigma)
    r = np.minimum((3.0 * sg).astype(np.int64) + 1, rmax)                 # per entry
    off = np.arange(-rmax, rmax + 1)                                      # box offsets
    x0 = np.floor(cx).astype(np.int64)
    y0 = np.floor(cy).astype(np.int64)
    px = x0[:, None] + off[None, :]                                       # [cl, i]
    py = y0[:, None] + off[None, :]
    phi = phi_np
    inv = (1.0 / sg)[:, None]
    fx = phi((px + 1 - cx[:, None]) * inv) - phi((px - cx[:, None]) * inv)
    fy = phi((py + 1 - cy[:, None]) * inv) - phi((py - cy[:, None]) * inv)
    qm = charge[:, None, None] * fx[:, :, None] * fy[:, None, :]          # [cl, i, j]
    inbox = (np.abs(off)[None, :] <= r[:, None])
    ok = (inbox & (px >= 0) & (px <= 255))[:, :, None] & (inbox & (py >= 0) & (py <= 255))[:, None, :]
    PX = np.broadcast_to(px[:, :, None], qm.shape)
    PY = np.broadcast_to(py[:, None, :], qm.shape)
    thr = np.where(ok, thr_e[np.clip(PX, 0, 255) * 256 + np.clip(PY, 0, 255)], np.inf)
    with np.errstate(invalid="ignore"):
        ok &= ~(qm < thr - 5.0 * noise)
    local = (off[:, None] + 8) * _BOX_STRIDE + (off[None, :] + 8)          # [i, j]
    cl_abs = (cl_index0 + np.arange(ncl, dtype=np.uint64)).astype(np.uint64)
    ctr = cl_abs[:, None, None] * np.uint64(_CTR_PER_CLUSTER) + local[None].astype(np.uint64)
    z0, z1 = rng_normal2_np(key, ctr)
    q = qm + noise * z0
    ok &= q > thr
    ok[is_noise] = False
    sel = np.nonzero(ok)                    # C order: entry, i, j
    qs, th, jz, cl = q[sel], thr[sel], z1[sel], sel[0]
    hx, hy = PX[sel], PY[sel]
    # noise entries: one hit each, at the box centre position's counter (local index 0 for it)
    nz = np.nonzero(is_noise)[0]
    if len(nz):
        nx, ny = cx[nz].astype(np.int64), cy[nz].astype(np.int64)
        _, nz1 = rng_normal2_np(key, cl_abs[nz] * np.uint64(_CTR_PER_CLUSTER))
        qs = np.concatenate([qs, charge[nz]])
        th = np.concatenate([th, thr_e[nx * 256 + ny]])
        jz = np.concatenate([jz, nz1])
        cl = np.concatenate([cl, nz])
        hx = np.concatenate([hx, nx])
        hy = np.concatenate([hy, ny])
        o = np.argsort(cl, kind="stable")
        qs, th, jz, cl, hx, hy = qs[o], th[o], jz[o], cl[o], hx[o], hy[o]
    qk, tk = qs * 1e-3, th * 1e-3
    tot = np.clip(np.floor(a * qk + b - c / (qk - (tk - d)) + 0.5), 1, 1023).astype(np.int64)
    walk = wa / (25.0 * tot + wb) + jit * jz
    t = t_units[cl] + np.floor(walk * UNITS_PER_NS + 0.5).astype(np.int64)
    size = np.bincount(cl, minlength=ncl).astype(np.uint16)
    return (hx.astype(np.uint16), hy.astype(np.uint16), tot.astype(np.uint16), t, cl.astype(np.int64), size)


# ---------------------------------------------------------------- stream assembly

@njit(cache=True, nogil=True)
def assemble_stream(hit_keys, hit_words, anc_keys, anc_wstart, anc_wcount, anc_words,
                    delay, window, depth):
    """Merge time-sorted hits with anchors (TDC and heartbeat groups) and apply FIFO disorder.

    ``hit_keys`` (sorted) and ``anc_keys`` (sorted) are stream-order keys in 25/4096 ns.
    Anchors keep their order; at equal keys the anchor goes first (a heartbeat at the start of a
    stream is its first word). A hit with ``delay[i] = u >= 0``
    (u in [0, 1); -1 = not delayed) moves k = 1 + floor(u * span) items later in the stream,
    where span is the number of following items within ``window`` of its key, at most ``depth``
    (the FIFO delay is bounded in words and in time).
    Anchor ``a`` expands to ``anc_words[anc_wstart[a] : anc_wstart[a] + anc_wcount[a]]``.
    Returns (words, hit_order): hit_order[m] is the sorted-hit index of the m-th hit in the stream.
    """
    nh = hit_keys.shape[0]
    na = anc_keys.shape[0]
    n = nh + na
    item_key = np.empty(n, np.int64)
    item_ref = np.empty(n, np.int64)      # >= 0 hit index; < 0: anchor -1-a
    ih = 0
    ia = 0
    for m in range(n):
        if ia >= na or (ih < nh and hit_keys[ih] < anc_keys[ia]):
            item_key[m] = hit_keys[ih]
            item_ref[m] = ih
            ih += 1
        else:
            item_key[m] = anc_keys[ia]
            item_ref[m] = -1 - ia
            ia += 1
    # A hit delayed by k goes right behind item m+k (after earlier-delayed hits bound there):
    # per target position, a linked list of the delayed items, in order of m.
    head = np.full(n, -1, np.int64)
    tail = np.full(n, -1, np.int64)
    nxt = np.full(n, -1, np.int64)
    moved = np.zeros(n, np.bool_)
    j = 0
    for m in range(n):
        ref = item_ref[m]
        if ref >= 0 and delay[ref] >= 0.0:
            # furthest item within the time window
            if j < m:
                j = m
            lim = item_key[m] + window
            while j + 1 < n and item_key[j + 1] <= lim:
                j += 1
            span = j - m
            if span > depth:
                span = depth
            if span > 0:
                k = 1 + int(delay[ref] * span)
                if k > span:
                    k = span
                t = m + k
                moved[m] = True
                if head[t] < 0:
                    head[t] = m
                else:
                    nxt[tail[t]] = m
                tail[t] = m
    order = np.empty(n, np.int64)
    o = 0
    for p in range(n):
        if not moved[p]:
            order[o] = p
            o += 1
        c = head[p]
        while c >= 0:
            order[o] = c
            o += 1
            c = nxt[c]
    nw = nh
    for a in range(na):
        nw += anc_wcount[a]
    words = np.empty(nw, np.uint64)
    hit_order = np.empty(nh, np.int64)
    w = 0
    h = 0
    for p in range(n):
        ref = item_ref[order[p]]
        if ref >= 0:
            words[w] = hit_words[ref]
            w += 1
            hit_order[h] = ref
            h += 1
        else:
            a = -1 - ref
            s = anc_wstart[a]
            for q in range(anc_wcount[a]):
                words[w] = anc_words[s + q]
                w += 1
    return words, hit_order


def assemble_stream_np(hit_keys, hit_words, anc_keys, anc_wstart, anc_wcount, anc_words,
                       delay, window, depth):
    """numpy twin of :func:`assemble_stream`."""
    hit_keys = np.asarray(hit_keys, np.int64)
    anc_keys = np.asarray(anc_keys, np.int64)
    nh, na = len(hit_keys), len(anc_keys)
    n = nh + na
    # merged item order: anchors before hits at equal keys
    pos_anchor = np.searchsorted(hit_keys, anc_keys, side="left") + np.arange(na)
    is_anchor = np.zeros(n, bool)
    is_anchor[pos_anchor] = True
    item_ref = np.empty(n, np.int64)
    item_ref[~is_anchor] = np.arange(nh)
    item_ref[is_anchor] = -1 - np.arange(na)
    item_key = np.empty(n, np.int64)
    item_key[~is_anchor] = hit_keys
    item_key[is_anchor] = anc_keys
    m = np.arange(n)
    u = np.full(n, -1.0)
    u[~is_anchor] = np.asarray(delay, np.float64)
    span = np.searchsorted(item_key, item_key + window, side="right") - 1 - m
    span = np.minimum(span, depth)
    moved = (u >= 0) & (span > 0)
    k = np.where(moved, np.minimum(1 + (np.maximum(u, 0) * span).astype(np.int64), span), 0)
    skey = np.where(moved, 2 * (m + k) + 1, 2 * m)
    order = np.argsort(skey, kind="stable")
    refs = item_ref[order]
    hit_order = refs[refs >= 0]
    parts = []
    for ref in refs:
        if ref >= 0:
            parts.append(np.asarray(hit_words, np.uint64)[ref:ref + 1])
        else:
            a = -1 - ref
            parts.append(np.asarray(anc_words, np.uint64)[anc_wstart[a]:anc_wstart[a] + anc_wcount[a]])
    words = np.concatenate(parts) if parts else np.empty(0, np.uint64)
    return words, hit_order


# ---------------------------------------------------------------- per-chip finishing pass

@njit(cache=True, nogil=True)
def _insertion_argsort(keys, budget):
    """Stable argsort by insertion, O(n + inversions); gives up (returns ok=False) once the
    element moves exceed ``budget`` (then a merge sort is faster)."""
    n = keys.shape[0]
    order = np.arange(n)
    for i in range(1, n):
        o = order[i]
        v = keys[o]
        j = i - 1
        while j >= 0 and keys[order[j]] > v:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = o
        budget -= i - 1 - j
        if budget < 0:
            return False, order
    return True, order


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort, fast for the usual nearly time-ordered hits; numpy's merge sort when the
    input is far from ordered (e.g. a huge ToF burst where thousands of clusters overlap)."""
    ok, order = _insertion_argsort(keys, 8 * len(keys))
    return order if ok else np.argsort(keys, kind="stable")


@njit(cache=True, nogil=True)
def _pixel_fields(hx, htot, ht, mode):
    """Per hit: (coarse, ftoa, toa, tot field, sort key) for operation ``mode``."""
    n = hx.shape[0]
    coarse = np.empty(n, np.int64)
    ftoa = np.zeros(n, np.uint8)
    toa = np.empty(n, np.int64)
    field_tot = np.empty(n, np.uint16)
    if mode == 4:
        for i in range(n):
            coarse[i] = htot[i]
            field_tot[i] = 1
            toa[i] = -1
        return coarse, ftoa, toa, field_tot, ht.copy()
    for i in range(n):
        ph = (np.int64(hx[i]) >> 1) & 15
        if ph == 0:
            ph = 16
        u = ht[i] - 256 * ph
        c = -((-u) // 4096)
        f = (4096 * c - u) // 256
        if c < 0:
            c = 0
            f = 0
        coarse[i] = c
        ftoa[i] = f
        toa[i] = 4096 * c - 256 * f + 256 * ph
        field_tot[i] = htot[i] if mode == 0 else 0
    return coarse, ftoa, toa, field_tot, toa


@njit(cache=True, nogil=True)
def _encode_and_assemble(order, hx, hy, coarse, ftoa, field_tot, keys, header, anc_keys, anc_wstart,
                         anc_wcount, anc_words, delay, window, depth):
    n = order.shape[0]
    sx = np.empty(n, np.uint16)
    sy = np.empty(n, np.uint16)
    sc = np.empty(n, np.int64)
    sf = np.empty(n, np.uint8)
    st = np.empty(n, np.uint16)
    sk = np.empty(n, np.int64)
    for m in range(n):
        o = order[m]
        sx[m] = hx[o]
        sy[m] = hy[o]
        sc[m] = coarse[o]
        sf[m] = ftoa[o]
        st[m] = field_tot[o]
        sk[m] = keys[o]
    hit_words = encode_pixels(sx, sy, sc, sf, st, header)
    words, pos = assemble_stream(sk, hit_words, anc_keys, anc_wstart, anc_wcount, anc_words,
                                 delay, window, depth)
    hit_order = np.empty(n, np.int64)
    for m in range(n):
        hit_order[m] = order[pos[m]]
    return words, hit_order


def finish_stream(hx, hy, htot, ht, mode, anc_keys, anc_wstart, anc_wcount, anc_words,
                  delay, window, depth):
    """Encode one chip's hits and build its word stream.

    Hits (from :func:`expand_clusters`, nearly time-ordered) are encoded for operation
    ``mode`` (0 ToA+ToT, 2 ToA only: ToT field 0, 4 iToT: 0xA words whose ToA field holds
    the iToT and whose ToT field holds an event count of 1), sorted by the time their word
    represents, merged with the anchors and disordered (see :func:`assemble_stream`).
    Returns (words, hit_order, toa, ftoa): hit_order[m] is the input index of the m-th hit
    word in the stream; toa/ftoa per input hit (toa -1 in mode 4).
    """
    coarse, ftoa, toa, field_tot, keys = _pixel_fields(hx, htot, ht, mode)
    order = stable_argsort(keys)
    header = 0xA if mode == 4 else 0xB
    words, hit_order = _encode_and_assemble(order, hx, hy, coarse, ftoa, field_tot, keys, header, anc_keys,
                                            anc_wstart, anc_wcount, anc_words, delay, window, depth)
    return words, hit_order, toa, ftoa


def finish_stream_np(hx, hy, htot, ht, mode, anc_keys, anc_wstart, anc_wcount, anc_words,
                     delay, window, depth):
    """numpy twin of :func:`finish_stream`."""
    hx, hy, htot, ht = (np.asarray(v) for v in (hx, hy, htot, ht))
    n = len(hx)
    if mode == 4:
        coarse, ftoa, toa = htot.astype(np.int64), np.zeros(n, np.uint8), np.full(n, -1, np.int64)
        field_tot, keys, header = np.ones(n, np.uint16), ht.astype(np.int64), 0xA
    else:
        coarse, ftoa, toa = pixel_time_fields(hx, ht)
        coarse, ftoa, toa = np.atleast_1d(coarse), np.atleast_1d(ftoa).astype(np.uint8), np.atleast_1d(toa)
        field_tot = htot if mode == 0 else np.zeros(n, np.uint16)
        keys, header = toa, 0xB
    order = np.argsort(keys, kind="stable")
    hit_words = encode_pixels_np(hx[order], hy[order], coarse[order], ftoa[order], field_tot[order], header)
    words, pos = assemble_stream_np(keys[order], hit_words, anc_keys, anc_wstart, anc_wcount, anc_words,
                                    delay, window, depth)
    return words, order[pos], toa, ftoa


@njit(cache=True, nogil=True)
def fill_hit_truth(hits, hit_order, hx, hy, htot, toa, ftoa, hent, ent_cluster_id, rise_t, rise_c,
                   chip, tot_ns_per_count):
    """Fill the HIT_TRUTH_DTYPE array ``hits`` in stream order: hit m is input hit hit_order[m].
    ``event`` = counter of the latest TDC1 rising edge (rise_t sorted, rise_c counters) at or
    before its toa, -1 if none or if toa < 0 (no ToA in iToT mode)."""
    nr = rise_t.shape[0]
    for m in range(hit_order.shape[0]):
        i = hit_order[m]
        h = hits[m]
        h.x = hx[i]
        h.y = hy[i]
        h.tot = htot[i] * tot_ns_per_count
        h.chip = chip
        h.ftoa = ftoa[i]
        t = toa[i]
        h.toa = t
        h.cluster = ent_cluster_id[hent[i]]
        ev = -1
        if t >= 0 and nr > 0:
            lo, hi = 0, nr                  # first rise_t > t
            while lo < hi:
                mid = (lo + hi) >> 1
                if rise_t[mid] <= t:
                    lo = mid + 1
                else:
                    hi = mid
            if lo > 0:
                ev = rise_c[lo - 1]
        h.event = ev
        h.sent = 1
