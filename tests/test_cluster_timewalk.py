"""Timewalk tables: unit and indexing, files, application, derivation and the CLI command."""
from __future__ import annotations

import numpy as np
import pytest

from tpx3lib.cli import main as cli_main
from tpx3lib.cluster import ClusterParams, TimewalkTable, cluster_hits, derive_timewalk, tot_bin
from tpx3lib.cluster.synthetic import make_hits
from tpx3lib.dtypes import CENTROID_DTYPE, EVENT_DTYPE, PIXEL_DTYPE, TOA_UNIT_NS
from tpx3lib.errors import ConfigError, FileFormatError


def ramp():
    return TimewalkTable(np.linspace(100.0, 0.0, 1023))


def test_unit_and_indexing():
    t = ramp()
    np.testing.assert_array_equal(tot_bin([0, 24, 25, 49, 50, 25575, 40000]), [0, 0, 0, 0, 1, 1022, 1022])
    assert t.delay_for_tot(25) == 100.0 and t.delay_for_tot(50) == t.delay_ns[1]
    assert t.delay_for_tot(25575) == 0.0
    assert t.delay_units(25) == round(100.0 / TOA_UNIT_NS) == 16384


def test_apply_to_hits_and_centroids():
    t = ramp()
    ev = np.zeros(3, EVENT_DTYPE)
    ev["tot"] = [25, 50, 25575]
    ev["toa"] = 10**12
    ev["tof"] = 10**6
    out = t.apply(ev)
    assert ev["toa"][0] == 10**12                     # input untouched
    np.testing.assert_array_equal(out["toa"], 10**12 - t.delay_units(ev["tot"]))
    np.testing.assert_array_equal(out["tof"], 10**6 - t.delay_units(ev["tot"]))
    px = np.zeros(2, PIXEL_DTYPE)
    px["tot"], px["toa"] = 25, 5 * 10**6
    assert np.all(t.apply(px)["toa"] == 5 * 10**6 - 16384)
    c = np.zeros(2, CENTROID_DTYPE)
    c["tot_max"] = [25, 25575]
    c["toa"], c["tof"], c["toa_first"] = 1e9, 1e6, 10**9
    oc = t.apply(c)
    np.testing.assert_allclose(oc["toa"], 1e9 - t.delay_for_tot(c["tot_max"]) / TOA_UNIT_NS)
    np.testing.assert_allclose(oc["tof"], 1e6 - t.delay_for_tot(c["tot_max"]) / TOA_UNIT_NS)
    assert np.all(oc["toa_first"] == 10**9)
    with pytest.raises(TypeError):
        t.apply(np.zeros(2))


@pytest.mark.parametrize("name", ["table.npy", "table.txt", "table.csv"])
def test_save_load_roundtrip(tmp_path, name):
    t = TimewalkTable(np.random.default_rng(1).normal(10, 5, 1023))
    p = t.save(tmp_path / name)
    assert TimewalkTable.load(p) == t


def test_text_formats_and_errors(tmp_path):
    one = tmp_path / "one.dat"
    one.write_text("# delays\n" + "\n".join(str(v) for v in range(1023)) + "\n")
    np.testing.assert_array_equal(TimewalkTable.load(one).delay_ns, np.arange(1023.0))
    bad_tot = tmp_path / "bad.txt"
    bad_tot.write_text("\n".join(f"{25 * i} 1.0" for i in range(1023)))   # starts at 0, not 25
    with pytest.raises(FileFormatError):
        TimewalkTable.load(bad_tot)
    junk = tmp_path / "junk.txt"
    junk.write_text("25 abc\n")
    with pytest.raises(FileFormatError):
        TimewalkTable.load(junk)
    short = tmp_path / "short.npy"
    np.save(short, np.zeros(10))
    with pytest.raises(ConfigError):
        TimewalkTable.load(short)
    with pytest.raises(ConfigError):
        TimewalkTable(np.full(1023, np.nan))
    with pytest.raises(ConfigError):
        TimewalkTable.from_model(1000.0, 30.0)


def test_pymepix_lut_units():
    lut = np.full(1023, 2e-9)          # read as seconds: 2 ns
    assert TimewalkTable.from_pymepix_lut(lut, "s").delay_ns[0] == pytest.approx(2.0)
    # what pymepix actually subtracts: lut * 1e3 seconds
    assert TimewalkTable.from_pymepix_lut(lut).delay_ns[0] == pytest.approx(2e-9 * 1e3 * 1e9)
    with pytest.raises(ConfigError):
        TimewalkTable.from_pymepix_lut(lut, "ms")


def truth_walk(run, tot_ns):
    return run.walk_ns(tot_ns)


