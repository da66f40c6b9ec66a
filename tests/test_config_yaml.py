"""Chip configuration as data: the dataclass, the YAML format (hand-written files) and round trips."""
from __future__ import annotations

import numpy as np
import pytest

from tpx3lib.config import ChipConfig, load_config, load_spx, save_config, save_yaml
from tpx3lib.errors import ConfigError
from tpx3lib.spidr import OperationMode, Polarity

HAND_WRITTEN = """\
format: tpx3lib.chip-config
version: 1
name: W0028_H06
dacs:
  Vthreshold_fine: 150
  Ibias_Ikrum: 20
general:
  polarity: negative
  operation_mode: event_itot
  gray_counter: false
pixels:
  mask: {fill: 0, value: 1, pixels: [[3, 250], [255, 0]]}
  threshold: 7
  test: 1
"""


def test_defaults_are_the_common_dacs_and_a_clear_matrix():
    c = ChipConfig()
    assert list(c.dacs.values()) == [128, 8, 128, 5, 128, 420, 6, 84, 8, 128, 8, 192, 128, 128, 128, 256, 128, 128]
    assert c.n_masked == 0 and c.threshold.max() == 0 and not c.test.any()
    assert c.pll_config == 0x11E
    assert c.general.to_word() == 0x8 | 0x40  # positive, ToA+ToT, gray counter, superpixel


def test_hand_written_yaml(tmp_path):
    p = tmp_path / "chip.yaml"
    p.write_text(HAND_WRITTEN)
    c = load_config(p)
    assert c.name == "W0028_H06"
    assert c.dacs["Vthreshold_fine"] == 150 and c.dacs["Ibias_Ikrum"] == 20
    assert c.dacs["Vfbk"] == 128  # not given: common default
    assert c.general.polarity is Polarity.NEGATIVE and c.general.operation_mode is OperationMode.EVENT_ITOT
    assert not c.general.gray_counter and c.general.superpixel
    assert c.n_masked == 2 and c.mask[3, 250] and c.mask[255, 0]
    assert (c.threshold == 7).all() and c.test.all()


def test_dense_form_is_one_string_per_column(tmp_path):
    cols = ["0" * 256] * 256
    cols[5] = "f" + "0" * 254 + "a"  # pixel (5, 0) = 15, pixel (5, 255) = 10
    p = tmp_path / "dense.yaml"
    p.write_text("format: tpx3lib.chip-config\nversion: 1\npixels:\n  threshold:\n"
                 + "".join(f"  - '{c}'\n" for c in cols))
    c = load_config(p)
    assert c.threshold[5, 0] == 15 and c.threshold[5, 255] == 10 and c.threshold.sum() == 25


def test_round_trip_of_the_spx_fixture(data_dir, tmp_path):
    original = load_spx(data_dir / "W0028_H06_50V.spx")
    path = save_config(original, tmp_path / "w28.yaml")
    back = load_config(path)
    assert back == original
    assert np.array_equal(back.threshold, original.threshold) and back.n_masked == 160 and back.test.all()
    assert back.bias_voltage == 50.0 and back.name == "W0028_H06"
    # saving again gives the same text
    save_yaml(back, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == path.read_text()


def test_round_trip_random_matrices(tmp_path):
    rng = np.random.default_rng(7)
    c = ChipConfig(mask=rng.random((256, 256)) < 0.2, threshold=rng.integers(0, 16, (256, 256)),
                   test=rng.random((256, 256)) < 0.5, pll_config=0x1F, dacs={"VTP_fine": 511})
    c.polarity = "negative"
    back = load_config(save_config(c, tmp_path / "r.yml"))
    assert back == c


@pytest.mark.parametrize("text, problem", [
    ("- just\n- a list\n", "not a YAML mapping"),
    ("format: other\n", "format is 'other'"),
    ("version: 2\n", "version 2 is not supported"),
    ("colour: blue\n", r"unknown top-level keys \['colour'\]"),
    ("dacs: {Vthreshold_fine: 600}\n", r"Vthreshold_fine = 600 is out of range \[0, 511\]"),
    ("dacs: {Vthresh_fine: 6}\n", "unknown DAC 'Vthresh_fine'"),
    ("general: {polarity: up}\n", "polarity must be one of"),
    ("general: {speed: 3}\n", r"general: unknown keys \['speed'\]"),
    ("pixels: {threshold: 16}\n", r"pixels.threshold = 16 is outside \[0, 15\]"),
    ("pixels: {mask: {fill: 0, pixels: [[256, 1]]}}\n", r"pixels.mask.pixels\[0\] must be \[x, y\]"),
    ("pixels: {test: ['00']}\n", "must list 256 columns"),
    ("pixels: {colour: 1}\n", "pixels must be a mapping with keys"),
    ("dacs: [1, 2]\n", "dacs must be a mapping"),
    ("a: [unclosed\n", "not valid YAML"),
])
def test_invalid_yaml_names_file_and_problem(tmp_path, text, problem):
    p = tmp_path / "broken.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"broken\.yaml: .*" + problem):
        load_config(p)


def test_missing_file_and_unsaveable_suffix(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="saved as YAML"):
        save_config(ChipConfig(), tmp_path / "x.spx")


def test_dataclass_validation_and_conveniences():
    with pytest.raises(ConfigError, match="shape"):
        ChipConfig(mask=np.zeros((256, 255), bool))
    with pytest.raises(ConfigError, match="threshold values"):
        ChipConfig(threshold=np.full((256, 256), 20))
    c = ChipConfig(threshold=3)  # a scalar fills the matrix
    assert (c.threshold == 3).all() and c.threshold.dtype == np.uint8
    c.operation_mode = "toa"
    assert c.general.operation_mode is OperationMode.TOA
    assert c.copy() == c and c.copy() is not c
    words = c.pixel_words()
    assert words.shape == (256, 256) and (words == 3 << 1).all()
