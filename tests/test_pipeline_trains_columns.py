"""Trains as per-field columns (TrainAssembler(output="columns"), split_columns, zero-copy
train_message) against the simulator's truth, a slow reference assembly and the records output."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from test_pipeline_trains import (HI, SRC, START_ID, assemble, by_key, chunks_of, simulate, truth_train_hits,
                                  truth_triggers)
from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE
from tpx3lib.exdf.layout import CENTROID_FIELDS, HIT_FIELDS
from tpx3lib.pipeline.trains import (CENTROID_KEYS, HIT_KEYS, BufferPool, Train, merge_trains, records_from_columns,
                                     split_columns, split_columns_numpy, train_from_message, train_message)


def random_records(dtype, n, seed, *, n_events=5, ordered=True):
    rng = np.random.default_rng(seed)
    r = np.zeros(n, dtype)
    for f in dtype.names:
        if dtype[f].kind in "iu":
            r[f] = rng.integers(0, min(1000, np.iinfo(dtype[f]).max), n)
        else:
            r[f] = rng.random(n) * 100
    ev = rng.integers(10, 10 + n_events, n)
    r["event"] = np.sort(ev) if ordered else ev
    return r


# ----------------------------------------------------------------------------- the kernel and its twin
@pytest.mark.parametrize("dtype", [EVENT_DTYPE, CENTROID_DTYPE])
@pytest.mark.parametrize("n, ordered, seed", [(0, True, 0), (1, True, 1), (2000, True, 2), (2000, False, 3),
                                              (300, False, 4)])
def test_split_columns_kernel_equals_its_numpy_twin_and_the_records(dtype, n, ordered, seed):
    recs = random_records(dtype, n, seed, ordered=ordered)
    cols, starts, run_sorted = split_columns(recs)
    tcols, tstarts, trun_sorted = split_columns_numpy(recs)
    fields = HIT_FIELDS if dtype == EVENT_DTYPE else CENTROID_FIELDS
    assert list(cols) == list(fields)
    for f in fields:
        assert cols[f].dtype == dtype[f] and cols[f].flags.c_contiguous
        np.testing.assert_array_equal(cols[f], tcols[f], err_msg=f)
    np.testing.assert_array_equal(starts, tstarts)
    np.testing.assert_array_equal(run_sorted, trun_sorted)
    # independent expectation: records stably sorted by event, one run per distinct event
    exp = recs[np.argsort(recs["event"], kind="stable")]
    for f in fields:
        np.testing.assert_array_equal(cols[f], exp[f])
    assert starts.size - 1 == np.unique(recs["event"]).size
    key = "toa" if dtype == EVENT_DTYPE else "toa_first"
    for a, b, s in zip(starts[:-1], starts[1:], run_sorted):
        assert np.all(exp["event"][a:b] == exp["event"][a])
        assert s == bool(np.all(np.diff(exp[key][a:b]) >= 0))


def test_split_columns_uses_the_allocator_and_refuses_other_dtypes():
    recs = random_records(EVENT_DTYPE, 100, 5)
    got = []

    def alloc(nbytes):
        got.append(nbytes)
        return np.empty(nbytes, np.uint8)
    cols, _, _ = split_columns(recs, alloc)
    assert len(got) == 1 and all(c.base is not None for c in cols.values())
    with pytest.raises(TypeError):
        split_columns(np.zeros(3, [("event", "i8")]))


# ----------------------------------------------------------------------------- assembly
def reference_trains(chunks, n_chips):
    """Slow reference: for every trigger of chip 0, the records of every chip with that
    trigger counter, chips in index order then arrival, stably sorted by time."""
    trig = {}
    for ch in chunks:
        if ch.chip == 0:
            t = ch.triggers[(ch.triggers["tdc"] == 1) & (ch.triggers["rising"] == 1)]
            trig.update(zip(t["counter"].tolist(), t["time"].tolist()))
    out = {}
    for kind, key, dtype in (("events", "toa", EVENT_DTYPE), ("centroids", "toa_first", CENTROID_DTYPE)):
        per_chip = {c: np.concatenate([getattr(ch, kind) for ch in chunks if ch.chip == c] or [np.empty(0, dtype)])
                    for c in range(n_chips)}
        for counter in trig:
            parts = [r[r["event"] == counter] for c, r in sorted(per_chip.items())]
            a = np.concatenate(parts)
            out[(kind, counter)] = a[np.argsort(a[key], kind="stable")]
    return trig, out


@pytest.mark.parametrize("step, chip_order", [(4000, None), (1500, (1, 0)), (100_000, None)])
def test_columns_output_equals_records_output_and_a_reference_assembly(step, chip_order):
    words, _, truth = simulate()
    chunks = chunks_of(words, step, chip_order)
    rec_trains, rec_asm = assemble(chunks, 2)
    col_trains, col_asm = assemble(chunks, 2, output="columns")
    assert col_asm.stats() == rec_asm.stats()
    trig, ref = reference_trains(chunks, 2)
    assert [t.trigger for t in col_trains] == sorted(trig, key=lambda c: trig[c])
    tt = truth_triggers(truth)
    assert len(col_trains) == len(tt)
    for k, (c, r) in enumerate(zip(col_trains, rec_trains)):
        assert c.hit_columns is not None and c.centroid_columns is not None
        assert c.n_hits == r.n_hits and c.n_centroids == r.n_centroids
        for f in HIT_FIELDS:
            np.testing.assert_array_equal(c.hit_columns[f], ref[("events", c.trigger)][f], err_msg=f)
        for f in CENTROID_FIELDS:
            np.testing.assert_array_equal(c.centroid_columns[f], ref[("centroids", c.trigger)][f], err_msg=f)
        assert c.same_data(r)                           # records built from the columns, train_id filled
        assert np.all(c.hits["train_id"] == START_ID + k)
        exp = by_key(truth_train_hits(truth, tt[k]["counter"], tt[k]["time"]))
        got = by_key(c.hits)
        for f in ("x", "y", "tot", "chip", "toa"):
            np.testing.assert_array_equal(got[f], exp[f])
        assert np.all((got["tof"] >= 0) & (got["tof"] <= HI))


def test_a_train_whole_in_one_chunk_is_a_view_and_needs_no_records():
    words, _, _ = simulate(n_chips=1)
    chunks = chunks_of(words, 10**7)                    # one chunk per slice: most trains whole in one
    buffers = []

    def alloc(nbytes):
        buffers.append(np.empty(nbytes, np.uint8))
        return buffers[-1]
    trains, _ = assemble(chunks, 1, output="columns", alloc=alloc)
    views = [t for t in trains if t.n_hits and any(np.shares_memory(t.hit_columns["x"], b) for b in buffers)]
    assert len(views) >= len(trains) // 2
    t = views[0]
    assert t.__dict__["_hits"] is None                  # n_hits did not build records
    assert t.hits.dtype == EVENT_DTYPE and t.__dict__["_hits"] is not None


# ----------------------------------------------------------------------------- Train of columns
def columns_train(tid=7, n=5, seed=0):
    hits = random_records(EVENT_DTYPE, n, seed, n_events=1)
    hits["toa"] = np.sort(hits["toa"])
    cen = random_records(CENTROID_DTYPE, 2, seed, n_events=1)
    cols = {f: np.ascontiguousarray(hits[f]) for f in HIT_FIELDS}
    ccols = {f: np.ascontiguousarray(cen[f]) for f in CENTROID_FIELDS}
    t = Train(train_id=tid, trigger=int(hits["event"][0]), trigger_time=3, flags=0, hits=None, centroids=None,
              timestamp_ns=1_700_000_000_000_000_000, hit_columns=cols, centroid_columns=ccols)
    return t, hits, cen


def test_train_of_columns_builds_its_records_with_its_train_id():
    t, hits, cen = columns_train()
    exp = hits.copy()
    exp["train_id"] = 7
    np.testing.assert_array_equal(t.hits, exp)
    assert t.n_hits == 5 and t.n_centroids == 2 and not t.empty
    np.testing.assert_array_equal(records_from_columns(t.centroid_columns, CENTROID_DTYPE, train_id=7)["x"], cen["x"])
    u = t.with_train_id(9)
    assert u.hit_columns is t.hit_columns and np.all(u.hits["train_id"] == 9) and np.all(t.hits["train_id"] == 7)
    m = merge_trains([t, u.with_train_id(7)])
    assert m.n_hits == 10 and m.hit_columns is None and np.all(np.diff(m.hits["toa"]) >= 0)
    r = dataclasses.replace(t, hits=np.empty(0, EVENT_DTYPE))
    assert r.n_hits == 0 and r.hit_columns is None      # records given: the columns are dropped
    with pytest.raises(ValueError, match="fields"):
        Train(1, 1, 1, 0, None, None, hit_columns={"x": np.zeros(2)})
    with pytest.raises(ValueError, match="one length"):
        Train(1, 1, 1, 0, None, None, hit_columns={f: np.zeros(2 + (f == "x")) for f in HIT_FIELDS})
    empty = Train(1, 1, 1, 0, None, None)
    assert empty.hits.dtype == EVENT_DTYPE and empty.empty


def test_message_of_columns_is_zero_copy_and_equal_to_the_records_message():
    from karabo_bridge import deserialize, serialize
    t, _, _ = columns_train()
    r = Train(train_id=t.train_id, trigger=t.trigger, trigger_time=t.trigger_time, flags=t.flags,
              hits=t.hits.copy(), centroids=t.centroids.copy(), timestamp_ns=t.timestamp_ns)
    dc, mc = train_message(t, SRC, {"a": 1})
    dr, mr = train_message(r, SRC, {"a": 1})
    assert list(dc[SRC]) == list(dr[SRC]) and mc == mr           # same keys, same order, same metadata
    for key, v in dr[SRC].items():
        if isinstance(v, np.ndarray):
            assert dc[SRC][key].dtype == v.dtype
            np.testing.assert_array_equal(dc[SRC][key], v)
        else:
            assert dc[SRC][key] == v
    for f in HIT_FIELDS:
        assert dc[SRC][HIT_KEYS[f]] is t.hit_columns[f]
    for f in CENTROID_FIELDS:
        assert dc[SRC][CENTROID_KEYS[f]] is t.centroid_columns[f]
    fc, fr = serialize(dc, mc), serialize(dr, mr)
    assert [bytes(x) for x in fc] == [bytes(x) for x in fr]      # identical on the wire
    assert train_from_message(*deserialize(fc), SRC).same_data(r)


# ----------------------------------------------------------------------------- BufferPool
def test_buffer_pool_takes_the_smallest_free_buffer_and_leaves_small_requests_alone():
    pool = BufferPool(max_buffers=4, min_bytes=100)
    assert pool.reserve(4000) is True and pool.allocated == 1
    assert pool.reserve(1000, count=2) is True and pool.allocated == 2     # the 4000 one counts
    b = pool(500)                                      # the 1000 one, not the 4000 one
    c = pool(900)                                      # then the 4000 one (in use: b)
    assert pool.allocated == 2 and pool.reused == 2
    assert b.base.size == 1000 and c.base.size == 4000
    small = pool(50)                                   # below min_bytes: a fresh array
    assert small.base is None and pool.allocated == 2
    assert pool.recent_max == 900
    d = pool(2000)                                     # none free: a new one (kept: room in the pool)
    assert pool.allocated == 3 and not np.shares_memory(d, c)
    del b, c, d
    assert pool.reserve(1000, count=3) is False        # free and large enough


def test_buffer_pool_never_hands_one_buffer_to_two_threads():
    pool = BufferPool(max_buffers=4)
    errors = []

    def worker(k):
        try:
            for i in range(300):
                a = pool(4096)
                a[:] = k
                if i % 3 == 0:
                    pool.reserve(4096)
                if not np.all(a == k):
                    errors.append((k, i))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


def test_columns_assembly_reuses_pooled_memory_once_trains_are_gone():
    from tpx3lib.pipeline.trains import TrainAssembler
    words, _, _ = simulate()
    chunks = chunks_of(words, 20_000)
    expected, _ = assemble(chunks, 2)
    pool = BufferPool(max_buffers=6)
    kept, seen, bad = [], [], []

    def on_train(t):
        if not t.same_data(expected[len(seen)]):
            bad.append(t.index)
        seen.append(t.index)
        kept.append(t)
        if len(kept) > 2:
            kept.pop(0)                                # a consumer holding two trains at most
    asm = TrainAssembler(range(2), (0.0, 1e-3), on_train, output="columns", alloc=pool)
    for ch in chunks:
        asm.add(ch)
    asm.flush()
    assert len(seen) == len(expected) >= 35 and not bad
    assert pool.reused > 0                             # memory came back to the pool ...
    for t in kept:                                     # ... never while a train still used it
        for f in HIT_FIELDS:                           # (the columns: .hits is a copy made above)
            np.testing.assert_array_equal(t.hit_columns[f], expected[t.index].hits[f])
        for f in CENTROID_FIELDS:
            np.testing.assert_array_equal(t.centroid_columns[f], expected[t.index].centroids[f])
