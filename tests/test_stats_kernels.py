"""The live statistics kernels against numpy: np.histogram with the same edges, np.add.at."""
import numpy as np
from hypothesis import given, settings, strategies as st

from tpx3lib.dtypes import PIXEL_DTYPE, TOA_UNIT_S
from tpx3lib.pipeline.sinks import StatisticsSink
from tpx3lib.pipeline.stats_kernels import add_hit_map, add_histogram


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-2000, 2_000_000), max_size=400), st.integers(1, 700), st.booleans())
def test_histogram_matches_numpy_with_the_same_edges(values, n_bins, as_float):
    edges = np.linspace(0.0, 1e-3, n_bins + 1) / TOA_UNIT_S        # the sink's edges, in time units
    v = np.array(values, np.int64) * 97
    # values exactly on edges (floor and ceil of each edge), the last edge, beyond it
    on_edges = np.concatenate([np.floor(edges), np.ceil(edges)]).astype(np.int64)
    v = np.concatenate([v, on_edges, [int(edges[-1]) + 1]])
    if as_float:
        v = v.astype(np.float64) + 0.25
        v = np.concatenate([v, edges, [np.nan, -np.inf, np.inf]])
    counts = np.zeros(n_bins, np.int64)
    add_histogram(v, edges, counts)
    expect = np.histogram(v[np.isfinite(v)], bins=edges)[0]
    np.testing.assert_array_equal(counts, expect)
    add_histogram(v, edges, counts)                               # adds, does not overwrite
    np.testing.assert_array_equal(counts, 2 * expect)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), max_size=300))
def test_hit_map_counts_every_pixel_inside_and_reports_the_rest(xy):
    p = np.zeros(len(xy), PIXEL_DTYPE)
    if xy:
        p["x"], p["y"] = np.array(xy).T
    hit_map = np.zeros((256, 256), np.int64)
    outside = add_hit_map(p, hit_map)
    expect = np.zeros((256, 256), np.int64)
    inside = (p["x"] < 256) & (p["y"] < 256)
    np.add.at(expect, (p["y"][inside], p["x"][inside]), 1)
    np.testing.assert_array_equal(hit_map, expect)
    assert outside == np.count_nonzero(~inside)


def test_statistics_sink_map_is_row_y_and_histogram_is_of_tof():
    from tpx3lib.pipeline.processor import ProcessedChunk
    chunk = ProcessedChunk.empty(0)
    chunk.pixels = np.zeros(3, PIXEL_DTYPE)
    chunk.pixels["x"] = [5, 5, 255]
    chunk.pixels["y"] = [7, 7, 0]
    ev = np.zeros(2, chunk.events.dtype)
    ev["tof"] = [0, int(0.5e-3 / TOA_UNIT_S)]
    chunk.events = ev
    s = StatisticsSink(tof_range_s=(0.0, 1e-3), tof_bins=4)
    s.on_chunk(chunk)
    m = s.hit_map()
    assert m[7, 5] == 2 and m[0, 255] == 1 and m.sum() == 3
    np.testing.assert_array_equal(s.tof_histogram(), [1, 0, 1, 0])
