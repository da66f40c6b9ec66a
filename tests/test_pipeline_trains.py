"""Trains assembled from processed chunks (tpx3lib.pipeline.trains) against the simulator's truth.

The simulated board sends triggers at 100 Hz (a 10 ms "train period", so a short stream
holds many trains); train IDs are counted with that period. Each train must hold exactly
the generated hits of its trigger's event window, whatever the chunking and the order in
which chips' chunks come, and trains must come out in trigger order while the data flow.
"""
from __future__ import annotations

import functools
import threading

import numpy as np
import pytest

from simulators.physics import HitGenerator, PhysicsModel
from simulators.truth import Truth
from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE, TDC_DTYPE, TOA_UNIT_S
from tpx3lib.errors import ConfigError
from tpx3lib.pipeline import ChipProcessor, ProcessedChunk, ProcessingConfig
from tpx3lib.pipeline.trains import (CENTROID_KEYS, FILE_KEYS, HIT_KEYS, SCALAR_KEYS, TIME_UNIT_KEY, BufferPool,
                                     Train, TrainAssembler, TrainAssemblyError, TrainQueue, merge_trains,
                                     train_from_message, train_message)
from tpx3lib.trainid import DUPLICATE, UNKNOWN, CountingTrainIdSource, TrainIdAssigner

TICKS = 40_000_000                 # board ticks per second
WINDOW = (0.0, 1e-3)
HI = int(round(WINDOW[1] / TOA_UNIT_S))
PERIOD = 0.01
START_ID = 5_000_000
SRC = "TPX3/CAM/1:daqOutput"


