"""The per-chip chain from raw words to centroids, on the real fixture."""
import numpy as np
import pytest

from tpx3lib.cluster import ClusterParams
from tpx3lib.dtypes import toa_seconds
from tpx3lib.errors import ConfigError
from tpx3lib.pipeline import ChipProcessor, ProcessedChunk, ProcessingConfig

LONGTIME = 2233861246990


@pytest.fixture(scope="module")
def words(data_dir):
    return np.frombuffer((data_dir / "centroid_pipeline_test.raw").read_bytes()[8:], "<u8")


def run(proc, words, cuts=()):
    bounds = [0, *cuts, words.size]
    parts = [proc.feed(words[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return ProcessedChunk.concat([*parts, proc.flush()])


def test_raw_file_to_pymepix_centroid(words, data_dir):
    expected = np.load(data_dir / "centroid_pipeline_test.expected.npz")["centroids"][:, 0]
    cfg = ProcessingConfig(longtime=LONGTIME, products=("events", "centroids"),
                           cluster=ClusterParams.pymepix().to_dict())
    out = run(ChipProcessor(cfg), words)
    assert out.centroids.size == 1
    c = out.centroids[0]
    _, x, y, tof, tot_avg, tot_max, size = expected
    np.testing.assert_allclose([c["x"], c["y"]], [x, y], rtol=1e-9)
    np.testing.assert_allclose(toa_seconds(c["tof"]), tof, rtol=1e-7)
    np.testing.assert_allclose(c["tot_mean"], tot_avg, rtol=1e-6)
    assert (c["tot_max"], c["size"]) == (tot_max, size)


@pytest.mark.parametrize("cuts", [(1,), (1000, 1017, 1019), tuple(range(100, 4000, 97))])
def test_chunking_changes_nothing_through_every_stage(words, cuts):
    cfg = ProcessingConfig(longtime=LONGTIME, products=("pixels", "triggers", "events", "centroids"),
                           event_window_s=None)
    whole = run(ChipProcessor(cfg), words)
    split = run(ChipProcessor(cfg), words, cuts)
    for field in ("pixels", "triggers", "events", "centroids"):
        np.testing.assert_array_equal(getattr(split, field), getattr(whole, field))
    assert whole.events.size == 1858 - 76  # every pixel after the first trigger


def test_counters_account_for_every_pixel(words):
    proc = ChipProcessor(ProcessingConfig(longtime=LONGTIME, products=("events",)))
    run(proc, words)
    c = proc.counters()
    ev = c["events"]
    assert c["decode"]["pixel"] == ev["hits_in"] == 1858
    assert ev["events_out"] + ev["before_first_trigger"] + ev["outside_window"] + ev["pending"] == 1858


def test_unknown_product_is_refused():
    with pytest.raises(ConfigError, match="unknown product"):
        ProcessingConfig(products=("pixels", "frames"))
