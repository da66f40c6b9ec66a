"""Chip configuration as data: :class:`ChipConfig`, YAML files and SoPhy .spx files.

    from tpx3lib.config import load_config, save_yaml
    cfg = load_config("W0028_H06_50V.spx")      # or a .yaml written by save_yaml
    cfg.dacs["Vthreshold_fine"], cfg.mask.sum()  # matrices are [x, y]
    save_yaml(cfg, "chip0.yaml")
"""
from __future__ import annotations

from pathlib import Path

from tpx3lib.errors import ConfigError

from .chip_config import ChipConfig
from .sophy import SpxInfo, load_spx, read_java_array, read_spx_info
from .yaml_format import config_from_dict, config_to_dict, load_yaml, save_yaml

__all__ = [
    "ChipConfig", "load_config", "save_config", "load_yaml", "save_yaml", "load_spx", "read_spx_info",
    "SpxInfo", "read_java_array", "config_to_dict", "config_from_dict",
]


def load_config(path, chip: int = 0) -> ChipConfig:
    """Load a chip configuration by file type: ``.spx`` (SoPhy) or ``.yaml``/``.yml``.

    ``chip`` selects the chip in a multi-chip .spx file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".spx":
        return load_spx(p, chip)
    if suffix in (".yaml", ".yml"):
        return load_yaml(p)
    raise ConfigError(f"{p}: unknown configuration file type {p.suffix!r} (expected .spx, .yaml or .yml)")


def save_config(config: ChipConfig, path) -> Path:
    """Save a configuration; only YAML can be written."""
    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"{p}: configurations are saved as YAML (.yaml or .yml)")
    return save_yaml(config, p)
