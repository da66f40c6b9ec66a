"""ClusterParams validation and derived quantities."""
from __future__ import annotations

import pytest

from tpx3lib.cluster import ClusterParams
from tpx3lib.dtypes import TOA_UNIT_NS
from tpx3lib.errors import ConfigError


@pytest.mark.parametrize("bad", [
    dict(radius=-1), dict(radius=17), dict(radius=1.5), dict(radius=True),
    dict(time_window_ns=-1.0), dict(time_window_ns=float("nan")), dict(time_window_ns=2e9),
    dict(min_size=0), dict(min_size=2.0), dict(tot_threshold_ns=-25), dict(tot_threshold_ns=70000),
    dict(reorder_window_s=-1e-3), dict(reorder_window_s=float("inf")), dict(method="kmeans"),
    dict(eps=0.0), dict(eps=-2.0), dict(min_samples=0), dict(tof_scale=0.0), dict(n_threads=0),
    dict(eps=2.0, method="dbscan", tof_scale=1.0),
])
def test_bad_parameters_raise_config_error(bad):
    with pytest.raises(ConfigError) as exc:
        ClusterParams(**bad)
    assert next(iter(bad)) in str(exc.value)


def test_from_dict_and_defaults():
    p = ClusterParams.from_dict({"radius": 2, "time_window_ns": 100.0})
    assert (p.radius, p.time_window_ns, p.min_size, p.tot_threshold_ns, p.method) == (2, 100.0, 1, 0, "components")
    assert ClusterParams.from_dict(p.to_dict()) == p
    with pytest.raises(ConfigError, match="unknown cluster parameter"):
        ClusterParams.from_dict({"radius": 1, "windw": 3})


def test_derived_units():
    p = ClusterParams()
    assert p.link_window_units() == 32768 and p.link_window_units() * TOA_UNIT_NS == 200.0
    assert p.link_radius() == 1
    q = ClusterParams.pymepix()
    assert (q.method, q.eps, q.min_samples, q.tof_scale) == ("dbscan", 2.0, 3, 1.7e7)
    assert q.link_radius() == 2
    # the search window bounds eps / tof_scale (117.6 ns)
    assert q.link_window_units() * TOA_UNIT_NS >= 2.0 / 1.7e7 * 1e9
    assert ClusterParams(reorder_window_s=1e-3).reorder_window_units() * TOA_UNIT_NS >= 1e6
