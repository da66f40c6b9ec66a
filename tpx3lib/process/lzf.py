"""A fast encoder of HDF5 chunks for the ``shuffle`` + ``lzf`` filter pipeline, in numba.

Why: h5py's LZF filter compresses inside ``H5Dwrite`` while holding the GIL, at
about 130 MB/s on processed hit data - the slowest step of ``tpx3 process``.
This module makes the *same stored format* without HDF5: it shuffles a chunk's
bytes (the HDF5 shuffle filter: byte ``j`` of every element, then byte ``j+1``,
...) and encodes the result as an LZF stream that h5py's standard LZF filter
(filter 32000, in every h5py build) decodes. The caller stores it with
``h5py.h5d.DatasetID.write_direct_chunk``. Encoding releases the GIL, so
chunks are compressed in worker threads while the main thread only writes.

The encoder is not liblzf: it only emits LZF literal runs and back-references at
distance 1 (runs of one repeated byte). After shuffling, sorted detector data
is mostly byte planes that are constant over long stretches (high bytes of
counters, times and ToT) or close to random (low bytes), so runs catch most of
what a full LZF search would, at a fraction of the cost: per chunk about 1.1x
the size h5py's LZF gives on processed hits. Planes without runs are copied as
literals without searching.

LZF stream format (liblzf ``lzf_d.c``): a control byte ``c``; ``c < 32``: ``c+1``
literal bytes follow; else a back-reference of length ``(c >> 5) + 2``
(``c >> 5 == 7``: plus the next byte), distance ``((c & 31) << 8 | next byte) + 1``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["shuffle_bytes", "lzf_encode", "encode_chunk", "MAX_RUN"]

#: Longest LZF back-reference (7 + 255 + 2 bytes).
MAX_RUN = 264
#: a plane with fewer marked run positions than 1 per this many bytes is copied as literals
#: (runs would save under ~6 %)
_RUN_SHARE = 16
#: ... or runs shorter than 3 + this on average
_MIN_MARKS_PER_RUN = 9
_ALL_MARKED = np.uint64(0x0101010101010101)


@nb.njit(cache=True, nogil=True)
def shuffle_bytes(src, itemsize, dst):
    """The HDF5 shuffle filter: ``dst[j * n + i] = src[i * itemsize + j]`` for n elements."""
    n = src.size // itemsize
    if itemsize in (2, 4, 8) and src.size % 8 == 0 and src.ctypes.data % 8 == 0:
        # one word load per element, its bytes to the planes (little-endian)
        if itemsize == 8:
            w8 = src.view(np.uint64)
            for i in range(n):
                v = w8[i]
                for j in range(8):
                    dst[j * n + i] = (v >> np.uint64(8 * j)) & np.uint64(0xFF)
        elif itemsize == 4:
            w4 = src.view(np.uint32)
            for i in range(n):
                v = w4[i]
                for j in range(4):
                    dst[j * n + i] = (v >> np.uint32(8 * j)) & np.uint32(0xFF)
        else:
            w2 = src.view(np.uint16)
            for i in range(n):
                v = w2[i]
                dst[i] = v & np.uint16(0xFF)
                dst[n + i] = v >> np.uint16(8)
        return
    for j in range(itemsize):
        base = j * n
        for i in range(n):
            dst[base + i] = src[i * itemsize + j]


@nb.njit(cache=True, nogil=True)
def _repeat(dst, op, count, limit):
    """Append back-references (distance 1) repeating the previous byte ``count`` (>= 3)
    times; no literal run may be open. Returns the new op, or -1 when out of room."""
    if op + 3 * (count // MAX_RUN + 2) > limit:
        return -1
    while count > 0:
        L = min(count, MAX_RUN)
        if 0 < count - L < 3:            # leave at least 3 for the last reference
            L = count - 3
        l2 = L - 2
        if l2 < 7:
            dst[op] = l2 << 5
            op += 1
        else:
            dst[op] = 7 << 5
            dst[op + 1] = l2 - 7
            op += 2
        dst[op] = 0
        op += 1
        count -= L
    return op


@nb.njit(cache=True, nogil=True)
def _literals(src, a, b, dst, op, ctrl, lit, limit):
    """Append ``src[a:b]`` as literal bytes; returns (op, ctrl, lit), op = -1 when out of room.

    The open literal run has its control byte at ``dst[ctrl]`` and ``lit`` bytes so far;
    ``dst[op]`` is the next free byte."""
    if b <= a:
        return op, ctrl, lit
    if op + (b - a) + (b - a) // 32 + 2 > limit:
        return -1, ctrl, lit
    i = a
    if lit:                                   # fill the open run up to 32
        take = min(32 - lit, b - i)
        for k in range(take):
            dst[op + k] = src[i + k]
        op += take
        i += take
        lit += take
        if lit < 32:
            return op, ctrl, lit
        dst[ctrl] = 31
        lit = 0
        ctrl = op
        op += 1
    # whole runs of 32: fixed-length copies (op is the byte after the run's control byte)
    nblk = (b - i) // 32
    base = op - 1
    for q in range(nblk):
        d = dst[base + 33 * q: base + 33 * q + 33]
        s = src[i + 32 * q: i + 32 * q + 32]
        d[0] = 31
        for k in range(32):
            d[k + 1] = s[k]
    i += 32 * nblk
    ctrl = base + 33 * nblk
    op = ctrl + 1
    rest = b - i
    for k in range(rest):
        dst[op + k] = src[i + k]
    return op + rest, ctrl, rest


@nb.njit(cache=True, nogil=True)
def _mark_runs(src, p0, p1, flags):
    """``flags[k] = 1`` where the 4 bytes from ``p0 + 1 + k`` repeat the byte before them
    (``k < p1 - p0 - 4``, 0 after); returns (marked positions, runs of marked positions)."""
    m = p1 - p0 - 4
    count = 0
    starts = 0
    if m > 0:
        prev = src[p0:p0 + m]
        s0 = src[p0 + 1:p0 + 1 + m]
        s1 = src[p0 + 2:p0 + 2 + m]
        s2 = src[p0 + 3:p0 + 3 + m]
        s3 = src[p0 + 4:p0 + 4 + m]
        for k in range(m):
            f = (s0[k] == prev[k]) & (s1[k] == prev[k]) & (s2[k] == prev[k]) & (s3[k] == prev[k])
            flags[k] = f
            count += np.int64(f)
        f8 = flags[:m]
        g8 = flags[1:m]
        starts = np.int64(f8[0])
        for k in range(m - 1):
            starts += np.int64(g8[k] > f8[k])
    else:
        m = 0
    for k in range(m, m + 16):
        flags[k] = 0
    return count, starts


@nb.njit(cache=True, nogil=True)
def lzf_encode(src, dst, plane, flags):
    """Encode ``src`` (uint8) into ``dst``; returns the encoded size, or 0 if it does not
    fit in ``dst`` (store the chunk without LZF then). ``plane``: length of the byte planes
    judged separately (the element count of a shuffled chunk; ``src.size`` otherwise).
    ``flags``: uint64 scratch of at least ``plane // 8 + 3`` elements."""
    n = src.size
    limit = dst.size
    if limit < 2 or n == 0:
        return 0
    f8 = flags.view(np.uint8)
    # first look: how each plane will be coded (0 literal, 1 one value, 2 runs)
    n_planes = (n + plane - 1) // plane
    kind = np.zeros(n_planes, np.int8)
    for q in range(n_planes):
        p0 = q * plane
        p1 = min(p0 + plane, n)
        runs, starts = _mark_runs(src, p0, p1, f8)
        if p1 - p0 > 8 and runs == p1 - p0 - 4:
            kind[q] = 1
        elif not (runs * _RUN_SHARE < p1 - p0 or runs < starts * _MIN_MARKS_PER_RUN):
            kind[q] = 2
    if not np.any(kind):
        return 0              # nothing to gain: the literals would only add control bytes
    op = 1                # dst[0] is the control byte of the first literal run
    ctrl = 0
    lit = 0
    p0 = 0
    pl = -1
    while p0 < n:
        pl += 1
        p1 = min(p0 + plane, n)
        if kind[pl] == 2:
            _mark_runs(src, p0, p1, f8)
        if kind[pl] == 1:
            # one byte value all along: a literal, then references
            op, ctrl, lit = _literals(src, p0, p0 + 1, dst, op, ctrl, lit, limit)
            if op < 0:
                return 0
            if lit:
                dst[ctrl] = lit - 1
            else:
                op -= 1          # drop the unused control byte
            op = _repeat(dst, op, p1 - p0 - 1, limit)
            if op < 0:
                return 0
            lit = 0
            ctrl = op
            op += 1
            p0 = p1
            continue
        if kind[pl] == 0:
            # few runs, or many short ones (they would cost more time than they save bytes): copy
            op, ctrl, lit = _literals(src, p0, p1, dst, op, ctrl, lit, limit)
            if op < 0:
                return 0
            p0 = p1
            continue
        start = p0            # first byte not yet emitted
        k = 0                 # flags index: position p0 + 1 + k
        m = p1 - p0 - 4
        while k < m:
            # next marked position: bytes up to a word boundary, then whole words
            while k < m and (k & 7) and not f8[k]:
                k += 1
            while k + 8 <= m and flags[k >> 3] == 0:
                k += 8
            while k < m and not f8[k]:
                k += 1
            if k >= m:
                break
            i = p0 + 1 + k
            b = src[i - 1]
            j = i + 4
            stop = min(p1, i + MAX_RUN)
            kk = j - p0 - 1      # flags index of position j
            while j < stop:
                if (kk & 7) == 0 and kk + 8 <= m and j + 8 <= stop and flags[kk >> 3] == _ALL_MARKED:
                    j += 8       # 8 marked positions in a row: 8 more repeats
                    kk += 8
                elif src[j] == b:
                    j += 1
                    kk += 1
                else:
                    break
            if op + (i - start) + (i - start) // 32 + 6 > limit:
                return 0
            if i - start >= 32:
                op, ctrl, lit = _literals(src, start, i, dst, op, ctrl, lit, limit)
            else:                # a few literals: inline
                for q in range(start, i):
                    dst[op] = src[q]
                    op += 1
                    lit += 1
                    if lit == 32:
                        dst[ctrl] = 31
                        ctrl = op
                        op += 1
                        lit = 0
            if lit:
                dst[ctrl] = lit - 1
            else:
                op -= 1          # drop the unused control byte
            l2 = j - i - 2
            if l2 < 7:
                dst[op] = l2 << 5
                op += 1
            else:
                dst[op] = 7 << 5
                dst[op + 1] = l2 - 7
                op += 2
            dst[op] = 0          # distance 1: repeat the previous byte
            op += 1
            lit = 0
            ctrl = op
            op += 1
            start = j
            k = j - p0 - 1
        op, ctrl, lit = _literals(src, start, p1, dst, op, ctrl, lit, limit)
        if op < 0:
            return 0
        p0 = p1
    if lit:
        dst[ctrl] = lit - 1
    else:
        op -= 1
    return op


@nb.njit(cache=True, nogil=True)
def encode_chunk(data, itemsize, shuffle, scratch, dst, flags):
    """Shuffle (if asked and ``itemsize > 1``) and LZF-encode one chunk's bytes.

    ``scratch``, ``dst``: uint8 buffers of at least ``data.size`` bytes; ``flags``: uint64
    scratch of ``data.size // 8 + 3`` elements. Returns ``(n, mask)`` for the pipeline
    ``[shuffle,] lzf``: ``n > 0``: the first ``n`` bytes of ``dst`` are the stored chunk,
    every filter applied (``mask`` 0); ``n == -1``: the chunk would not get smaller: store
    ``scratch[:data.size]`` (shuffled) or ``data`` (not shuffled) as it is, with ``mask``
    (the LZF bit set), as h5py's optional LZF filter stores such a chunk."""
    do_shuffle = shuffle and itemsize > 1
    lzf_bit = 2 if shuffle else 1
    if do_shuffle:
        shuffle_bytes(data, itemsize, scratch)
        src = scratch[:data.size]
    else:
        src = data
    m = lzf_encode(src, dst[:data.size - 1], data.size // itemsize if do_shuffle else data.size, flags)
    if m > 0:
        return m, 0
    return -1, lzf_bit