def test_derive_max_tot_reference_recovers_the_walk():
    run = make_hits(n_clusters=6000, seed=7, n_events=200, trigger_period_ns=2e4, tof_peaks_ns=(2e3, 6e3),
                    tof_sigma_ns=800.0, walk_a=4000.0, walk_b=25.0, jitter_ns=0.3)
    table, info = derive_timewalk(run.hits)
    good = info["count"] >= 50
    tot = 25.0 * (np.arange(1023) + 1)
    # normalised to zero delay at infinite ToT, like the generator's walk a / (tot + b)
    assert good.sum() >= 20
    assert np.max(np.abs(table.delay_ns[good] - truth_walk(run, tot[good]))) < 1.6   # one FToA step
    assert np.max(np.abs(table.delay_ns - truth_walk(run, tot))) < 3.0              # model-filled bins too
    a, b, c = info["fit"]
    assert a == pytest.approx(4000.0, rel=0.25) and b == pytest.approx(-25.0, abs=25.0)


def test_derive_tof_peak_reference_and_correction():
    run = make_hits(n_clusters=4000, seed=3, n_events=100, trigger_period_ns=2e4, tof_peaks_ns=(5e3,),
                    tof_sigma_ns=0.0, walk_a=4000.0, walk_b=25.0, jitter_ns=0.3)
    table, info = derive_timewalk(run.hits, reference="tof_peak", tof_peak_ns=5e3, peak_halfwidth_ns=300)
    good = info["count"] >= 30
    tot = 25.0 * (np.arange(1023) + 1)
    # absolute walk, up to the FToA rounding (hits are floored to 1.5625 ns steps: -0.78 ns mean)
    assert np.max(np.abs(table.delay_ns[good] - truth_walk(run, tot[good]) + 0.78)) < 1.0
    # corrected centroids sit on the true ToF within the ToA resolution
    c = cluster_hits(run.hits, ClusterParams(min_size=2), timewalk=table)
    err_ns = (c["tof"] - np.rint(5e3 / TOA_UNIT_NS)) * TOA_UNIT_NS
    assert np.median(np.abs(err_ns)) < 1.5625
    raw = cluster_hits(run.hits, ClusterParams(min_size=2))
    assert np.median(np.abs((raw["tof"] - np.rint(5e3 / TOA_UNIT_NS)) * TOA_UNIT_NS)) > 5.0


def test_derive_errors():
    run = make_hits(n_clusters=5, seed=1)
    with pytest.raises(ConfigError):
        derive_timewalk(run.hits)                    # too few bins
    with pytest.raises(ConfigError):
        derive_timewalk(run.hits, reference="tof_peak")
    with pytest.raises(ConfigError):
        derive_timewalk(run.hits, reference="nonsense")


def test_cli_timewalk(tmp_path, capsys):
    run = make_hits(n_clusters=3000, seed=5, n_events=100, trigger_period_ns=2e4, tof_peaks_ns=(2e3, 6e3),
                    tof_sigma_ns=800.0)
    src = tmp_path / "calib.npz"
    np.savez(src, events=run.hits)
    out = tmp_path / "tw.npy"
    assert cli_main(["timewalk", str(src), "-o", str(out), "--text"]) == 0
    t = TimewalkTable.load(out)
    assert TimewalkTable.load(tmp_path / "tw.txt") == t
    assert t.delay_ns[0] > t.delay_ns[100] > t.delay_ns[1000] - 1.0
    assert "wrote" in capsys.readouterr().out
    # plain arrays and pymepix-style arrays are accepted too
    plain = tmp_path / "plain.npz"
    np.savez(plain, **{f: run.hits[f] for f in ("x", "y", "tot", "toa", "event")})
    assert cli_main(["timewalk", str(plain), "-o", str(tmp_path / "p.txt")]) == 0
    empty = tmp_path / "empty.npz"
    np.savez(empty, other=np.zeros(3))
    assert cli_main(["timewalk", str(empty), "-o", str(tmp_path / "x.npy")]) == 1
    assert "no hits found" in capsys.readouterr().err


def test_cli_timewalk_raw_file(tmp_path, data_dir, capsys):
    """A raw recording is decoded (tpx3lib.decode) into pixels or events and calibrated."""
    raw = str(data_dir / "centroid_pipeline_test.raw")
    assert cli_main(["timewalk", raw, "-o", str(tmp_path / "p.npy"), "--pixels", "--min-count", "1"]) == 0
    assert "1858 hits read" in capsys.readouterr().out
    assert cli_main(["timewalk", raw, "-o", str(tmp_path / "e.npy"), "--min-count", "1"]) == 0
    assert "21 hits read" in capsys.readouterr().out      # the fixture's event pixels
    TimewalkTable.load(tmp_path / "e.npy")
