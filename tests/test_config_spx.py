"""The SoPhy .spx reader against the real fixture's documented values, and its error handling."""
from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest

from tpx3lib.config import load_config, load_spx, read_java_array, read_spx_info
from tpx3lib.errors import ConfigError
from tpx3lib.spidr import OperationMode, Polarity

# shared/fixtures/README.md: DAC codes 1..18
FIXTURE_DACS = [128, 8, 128, 20, 128, 150, 6, 128, 8, 128, 8, 150, 128, 128, 128, 256, 128, 128]


@pytest.fixture(scope="module")
def spx_path(data_dir):
    return data_dir / "W0028_H06_50V.spx"


@pytest.fixture(scope="module")
def cfg(spx_path):
    return load_spx(spx_path)


def test_dacs_are_the_documented_values(cfg):
    assert list(cfg.dacs.values()) == FIXTURE_DACS
    assert [c for c, _ in cfg.dac_codes()] == list(range(1, 19))


def test_pixel_matrices_as_documented(cfg):
    assert cfg.mask.shape == cfg.threshold.shape == cfg.test.shape == (256, 256)
    assert cfg.mask.dtype == bool and int(cfg.mask.sum()) == 160
    assert cfg.test.all()                       # the test array is all 1 (pymepix loses these bits)
    assert cfg.threshold.min() == 0 and cfg.threshold.max() == 15
    assert set(np.unique(cfg.threshold)) == set(range(16))


def test_metadata(cfg, spx_path):
    assert cfg.name == "W0028_H06"
    assert cfg.bias_voltage == 50.0
    assert cfg.general.polarity is Polarity.POSITIVE
    assert cfg.general.operation_mode is OperationMode.TOA_TOT
    info = read_spx_info(spx_path)
    assert info["chips"] == [0]
    assert info["chip_ids"][0] == 0x1C68  # = W0028_H06 by the device-name formula


def _raw_arrays(spx_path):
    """The three pixel arrays straight from the archive, decoded by hand (big-endian int16 after 27 bytes)."""
    z = zipfile.ZipFile(spx_path)
    names = {n.split("_")[0]: n for n in z.namelist()}
    mask = np.frombuffer(z.read(names["4"])[27:], ">i2")
    test = np.frombuffer(z.read(names["5"])[27:], ">i2")
    thr = np.frombuffer(z.read(names["6"])[27:], ">i2")
    return mask, test, thr


