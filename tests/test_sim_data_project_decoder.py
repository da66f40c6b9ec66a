"""The project's decoder (tpx3lib.decode) on generated streams: hit for hit equal to the truth."""
from __future__ import annotations

import numpy as np

from simulators.clock import BoardClock
from simulators.physics import HitGenerator, PhysicsModel
from simulators.truth import Truth

import tpx3lib.decode.stream as stream

S = 40_000_000


def generate(n_chips=1, start=0, seconds=1.0, slices=5, **kw):
    gen = HitGenerator(PhysicsModel(**kw), n_chips=n_chips)
    edges = np.linspace(start, start + int(seconds * S), slices + 1).astype(np.int64)
    parts = [gen.generate(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    words = [np.concatenate([p.words[c] for p in parts]) for c in range(n_chips)]
    return words, Truth.concat([p.truth for p in parts])


def check(decoded, truth):
    px = decoded.pixels
    assert len(px) == len(truth.hits)
    for f in ("x", "y", "tot", "ftoa", "toa", "chip"):
        np.testing.assert_array_equal(px[f], truth.hits[f], err_msg=f)
    for f in decoded.tdcs.dtype.names:
        np.testing.assert_array_equal(decoded.tdcs[f], truth.triggers[f], err_msg=f)
    np.testing.assert_array_equal(decoded.heartbeats, truth.heartbeats)


def test_decode_words_matches_truth_across_the_wrap():
    words, truth = generate(start=BoardClock.ticks_before_wrap(0.4), seconds=0.8, hit_rate_hz=50_000,
                            tdc2_rate_hz=100, trigger_rate_hz=20, seed=21)
    out, counts = stream.decode_words(words[0])
    check(out, truth)
    assert counts["unreferenced_words"] == 0


def test_stream_decoder_fed_datagram_by_datagram_per_chip():
    words, truth = generate(n_chips=2, seconds=1.2, hit_rate_hz=30_000, heartbeat_period_s=0.25, seed=22)
    for chip in (0, 1):
        dec = stream.StreamDecoder(chip=chip)
        w = words[chip]
        parts = [dec.feed(w[i:i + 1024]) for i in range(0, len(w), 1024)] + [dec.flush()]
        check(stream.DecodedChunk.concat(parts), truth.for_chip(chip))


def test_events_match_the_truth():
    import tpx3lib.decode.events as events
    words, truth = generate(seconds=1.0, hit_rate_hz=50_000, trigger_rate_hz=50, seed=23)
    out, _ = stream.decode_words(words[0])
    eb = events.EventBuilder(window_s=None)
    ev = np.concatenate([eb.feed(out.pixels, out.tdcs), eb.flush()])
    h = truth.hits[truth.hits["event"] >= 0]
    assert len(ev) == len(h)
    key_ev = np.lexsort((ev["y"], ev["x"], ev["toa"]))
    key_h = np.lexsort((h["y"], h["x"], h["toa"]))
    np.testing.assert_array_equal(ev["event"][key_ev], h["event"][key_h])
    np.testing.assert_array_equal(ev["toa"][key_ev], h["toa"][key_h])