@functools.lru_cache(maxsize=None)
def simulate(n_chips=2, seconds=0.4, slices=8, hit_rate_hz=3000.0, seed=7):
    """(words per chip per slice, slice end times in ToA units, truth)."""
    gen = HitGenerator(PhysicsModel(hit_rate_hz=hit_rate_hz, trigger_rate_hz=1 / PERIOD, seed=seed),
                       n_chips=n_chips)
    edges = np.linspace(0, int(seconds * TICKS), slices + 1).astype(np.int64)
    parts = [gen.generate(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    words = [[p.words[c] for p in parts] for c in range(n_chips)]
    return words, (edges[1:] * 4096).tolist(), Truth.concat([p.truth for p in parts])


def processors(n_chips, with_ids=True):
    out = []
    for c in range(n_chips):
        cfg = ProcessingConfig(chip=c, event_window_s=WINDOW, products=("events", "centroids"))
        ids = TrainIdAssigner(CountingTrainIdSource(START_ID, period_s=PERIOD, grid_tolerance_s=PERIOD / 10)) \
            if with_ids else None
        out.append(ChipProcessor(cfg, train_ids=ids))
    return out


def chunks_of(words, step, chip_order=None, with_ids=True):
    """Every chip's processed chunks, chips interleaved slice by slice (in ``chip_order``)."""
    n_chips = len(words)
    procs = processors(n_chips, with_ids)
    order = list(chip_order or range(n_chips))
    out = []
    for s in range(len(words[0])):
        for c in order:
            w = words[c][s]
            for a in range(0, len(w), step):
                out.append(procs[c].feed(w[a:a + step]))
    for c in order:
        out.append(procs[c].flush())
    return out


def assemble(chunks, n_chips, **kw):
    trains = []
    asm = TrainAssembler(range(n_chips), WINDOW, trains.append, **kw)
    for ch in chunks:
        asm.add(ch)
    asm.flush()
    return trains, asm


def truth_triggers(truth, chip=0):
    t = truth.triggers
    return t[(t["tdc"] == 1) & (t["rising"] == 1) & (t["chip"] == chip)]


def truth_train_hits(truth, counter, time):
    h = truth.hits[truth.hits["event"] == counter]
    tof = h["toa"] - time
    return h[(tof >= 0) & (tof <= HI)]


def by_key(a):
    return a[np.lexsort((a["y"], a["x"], a["chip"], a["toa"]))]


# ----------------------------------------------------------------------------- against the truth
def test_each_train_holds_exactly_the_generated_hits_of_its_trigger():
    words, _, truth = simulate()
    chunks = chunks_of(words, 4000)
    trains, asm = assemble(chunks, 2)
    trig = truth_triggers(truth)
    assert len(trig) >= 35
    assert [t.trigger for t in trains] == trig["counter"].tolist()         # one train per trigger, in order
    assert [t.index for t in trains] == list(range(len(trig)))
    for k, (train, tg) in enumerate(zip(trains, trig)):
        assert train.trigger_time == tg["time"]
        assert train.train_id == START_ID + k and train.flags == 0
        assert train.chips_triggered == 2 and train.complete
        exp = by_key(truth_train_hits(truth, tg["counter"], tg["time"]))
        got = train.hits
        assert got.dtype == EVENT_DTYPE and got.size == exp.size, k
        assert np.all(np.diff(got["toa"]) >= 0)                                # time ordered
        got = by_key(got)
        for f in ("x", "y", "tot", "chip", "toa"):
            np.testing.assert_array_equal(got[f], exp[f], err_msg=f"train {k} field {f}")
        np.testing.assert_array_equal(got["tof"], exp["toa"] - tg["time"])
        assert np.all(got["event"] == tg["counter"]) and np.all(got["train_id"] == train.train_id)
        assert set(np.unique(got["chip"]).tolist()) <= {0, 1}
    c = asm.stats()
    assert c["trains"] == len(trig) and c["triggers"] == len(trig) and c["pending"] == 0
    assert c["hits"] == sum(t.n_hits for t in trains) == sum(ch.events.size for ch in chunks)
    assert c["centroids"] == sum(t.n_centroids for t in trains) == sum(ch.centroids.size for ch in chunks)
    for k in ("hits_late", "hits_unmatched", "centroids_late", "centroids_unmatched", "trains_without_id",
              "triggers_unmatched", "trains_missing_chips", "trains_incomplete", "train_id_disagreements"):
        assert c[k] == 0, k


def test_centroids_are_those_of_the_trains_hits():
    words, _, truth = simulate()
    trains, _ = assemble(chunks_of(words, 4000), 2)
    # independent expectation: one unchunked processor run per chip
    whole = []
    for c, proc in enumerate(processors(2)):
        whole.append(ProcessedChunk.concat([proc.feed(np.concatenate(words[c])), proc.flush()]).centroids)
    whole = np.concatenate(whole)
    for train in trains:
        cen = train.centroids
        assert cen.dtype == CENTROID_DTYPE
        assert np.all(cen["event"] == train.trigger) and np.all(cen["train_id"] == train.train_id)
        # every hit with ToT > 0 is in exactly one cluster of its own trigger and chip
        assert int(cen["size"].sum()) == int(np.count_nonzero(train.hits["tot"] > 0))
        exp = whole[whole["event"] == train.trigger]
        key = lambda a: a[np.lexsort((a["y"], a["x"], a["chip"], a["toa_first"]))]  # noqa: E731
        got, exp = key(cen), key(exp)
        for f in ("chip", "x", "y", "toa", "toa_first", "tof", "size", "tot_sum"):
            np.testing.assert_array_equal(got[f], exp[f], err_msg=f)


@pytest.mark.parametrize("step, chip_order", [(1 << 20, None), (997, None), (257, (1, 0)), (60, (1, 0))])
def test_any_chunking_and_chip_order_gives_identical_trains(step, chip_order):
    words, _, _ = simulate()
    ref, _ = assemble(chunks_of(words, 4000), 2)
    got, asm = assemble(chunks_of(words, step, chip_order), 2)
    assert len(got) == len(ref)
    for a, b in zip(ref, got):
        assert a.same_data(b), (a, b)
    assert asm.stats()["hits_late"] == 0


def test_single_chip_stream():
    words, _, truth = simulate(n_chips=1, seconds=0.25, slices=5, seed=3)
    trains, asm = assemble(chunks_of(words, 1500), 1)
    trig = truth_triggers(truth)
    assert [t.trigger for t in trains] == trig["counter"].tolist()
    for train, tg in zip(trains, trig):
        exp = truth_train_hits(truth, tg["counter"], tg["time"])
        np.testing.assert_array_equal(by_key(train.hits)["toa"], by_key(exp)["toa"])
        assert train.chips_triggered == 1
    assert asm.stats()["trains_missing_chips"] == 0


def test_trains_without_hits_are_announced():
    # few particles: many triggers have no hit in their window
    words, _, truth = simulate(n_chips=2, seconds=0.4, hit_rate_hz=60.0, seed=5)
    trains, asm = assemble(chunks_of(words, 3000), 2)
    trig = truth_triggers(truth)
    expected_empty = [k for k, tg in enumerate(trig) if truth_train_hits(truth, tg["counter"], tg["time"]).size == 0]
    assert len(expected_empty) >= 3                                     # the test needs some
    assert [t.trigger for t in trains] == trig["counter"].tolist()      # every trigger, empty or not
    empty = [k for k, t in enumerate(trains) if t.n_hits == 0]
    assert empty == expected_empty
    for k in empty:
        t = trains[k]
        assert t.hits.dtype == EVENT_DTYPE and t.centroids.dtype == CENTROID_DTYPE and t.n_centroids == 0
        assert t.train_id == START_ID + k
    assert asm.stats()["trains_empty"] == len(expected_empty)


def test_trains_come_out_while_the_data_flow():
    """Bounded latency: once every chip's data up to time b were added, each train whose
    window ends well before b (reorder window 2 ms + clustering 1 ms + slack) is out."""
    words, slice_ends, truth = simulate()
    trains = []
    asm = TrainAssembler([0, 1], WINDOW, trains.append)
    procs = processors(2)
    slack = int(round(10e-3 / TOA_UNIT_S))
    checked = 0
    for s, end in enumerate(slice_ends):
        for c in (0, 1):
            asm.add(procs[c].feed(words[c][s]))
        trig = truth_triggers(truth)
        due = trig[trig["time"] + HI + slack < end]
        assert [t.trigger for t in trains[:len(due)]] == due["counter"].tolist()
        checked += len(due)
    assert checked > 0
    n_before_end = len(trains)
    for c in (0, 1):
        asm.add(procs[c].flush())
    asm.flush()
    assert n_before_end < len(trains) == len(truth_triggers(truth))


def test_concurrent_chips_give_the_same_trains():
    words, _, _ = simulate()
    ref, _ = assemble(chunks_of(words, 2000), 2)
    per_chip = {c: [ch for ch in chunks_of(words, 2000) if ch.chip == c] for c in (0, 1)}
    trains = []
    asm = TrainAssembler([0, 1], WINDOW, trains.append)
    errors = []

    def feed(c):
        try:
            for ch in per_chip[c]:
                asm.add(ch)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=feed, args=(c,)) for c in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    asm.flush()
    assert not errors
    assert len(trains) == len(ref)
    assert all(a.same_data(b) for a, b in zip(ref, trains))
    assert [t.index for t in trains] == list(range(len(ref)))


# ----------------------------------------------------------------------------- train IDs
def test_trains_without_a_train_id_source_are_delivered_with_id_0():
    words, _, truth = simulate(n_chips=1, seconds=0.25, slices=5, seed=3)
    trains, asm = assemble(chunks_of(words, 4000, with_ids=False), 1, wait_for_train_ids=False)
    assert len(trains) == len(truth_triggers(truth))
    assert all(t.train_id == 0 and t.flags & UNKNOWN for t in trains)
    assert all(np.all(t.hits["train_id"] == 0) for t in trains)
    assert asm.stats()["trains_without_id"] == len(trains)
    assert sum(t.n_hits for t in trains) == asm.stats()["hits"] > 0


def test_waiting_for_undecided_train_ids_times_out_in_board_time():
    words, _, truth = simulate(n_chips=1, seconds=0.25, slices=5, seed=3)
    trains = []
    asm = TrainAssembler([0], WINDOW, trains.append, wait_for_train_ids=True, train_id_timeout_s=0.02)
    chunks = chunks_of(words, 4000, with_ids=False)
    for ch in chunks[:-1]:
        asm.add(ch)
    assert len(trains) > 5                               # went out during the stream, after the timeout
    assert asm.stats()["trains_id_timeout"] == len(trains)
    asm.add(chunks[-1])
    asm.flush()
    assert len(trains) == len(truth_triggers(truth))
    assert all(t.train_id == 0 and t.flags & UNKNOWN for t in trains)


# ----------------------------------------------------------------------------- hand-made chunks
def chunk(chip, triggers=(), events=(), until=None, decided=()):
    """A ProcessedChunk: triggers [(counter, time)], events [(counter, toa)],
    decided [(counter, time, train_id)]."""
    ch = ProcessedChunk.empty(chip)
    t = np.zeros(len(triggers), TDC_DTYPE)
    t["tdc"], t["rising"], t["chip"] = 1, 1, chip
    if len(triggers):
        t["counter"], t["time"] = np.array(triggers).T
    ev = np.zeros(len(events), EVENT_DTYPE)
    if len(events):
        ev["event"], ev["toa"] = np.array(events).T
        ev["chip"] = chip
    from tpx3lib.trainid import TRIGGER_TRAIN_DTYPE
    d = np.zeros(len(decided), TRIGGER_TRAIN_DTYPE)
    d["host_time"] = np.nan
    if len(decided):
        d["counter"], d["time"], d["train_id"] = np.array(decided).T
    ch.triggers, ch.events, ch.trains = t, ev, d
    ch.complete_until = np.iinfo(np.int64).min if until is None else until
    return ch


def test_hits_arriving_after_their_train_went_out_are_counted():
    trains = []
    asm = TrainAssembler([0], WINDOW, trains.append, wait_for_train_ids=False)
    asm.add(chunk(0, triggers=[(1, 1000)], events=[(1, 1100), (1, 1200)], until=1000 + HI + 10**6))
    assert len(trains) == 1 and trains[0].n_hits == 2
    asm.add(chunk(0, events=[(1, 1300)] * 3, until=1000 + HI + 2 * 10**6))
    asm.flush()
    c = asm.stats()
    assert c["hits_late"] == 3 and c["hits"] == 2 and len(trains) == 1


def test_starting_mid_stream_counts_the_data_of_earlier_triggers():
    words, _, _ = simulate()
    chunks = chunks_of(words, 500)

    def first_triggers(part):
        first = {}
        for ch in part:
            t = ch.triggers[(ch.triggers["tdc"] == 1) & (ch.triggers["rising"] == 1)]
            if t.size and ch.chip not in first:
                first[ch.chip] = int(t["counter"].min())
        return first

    def earlier(part):
        """Hits in ``part`` of triggers before chip 0's (the reference's) first one in it
        (the chips share the trigger counters)."""
        first = first_triggers(part).get(0, 1 << 62)
        return sum(int(np.count_nonzero(ch.events["event"] < first)) for ch in part)
    # start just after a chunk that brought a trigger of chip 0, so its hits come later
    start = next(i + 1 for i in range(len(chunks) // 3, len(chunks))
                 if chunks[i].chip == 0 and np.any(chunks[i].triggers["rising"] == 1) and earlier(chunks[i + 1:]))
    trains, asm = assemble(chunks[start:], 2)
    c = asm.stats()
    assert c["hits_unmatched"] == earlier(chunks[start:]) > 0 and c["hits_late"] == 0
    assert c["hits"] + c["hits_unmatched"] == sum(ch.events.size for ch in chunks[start:])
    full, _ = assemble(chunks, 2)
    by_trigger = {t.trigger: t for t in full}
    assert [t.trigger for t in trains] == [t.trigger for t in full if t.trigger >= first_triggers(chunks[start:])[0]]
    assert all(t.same_data(by_trigger[t.trigger]) for t in trains)


def test_a_trigger_another_chip_does_not_see_is_counted():
    trains = []
    asm = TrainAssembler([0, 1], WINDOW, trains.append, wait_for_train_ids=False)
    far = 10**9
    # chip 0: triggers 1 and 2; chip 1 misses 2 but has an extra one (7) at a time chip 0 has none
    asm.add(chunk(0, triggers=[(1, 1000), (2, far)], events=[(1, 1100), (2, far + 5)], until=3 * far))
    asm.add(chunk(1, triggers=[(1, 1000), (7, 2 * far)], events=[(1, 1200), (7, 2 * far + 5), (7, 2 * far + 6)],
                  until=3 * far))
    asm.flush()
    assert [t.trigger for t in trains] == [1, 2]
    assert trains[0].n_hits == 2 and trains[0].chips_triggered == 2
    assert trains[1].n_hits == 1 and trains[1].chips_triggered == 1
    c = asm.stats()
    assert c["trains_missing_chips"] == 1 and c["triggers_unmatched"] == 1 and c["hits_unmatched"] == 2
    assert c["hits"] + c["hits_unmatched"] == 5                 # every hit added is accounted for


def test_another_chips_trigger_with_another_counter_is_matched_by_time():
    trains = []
    asm = TrainAssembler([0, 1], WINDOW, trains.append, wait_for_train_ids=False)
    asm.add(chunk(1, triggers=[(40, 5000)], events=[(40, 5100)], until=10**9))       # chip 1 comes first
    asm.add(chunk(0, triggers=[(3, 5000)], events=[(3, 5200)], until=10**9))
    asm.flush()
    assert len(trains) == 1 and trains[0].trigger == 3 and trains[0].n_hits == 2
    assert asm.stats()["trigger_counter_mismatch"] == 1


def test_decisions_from_the_chunks_give_train_ids_and_disagreements_are_counted():
    trains = []
    asm = TrainAssembler([0, 1], WINDOW, trains.append)
    asm.add(chunk(0, triggers=[(1, 1000)], until=10**9))
    asm.add(chunk(1, triggers=[(1, 1000)], until=10**9))
    assert trains == []                                     # waiting for the train ID
    asm.add(chunk(1, decided=[(1, 1000, 77)]))
    assert [t.train_id for t in trains] == [77]
    asm.add(chunk(0, decided=[(1, 1000, 78)]))             # a later, different decision
    asm.flush()
    assert asm.stats()["train_id_disagreements"] == 1 and trains[0].train_id == 77


def test_flush_hands_out_incomplete_trains_marked():
    trains = []
    asm = TrainAssembler([0, 1], WINDOW, trains.append, wait_for_train_ids=False)
    asm.add(chunk(0, triggers=[(1, 1000)], events=[(1, 1100)], until=10**9))
    assert trains == []                                     # chip 1 has not delivered anything
    asm.flush()
    assert len(trains) == 1 and not trains[0].complete
    assert asm.stats()["trains_incomplete"] == 1


def test_no_event_window_ends_a_train_at_the_next_trigger():
    trains = []
    asm = TrainAssembler([0], None, trains.append, wait_for_train_ids=False)
    asm.add(chunk(0, triggers=[(1, 1000)], events=[(1, 10**8)], until=2 * 10**8))
    assert trains == []                                     # the next trigger may still come
    asm.add(chunk(0, triggers=[(2, 3 * 10**8)], until=4 * 10**8))
    assert [t.trigger for t in trains] == [1]
    asm.flush()
    assert [t.trigger for t in trains] == [1, 2]


def test_misuse_raises_typed_errors():
    asm = TrainAssembler([0], WINDOW, lambda t: None)
    with pytest.raises(TrainAssemblyError, match="chip 3"):
        asm.add(chunk(3))
    asm.flush()
    with pytest.raises(TrainAssemblyError, match="after flush"):
        asm.add(chunk(0))
    with pytest.raises(ConfigError):
        TrainAssembler([], WINDOW, lambda t: None)
    with pytest.raises(ConfigError):
        TrainAssembler([0], (1e-3, 0.0), lambda t: None)
    with pytest.raises(ConfigError):
        TrainAssembler([0, 1], WINDOW, lambda t: None, reference_chip=2)


def test_from_info_reads_the_pipeline_config():
    info = {"chips": [2, 0], "products": ("events",), "event_window_s": (0.0, 1e-3),
            "config": {0: ProcessingConfig(chip=0, event_window_s=(0.0, 2e-3)).to_dict(),
                       2: ProcessingConfig(chip=2, event_window_s=(1e-6, 1e-3)).to_dict()},
            "train_ids": False}
    asm = TrainAssembler.from_info(info, lambda t: None)
    assert asm.chips == [0, 2] and asm.reference_chip == 0
    assert asm.event_window_s == (0.0, 2e-3) and asm.wait_for_train_ids is False
    info["config"][2]["trigger_tdc"] = 2
    with pytest.raises(ConfigError, match="trigger edges"):
        TrainAssembler.from_info(info, lambda t: None)


# ----------------------------------------------------------------------------- messages
def test_train_message_layout_units_and_round_trip():
    from karabo_bridge import deserialize, serialize
    words, _, _ = simulate()
    trains, asm = assemble(chunks_of(words, 4000), 2)
    train = max(trains, key=lambda t: t.n_hits)
    data, meta = train_message(train, SRC, counters={"hits_late": 0, "note": "x"})
    d = data[SRC]
    assert meta[SRC]["timestamp.tid"] == train.train_id and meta[SRC]["source"] == SRC
    assert {"timestamp", "timestamp.sec", "timestamp.frac"} <= set(meta[SRC])
    assert set(HIT_KEYS.values()) | set(CENTROID_KEYS.values()) | set(SCALAR_KEYS.values()) <= set(d)
    np.testing.assert_array_equal(d["data.hits.x"], train.hits["x"])
    np.testing.assert_array_equal(d["data.hits.tof"], train.hits["tof"])      # 25/4096 ns units, exact
    assert d["data.hits.toa"].dtype == np.int64 and d["data.centroids.x"].dtype == np.float64
    assert d[TIME_UNIT_KEY] == 25e-9 / 4096
    assert d["data.nHits"] == train.n_hits and d["data.trigger"] == train.trigger
    assert d["data.triggerTime"] == train.trigger_time and d["counters.note"] == "x"
    back_data, back_meta = deserialize(serialize(data, meta))
    back = train_from_message(back_data, back_meta, SRC)
    assert back.same_data(train, timestamp=False)


def test_message_of_an_empty_train_and_known_timestamp():
    from karabo_bridge import deserialize, serialize
    t = Train(train_id=10, trigger=3, trigger_time=99, flags=0, hits=np.empty(0, EVENT_DTYPE),
              centroids=np.empty(0, CENTROID_DTYPE), timestamp_ns=1_700_000_000_123_456_789)
    data, meta = train_message(t)
    assert meta[SRC]["timestamp.sec"] == "1700000000"
    assert meta[SRC]["timestamp.frac"].startswith("123456789")
    back = train_from_message(*deserialize(serialize(data, meta)))
    assert back.same_data(t) and back.n_hits == 0


def test_file_keys_are_the_run_writers_dataset_names():
    from tpx3lib.exdf.layout import CENTROID_FIELDS, HIT_FIELDS
    assert sorted(v for v in FILE_KEYS.values() if v.startswith("data.")) == sorted(f"data.{f}" for f in HIT_FIELDS)
    assert sorted(v for v in FILE_KEYS.values() if v.startswith("centroids.")) == \
        sorted(f"centroids.{f}" for f in CENTROID_FIELDS)


def test_merge_trains_joins_duplicates_in_time_order():
    def t(tid, counter, toas, flags=0):
        h = np.zeros(len(toas), EVENT_DTYPE)
        h["toa"], h["event"], h["train_id"] = toas, counter, tid
        return Train(tid, counter, toas[0] if toas else 0, flags, h, np.empty(0, CENTROID_DTYPE))
    m = merge_trains([t(5, 1, [30, 10]), t(5, 2, [20], DUPLICATE)])
    assert m.trigger == 1 and m.flags == DUPLICATE
    assert m.hits["toa"].tolist() == [10, 20, 30]
    with pytest.raises(ValueError):
        merge_trains([t(5, 1, [1]), t(6, 2, [2])])


# ----------------------------------------------------------------------------- hand-off queue
def dummy(i):
    return Train(i, i, i, 0, np.empty(0, EVENT_DTYPE), np.empty(0, CENTROID_DTYPE))


def test_queue_drop_policy_keeps_the_newest_in_order():
    q = TrainQueue(3, "drop")
    for i in range(5):
        q.put(dummy(i))
    q.close()
    got = []
    while (item := q.get()) is not None:
        got.append(item[0].train_id)
    assert got == [2, 3, 4] and q.dropped == 2


def test_queue_block_policy_waits_then_drops_after_timeout():
    q = TrainQueue(1, "block", block_timeout=0.05)
    assert q.put(dummy(1))
    assert not q.put(dummy(2))             # nobody took the first one
    assert q.dropped == 1
    took = []
    th = threading.Thread(target=lambda: took.append(q.get(timeout=5)))
    q.block_timeout = None
    th.start()
    assert q.put(dummy(3))                 # room is made by the consumer
    th.join()
    assert took[0][0].train_id == 1 and q.get(timeout=1)[0].train_id == 3
    with pytest.raises(TimeoutError):
        q.get(timeout=0.01)
    with pytest.raises(ConfigError):
        TrainQueue(1, "wait")


def test_buffer_pool_reuses_memory_only_once_the_message_is_gone():
    words, _, _ = simulate()
    trains, _ = assemble(chunks_of(words, 4000), 2)
    pool = BufferPool(max_buffers=2)
    m1 = train_message(trains[0], alloc=pool)
    m2 = train_message(trains[1], alloc=pool)
    assert pool.allocated == 2 and pool.reused == 0
    x1 = m1[0][SRC]["data.hits.x"]
    del m1                                   # an array of it is still held (as ZeroMQ would)
    m3 = train_message(trains[2], alloc=pool)
    assert pool.reused == 0 and pool.allocated == 3
    np.testing.assert_array_equal(x1, trains[0].hits["x"])          # untouched
    del x1
    m4 = train_message(trains[3], alloc=pool)
    assert pool.reused == 1
    for m, t in ((m2, trains[1]), (m3, trains[2]), (m4, trains[3])):
        assert train_from_message(*m).same_data(t, timestamp=False)


def test_buffer_pool_reserve_prepares_a_buffer_the_next_message_reuses():
    from tpx3lib.pipeline.trains import BufferPool
    pool = BufferPool(max_buffers=2)
    assert pool.reserve(1000) is True and pool.allocated == 1
    assert pool.reserve(500) is False                 # a free, large enough buffer is there
    a = pool(800)                                      # the reserved buffer, no new allocation
    assert a.size == 800 and pool.allocated == 1 and pool.reused == 1
    assert pool.reserve(1000) is True                  # `a` is in use: a second buffer is added
    b = pool(900)
    assert pool.allocated == 2 and not np.shares_memory(a, b)
    assert pool.reserve(10) is False                   # both in use and the pool is full
    del a, b
    assert pool.reserve(4000) is True and pool.allocated == 3   # a free one grows