def test_orientation_element_k_is_x_k_mod_256_y_k_div_256(cfg, spx_path):
    mask, _, thr = _raw_arrays(spx_path)
    for k in (0, 1, 255, 256, 257, 40000, 65535):
        x, y = k % 256, k // 256
        assert cfg.threshold[x, y] == thr[k]
        assert cfg.mask[x, y] == (mask[k] == 0)  # file: 1 = pixel enabled
    # masked pixels of the file, listed as element numbers, land where the formula says
    k_masked = np.flatnonzero(mask == 0)
    xs, ys = np.nonzero(cfg.mask)
    assert sorted(zip(xs.tolist(), ys.tolist())) == sorted(zip((k_masked % 256).tolist(), (k_masked // 256).tolist()))


def test_column_parity_evidence_for_x(cfg):
    """Why x is the fast index: the two columns of a double column are mirrored, so equalised thresholds
    differ between even and odd x, while rows show no parity effect."""
    t = np.where(cfg.mask, np.nan, cfg.threshold.astype(float))
    even_x, odd_x = np.nanmean(t[0::2, :]), np.nanmean(t[1::2, :])
    even_y, odd_y = np.nanmean(t[:, 0::2]), np.nanmean(t[:, 1::2])
    assert odd_x - even_x > 0.3
    assert abs(odd_y - even_y) < 0.15


def test_thresholds_are_plain_numbers_not_bit_reversed(cfg):
    """An equalisation gives a bell around mid-range; the stored values show it, their bit-reversal would not."""
    counts = np.bincount(cfg.threshold[~cfg.mask].ravel(), minlength=16)
    assert counts.argmax() in (7, 8)
    rev = np.array([int(f"{i:04b}"[::-1], 2) for i in range(16)])
    rev_counts = np.bincount(rev[cfg.threshold[~cfg.mask].ravel()], minlength=16)
    assert rev_counts.argmax() not in (6, 7, 8, 9)


def test_load_config_dispatches_on_suffix(spx_path, tmp_path):
    assert load_config(spx_path).dacs["Vthreshold_fine"] == 150
    with pytest.raises(ConfigError, match=r"unknown configuration file type '\.txt'"):
        load_config(tmp_path / "x.txt")


def test_missing_chip(spx_path):
    with pytest.raises(ConfigError, match=r"has no chip 1 \(chips in the file: \[0\]\)"):
        load_spx(spx_path, chip=1)


def _rewrite(spx_path, tmp_path, name="bad.spx", drop=None, replace=None):
    out = tmp_path / name
    with zipfile.ZipFile(spx_path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            if drop and drop(item):
                continue
            data = src.read(item)
            if replace:
                data = replace(item, data)
            dst.writestr(item, data)
    return out


def test_invalid_files_name_the_file_and_problem(spx_path, tmp_path):
    not_zip = tmp_path / "plain.spx"
    not_zip.write_bytes(b"hello")
    with pytest.raises(ConfigError, match=r"plain\.spx: not a SoPhy \.spx file \(not a ZIP archive\)"):
        load_spx(not_zip)
    with pytest.raises(ConfigError, match="no such file"):
        load_spx(tmp_path / "nope.spx")
    no_xml = _rewrite(spx_path, tmp_path, "noxml.spx", drop=lambda n: n == "__data.xml")
    with pytest.raises(ConfigError, match=r"noxml\.spx: .*no __data\.xml"):
        load_spx(no_xml)
    no_thr = _rewrite(spx_path, tmp_path, "nothr.spx", drop=lambda n: n.startswith("6_"))
    with pytest.raises(ConfigError, match=r"nothr\.spx: __data\.xml names 6_.* the archive lacks it"):
        load_spx(no_thr)
    truncated = _rewrite(spx_path, tmp_path, "trunc.spx",
                         replace=lambda n, d: d[:-10] if n.startswith("4_") else d)
    with pytest.raises(ConfigError, match=r"trunc\.spx: 4_.*65536 elements"):
        load_spx(truncated)
    bad_xml = _rewrite(spx_path, tmp_path, "badxml.spx",
                       replace=lambda n, d: d[:500] if n == "__data.xml" else d)
    with pytest.raises(ConfigError, match=r"badxml\.spx: __data\.xml is not valid XML"):
        load_spx(bad_xml)
    bad_dac = _rewrite(spx_path, tmp_path, "baddac.spx",
                       replace=lambda n, d: d.replace(b'value="150"', b'value="999"') if n == "__data.xml" else d)
    with pytest.raises(ConfigError, match=r"baddac\.spx: Vthreshold_fine = 999 is out of range"):
        load_spx(bad_dac)


def test_threshold_out_of_range_is_rejected(spx_path, tmp_path):
    def poke(name, data):
        if name.startswith("6_"):
            data = bytearray(data)
            data[27:29] = struct.pack(">h", 16)
        return bytes(data)
    bad = _rewrite(spx_path, tmp_path, "thr16.spx", replace=poke)
    with pytest.raises(ConfigError, match=r"thr16\.spx: thlAdj values span 0\.\.16, expected 0\.\.15"):
        load_spx(bad)


def test_java_array_parser_hand_made():
    # short[] {1, -2, 300}: magic, TC_ARRAY, TC_CLASSDESC, "[S", uid, flags 2, 0 fields, end, null, count 3
    blob = (b"\xac\xed\x00\x05\x75\x72\x00\x02[S" + bytes(8) + b"\x02\x00\x00\x78\x70"
            + struct.pack(">i", 3) + struct.pack(">3h", 1, -2, 300))
    assert list(read_java_array(blob)) == [1, -2, 300]
    with pytest.raises(ConfigError, match="magic"):
        read_java_array(b"PK" + blob[2:])
    with pytest.raises(ConfigError, match="3 elements"):
        read_java_array(blob[:-1])
    with pytest.raises(ConfigError, match="not a supported"):
        read_java_array(blob.replace(b"[S", b"[Z"))

