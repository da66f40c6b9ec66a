"""The physics of the simulated detector and the hit generator.

:class:`PhysicsModel` holds the parameters (rates, triggers, time-of-flight peaks, charge
cloud, front end, noise, timewalk, heartbeats, FIFO disorder); :class:`ChipState` what the
board configures per chip (DACs, pixel mask, polarity, mode, bias); :class:`HitGenerator`
turns time slices of the board's timer into the 64-bit words each chip sends, with the
ground truth (:mod:`simulators.truth`). Formulas: docs/simulator-physics.md.

Time units: the board timer ticks at 40 MHz (25 ns); generated times are integers in
25/4096 ns (``UNITS_PER_TICK`` = 4096 per tick), as in :mod:`tpx3lib.dtypes`.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from typing import Callable, Sequence

import numpy as np

from tpx3lib.dtypes import TDC_DTYPE, HEARTBEAT_DTYPE
from tpx3lib.errors import ConfigError

from . import encode as E
from . import kernels as K
from .truth import CLUSTER_TRUTH_DTYPE, HIT_TRUTH_DTYPE, GeneratedSlice, Truth

__all__ = [
    "DAC_NAMES", "DAC_CODES", "DAC_RANGES", "DAC_DEFAULTS", "UNITS_PER_TICK", "TICKS_PER_SECOND",
    "TofPeak", "DEFAULT_TOF_PEAKS", "PhysicsModel", "ChipState", "HitGenerator", "warm_up",
]

UNITS_PER_TICK = 4096
TICKS_PER_SECOND = 40_000_000
UNITS_PER_SECOND = UNITS_PER_TICK * TICKS_PER_SECOND

#: Timepix3 DAC names by code 1..18 (spec section 2), their ranges and common defaults.
DAC_NAMES = (
    "Ibias_Preamp_ON", "Ibias_Preamp_OFF", "VPreamp_NCAS", "Ibias_Ikrum", "Vfbk",
    "Vthreshold_fine", "Vthreshold_coarse", "Ibias_DiscS1_ON", "Ibias_DiscS1_OFF",
    "Ibias_DiscS2_ON", "Ibias_DiscS2_OFF", "Ibias_PixelDAC", "Ibias_TPbufferIn",
    "Ibias_TPbufferOut", "VTP_coarse", "VTP_fine", "Ibias_CP_PLL", "PLL_Vcntrl",
)
DAC_CODES = {name: code for code, name in enumerate(DAC_NAMES, start=1)}
DAC_RANGES = dict(zip(DAC_NAMES, (255, 15, 255, 255, 255, 511, 15, 255, 15, 255, 15, 255, 255, 255,
                                  255, 511, 255, 255)))
DAC_DEFAULTS = dict(zip(DAC_NAMES, (128, 8, 128, 5, 128, 420, 6, 84, 8, 128, 8, 192, 128, 128, 128,
                                    256, 128, 128)))

#: TDC edge kind -> (input 1/2, rising 1/0)
_EDGE_KIND = {E.TDC1_RISING: (1, 1), E.TDC1_FALLING: (1, 0), E.TDC2_RISING: (2, 1), E.TDC2_FALLING: (2, 0)}


@dataclasses.dataclass(frozen=True)
class TofPeak:
    """One time-of-flight peak after each TDC1 rising edge (e.g. one ion species).

    Arrival time after the trigger ~ N(tof_s, sigma_s); position a 2-D Gaussian spot of rms
    ``spot_sigma_px`` around ``center`` or, with ``ring_radius_px`` > 0, a ring of that radius
    and rms width ``spot_sigma_px`` (velocity-map imaging). ``weight`` is its share of the
    triggered clusters.
    """

    tof_s: float
    sigma_s: float
    weight: float = 1.0
    center: tuple[float, float] = (128.0, 128.0)
    spot_sigma_px: float = 20.0
    ring_radius_px: float = 0.0


#: Ion-imaging-like default: four species, one imaged as a ring.
DEFAULT_TOF_PEAKS = (
    TofPeak(100e-6, 2e-6, 0.4, (80.0, 80.0), 15.0),
    TofPeak(250e-6, 3e-6, 0.3, (128.0, 128.0), 4.0, ring_radius_px=60.0),
    TofPeak(400e-6, 4e-6, 0.2, (180.0, 170.0), 20.0),
    TofPeak(790e-6, 5e-6, 0.1, (85.0, 97.0), 10.0),
)


@dataclasses.dataclass
class PhysicsModel:
    """Parameters of the simulated detector. Rates are per chip. Times in seconds unless named."""

    # --- particles
    hit_rate_hz: float = 10_000.0         #: particle impacts (clusters) per second per chip
    tof_fraction: float = 0.8             #: share of clusters in ToF peaks (rest: flat in time)
    tof_peaks: tuple[TofPeak, ...] = DEFAULT_TOF_PEAKS
    # --- triggers (TDC1: periodic, like European XFEL trains; TDC2: Poisson)
    trigger_rate_hz: float = 10.0         #: TDC1 rising edges per second (0 = none)
    trigger_offset_s: float = 1e-3        #: first trigger this long after generation starts
    trigger_width_s: float = 10e-6        #: rising -> falling edge
    trigger_jitter_s: float = 0.0         #: rms jitter of trigger times
    tdc_latency_s: float = 0.5e-6         #: TDC words enter the stream this late (hits near a trigger
                                          #: can come before its word)
    tdc_chips: tuple[int, ...] | None = None  #: chips whose TDC input is cabled (None = all)
    injected_trigger_rate_hz: float = 10.0  #: expected rate of HitGenerator.inject_trigger calls when
                                            #: trigger_rate_hz is 0 (sets the ToF clusters per trigger)
    tdc2_rate_hz: float = 0.0             #: TDC2 rising edges per second (Poisson)
    tdc2_width_s: float = 5e-6
    # --- charge cloud
    charge_mpv_e: float = 8000.0          #: most probable deposited charge (Moyal/Landau-like)
    charge_width_e: float = 1000.0
    charge_max_e: float = 200_000.0
    cloud_sigma_px: float = 0.6           #: median rms of the charge cloud at nominal bias
    cloud_sigma_spread: float = 0.3       #: lognormal spread of the cloud rms
    max_cluster_radius_px: int = 4        #: box half-width searched for fired pixels (<= 8)
    nominal_bias_v: float = 50.0          #: cloud rms scales as sqrt(nominal / bias)
    full_depletion_v: float = 30.0        #: collected charge x min(1, sqrt(bias / full_depletion))
    sensor_polarity: int = 0              #: 0 holes (needs GENCONFIG polarity 0), 1 electrons
    # --- front end
    noise_e: float = 70.0                 #: electronic noise (ENC) rms, electrons
    threshold_baseline_dac: float = 1450.0  #: 160*coarse + fine at the preamplifier's baseline (0 e);
                                            #: hole collection thresholds lie below it, electrons above
    electrons_per_dac: float = 10.0       #: threshold electrons per fine DAC step (0.5 mV)
    threshold_dispersion_e: float = 35.0  #: pixel-to-pixel threshold rms after equalisation
    tot_a: float = 5.0                    #: ToT counts per ke
    tot_b: float = 10.0                   #: ToT offset, counts
    tot_c: float = 4.0                    #: ToT curvature, counts*ke
    tot_d_ke: float = 0.4                 #: asymptote below threshold, ke
    walk_a_ns2: float = 5000.0            #: timewalk_ns = walk_a / (ToT_ns + walk_b)
    walk_b_ns: float = 50.0
    time_jitter_ns: float = 0.5           #: rms of the hit time around cluster time + timewalk
    # --- noise hits (Rice: rate = f0 * exp(-thr^2 / 2 noise^2) per pixel)
    noise_f0_hz: float = 1e6
    max_pixel_rate_hz: float = 2e5        #: a noisy pixel cannot fire faster than its dead time allows
    max_noise_rate_hz: float = 80e6       #: readout limit of the chip
    hot_pixel_fraction: float = 2e-4      #: pixels with a lower threshold (typical hot pixels)
    hot_pixel_offset_e: float = -200.0    #: their threshold offset (they fire first as it is lowered)
    # --- stream
    heartbeat_period_s: float = 1.0       #: 0x44/0x45 heartbeat period (0 = none); first at start
    disorder_fraction: float = 0.25       #: target share of consecutive hits that go back in time
    disorder_depth: int = 10_000          #: a hit is delayed by at most this many words ...
    disorder_window_s: float = 100e-6     #: ... and never behind words more than this much later
    seed: int = 0

    def validate(self) -> None:
        """Raise ConfigError for values the generator cannot honour."""
        if self.hit_rate_hz < 0 or self.trigger_rate_hz < 0 or self.tdc2_rate_hz < 0:
            raise ConfigError("rates must be >= 0")
        if not 0.0 <= self.tof_fraction <= 1.0:
            raise ConfigError(f"tof_fraction must be in [0, 1], got {self.tof_fraction}")
        if not 0.0 <= self.disorder_fraction <= 0.5:
            raise ConfigError(f"disorder_fraction must be in [0, 0.5], got {self.disorder_fraction}")
        if not 1 <= self.max_cluster_radius_px <= 8:
            raise ConfigError("max_cluster_radius_px must be in 1..8")
        if self.trigger_rate_hz > 0 and self.trigger_width_s >= 1.0 / self.trigger_rate_hz:
            raise ConfigError("trigger_width_s must be shorter than the trigger period")
        if self.injected_trigger_rate_hz <= 0:
            raise ConfigError("injected_trigger_rate_hz must be > 0")
        if self.cloud_sigma_px <= 0 or self.noise_e <= 0:
            raise ConfigError("cloud_sigma_px and noise_e must be > 0")

    # Documented response functions, shared by the kernels' twins, the noise path and tests.
    def threshold_e(self, chip: "ChipState") -> float:
        """Global threshold in electrons from the threshold DACs and the front-end polarity.

        The DACs set the discriminator level V = 160*Vthreshold_coarse + Vthreshold_fine (in 0.5 mV
        fine steps; one coarse step is 80 mV). A signal moves the preamplifier output away from its
        baseline (``threshold_baseline_dac``): down for holes (GENCONFIG polarity 0, positive charge),
        up for electrons (polarity 1). So the threshold is
        ``(baseline - V) * electrons_per_dac`` for holes and ``(V - baseline) * electrons_per_dac``
        for electrons: a lower DAC setting is a *higher* threshold in hole collection. A level on the
        wrong side of the baseline is a negative threshold: the pixels fire on noise all the time.
        """
        above = chip.threshold_dac() - self.threshold_baseline_dac
        return (above if int(chip.polarity) & 1 else -above) * self.electrons_per_dac

    def tot_counts(self, charge_e, threshold_e):
        """ToT in 25 ns counts for pixel charge q above threshold thr (both electrons):
        round(a*q + b - c / (q - (thr - d))) with q, thr, c, d in ke; clamped to 1..1023."""
        q = np.asarray(charge_e, np.float64) * 1e-3
        thr = np.asarray(threshold_e, np.float64) * 1e-3
        tot = np.floor(self.tot_a * q + self.tot_b - self.tot_c / (q - (thr - self.tot_d_ke)) + 0.5)
        return np.clip(tot, 1, 1023).astype(np.int64)

    def timewalk_ns(self, tot_ns):
        """Mean delay of a hit's ToA behind the particle's arrival: walk_a / (ToT_ns + walk_b)."""
        return self.walk_a_ns2 / (np.asarray(tot_ns, np.float64) + self.walk_b_ns)

    def kernel_params(self) -> np.ndarray:
        p = np.zeros(K.N_PARAMS)
        p[K.P_NOISE_E] = self.noise_e
        p[K.P_TOT_A], p[K.P_TOT_B], p[K.P_TOT_C], p[K.P_TOT_D] = self.tot_a, self.tot_b, self.tot_c, self.tot_d_ke
        p[K.P_WALK_A], p[K.P_WALK_B], p[K.P_JITTER_NS] = self.walk_a_ns2, self.walk_b_ns, self.time_jitter_ns
        p[K.P_MAX_RADIUS] = self.max_cluster_radius_px
        return p

    def delay_probability(self) -> float:
        """Share of hits the disorder model delays to get ``disorder_fraction`` backward steps.

        A delayed hit lands among in-order hits: the step into it goes back in time, the step out
        goes forward; two delayed neighbours are in random order. So f = p(1-p) + p^2/2, p = 1 - sqrt(1-2f).
        """
        return 1.0 - math.sqrt(1.0 - 2.0 * self.disorder_fraction)


def _bool_plane(value=False):
    return np.full((256, 256), value, dtype=bool)


@dataclasses.dataclass
class ChipState:
    """What the board has configured on one chip. Arrays are indexed [x, y] (column, row)."""

    mask: np.ndarray = dataclasses.field(default_factory=_bool_plane)       #: True = masked (silent)
    trim: np.ndarray = dataclasses.field(default_factory=lambda: np.full((256, 256), 8, np.uint8))
    test: np.ndarray = dataclasses.field(default_factory=_bool_plane)       #: test-pulse bit (stored only)
    dacs: dict = dataclasses.field(default_factory=lambda: dict(DAC_DEFAULTS))
    polarity: int = 0            #: GENCONFIG bit 0: 0 positive (holes), 1 negative (electrons)
    operation_mode: int = 0      #: 0 ToA+ToT, 2 ToA only, 4 Event+iToT (GENCONFIG bits 2..1)
    bias_voltage: float = 50.0
    bias_enabled: bool = True
    enabled: bool = True         #: False: the chip sends nothing (links down / not read out)

    def threshold_dac(self) -> int:
        """Combined threshold DAC: 160 * Vthreshold_coarse + Vthreshold_fine (one coarse step is
        ~80 mV, one fine step ~0.5 mV)."""
        return 160 * int(self.dacs["Vthreshold_coarse"]) + int(self.dacs["Vthreshold_fine"])

    def apply_genconfig(self, genconfig: int) -> None:
        """Take polarity (bit 0) and operation mode (bits 2..1) from a GENCONFIG value (spec 2)."""
        self.polarity = int(genconfig) & 1
        self.operation_mode = int(genconfig) & 0x6

    def pixel_config_bits(self) -> np.ndarray:
        """The 6-bit pixel configuration [x, y]: mask bit 0 | threshold trim bits 1-4 | test bit 5."""
        return (self.mask.astype(np.uint8) | ((self.trim & 0xF) << 1) | (self.test.astype(np.uint8) << 5)).astype(np.uint8)

    def set_pixel_config_bits(self, bits, columns=None) -> None:
        """Set mask/trim/test from 6-bit values: ``bits`` [len(columns), 256] for the given columns
        (x indices; default all 256)."""
        bits = np.asarray(bits, np.uint8)
        cols = np.arange(256) if columns is None else np.asarray(columns, np.int64)
        bits = bits.reshape(len(cols), 256)
        self.mask[cols] = (bits & 1).astype(bool)
        self.trim[cols] = (bits >> 1) & 0xF
        self.test[cols] = ((bits >> 5) & 1).astype(bool)

    def copy(self) -> "ChipState":
        return dataclasses.replace(self, mask=self.mask.copy(), trim=self.trim.copy(), test=self.test.copy(),
                                   dacs=dict(self.dacs))


@dataclasses.dataclass
class _ChipDerived:
    """Per-chip arrays derived from a ChipState (cached until the state changes)."""

    key: tuple
    thr_e: np.ndarray          # [65536] float64, inf for masked pixels
    noisy_pixels: np.ndarray   # pixel indices (x*256+y) with a noise rate > 0
    noisy_rates: np.ndarray    # their noise rates, Hz
    noise_rate_hz: float
    signal_gain: float         # charge collection factor (0: no signal hits)
    sigma_scale: float         # cloud rms factor from bias


class HitGenerator:
    """Generates each chip's word stream and its truth, slice by slice of board time.

    ``chip_states``: a list of :class:`ChipState` (one per chip) or a callable
    ``chip_index -> ChipState`` (read at every slice, so DAC/mask changes take effect at once;
    give ``n_chips`` then, default 1). Consecutive calls ``generate(a, b)``, ``generate(b, c)``
    continue one stream (triggers, ToF arrivals and counters carry over); a call whose start is not
    the previous end (a timer reset or jump) restarts the schedules there (first heartbeat at the
    new start, first trigger ``trigger_offset_s`` later), keeping the trigger counters.
    ``threads`` > 1 runs the cluster kernel in that many threads (same output); call ``close()``
    when done to stop them.
    """

    def __init__(self, model: PhysicsModel | None = None,
                 chip_states: Sequence[ChipState] | Callable[[int], ChipState] | None = None,
                 n_chips: int | None = None, threads: int = 1):
        self.model = model if model is not None else PhysicsModel()
        self.threads = max(1, int(threads))
        self._executor = None
        self.model.validate()
        if chip_states is None:
            chip_states = [ChipState() for _ in range(n_chips or 1)]
        if callable(chip_states):
            self._get_state = chip_states
            self.n_chips = int(n_chips or 1)
        else:
            states = list(chip_states)
            if n_chips is not None and n_chips != len(states):
                raise ConfigError(f"n_chips={n_chips} but {len(states)} chip states given")
            self._get_state = states.__getitem__
            self.n_chips = len(states)
        if self.n_chips < 1:
            raise ConfigError("need at least one chip")
        self._rng = np.random.default_rng(self.model.seed)
        self._derived: dict[int, _ChipDerived] = {}
        self._static: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._counters = {1: 0, 2: 0}       # extended TDC counters (edges so far) per input
        self._next_cluster_id = 0
        self._expected_start: int | None = None
        self._injected: list[int] = []          # external trigger times (units), see inject_trigger
        self._inject_lock = threading.Lock()
        self._injecting = False
        self.reset_counters()

    # ------------------------------------------------------------ state
    def reset_counters(self) -> None:
        """Zero the TDC trigger counters (the first edge after this carries counter 1)."""
        self._counters = {1: 0, 2: 0}

    def restart(self, t_ticks: int) -> None:
        """Restart the schedules at ``t_ticks`` (what a discontinuous ``generate`` does)."""
        m = self.model
        u0 = int(t_ticks) * UNITS_PER_TICK
        self._expected_start = int(t_ticks)
        self._next_hb = int(t_ticks) if m.heartbeat_period_s > 0 else None
        self._next_trig = (u0 + int(round(m.trigger_offset_s * UNITS_PER_SECOND))
                           if m.trigger_rate_hz > 0 else None)
        self._next_tdc2 = (u0 + self._exp_units(m.tdc2_rate_hz)) if m.tdc2_rate_hz > 0 else None
        # created but not yet emitted TDC edges: list of (time_units, kind, counter)
        self._edges: list[tuple[int, int, int]] = []
        # TDC1 rising edges (decoded time, counter) that can still be "the latest before" a hit
        self._rising_t = np.empty(0, np.int64)
        self._rising_c = np.empty(0, np.int64)
        # triggered clusters waiting for their arrival time, per chip
        self._pool = [self._empty_pool() for _ in range(self.n_chips)]
        self._scheduled_until = u0

    @staticmethod
    def _empty_pool() -> dict:
        return {"t": np.empty(0, np.int64), "x": np.empty(0), "y": np.empty(0), "q": np.empty(0),
                "s": np.empty(0), "peak": np.empty(0, np.int16), "trig": np.empty(0, np.int64)}

    def inject_trigger(self, t_ticks: int) -> None:
        """Add an external TDC1 trigger (rising edge at ``t_ticks``, falling ``trigger_width_s``
        later), e.g. a train start from a timing system; it gets its counter and ToF clusters like
        a periodic one (set ``trigger_rate_hz=0`` to have only these). Thread-safe. Inject in time
        order and ahead of the generated time: a trigger already in the past is still sent, in the
        next slice, with its (past) time."""
        with self._inject_lock:
            self._injected.append(int(t_ticks) * UNITS_PER_TICK)
            self._injecting = True

    def chip_state(self, chip: int) -> ChipState:
        return self._get_state(chip)

    # ------------------------------------------------------------ derived per-chip arrays
    def _chip_static(self, chip: int):
        """Fixed per-chip randomness: threshold dispersion and hot pixels (seeded by model seed + chip)."""
        m = self.model
        key = (chip, m.seed, m.threshold_dispersion_e, m.hot_pixel_fraction, m.hot_pixel_offset_e)
        st = self._static.get(key)
        if st is None:
            r = np.random.default_rng([m.seed, chip, 7])
            disp = r.normal(0.0, m.threshold_dispersion_e, 65536)
            hot = r.random(65536) < m.hot_pixel_fraction
            disp[hot] += m.hot_pixel_offset_e
            st = (disp, hot)
            self._static[key] = st
        return st

    def derived(self, chip: int) -> _ChipDerived:
        """Per-pixel thresholds and noise rates for the chip's current state (cached)."""
        m = self.model
        cs = self.chip_state(chip)
        key = (cs.threshold_dac(), hash(np.asarray(cs.mask, bool).tobytes()), cs.polarity, cs.bias_enabled,
               float(cs.bias_voltage), m.noise_e, m.threshold_baseline_dac, m.electrons_per_dac,
               m.noise_f0_hz, m.max_pixel_rate_hz, m.max_noise_rate_hz, m.seed, m.threshold_dispersion_e,
               m.hot_pixel_fraction, m.hot_pixel_offset_e, m.sensor_polarity, m.full_depletion_v,
               m.nominal_bias_v)
        d = self._derived.get(chip)
        if d is not None and d.key == key:
            return d
        disp, _ = self._chip_static(chip)
        thr = m.threshold_e(cs) + disp
        z = np.maximum(thr, 0.0) / m.noise_e
        rate = np.minimum(m.noise_f0_hz * np.exp(-0.5 * z * z), m.max_pixel_rate_hz)
        masked = np.asarray(cs.mask, bool).reshape(65536)
        rate[masked] = 0.0
        total = float(rate.sum())
        if total > m.max_noise_rate_hz:      # the chip's readout saturates
            rate *= m.max_noise_rate_hz / total
            total = m.max_noise_rate_hz
        thr = thr.copy()
        thr[masked] = np.inf
        v = float(cs.bias_voltage) if cs.bias_enabled else 0.0
        gain = 0.0 if (cs.polarity != m.sensor_polarity or v <= 0) else min(1.0, math.sqrt(v / m.full_depletion_v))
        sig = math.sqrt(m.nominal_bias_v / max(v, 1.0))
        noisy = np.flatnonzero(rate > 0)
        d = _ChipDerived(key, thr, noisy, rate[noisy], total, gain, sig)
        self._derived[chip] = d
        return d

    def can_produce_hits(self) -> bool:
        """False when no enabled chip can ever fire (all masked, no signal and no noise, ...)."""
        for c in range(self.n_chips):
            cs = self.chip_state(c)
            if not cs.enabled or np.all(cs.mask):
                continue
            d = self.derived(c)
            if d.noise_rate_hz > 0 or (self.model.hit_rate_hz > 0 and d.signal_gain > 0):
                return True
        return False

    def expected_hit_rate_hz(self, mean_cluster_size: float = 4.0) -> float:
        """Rough pixel-hit rate of all chips (for sizing slices)."""
        r = 0.0
        for c in range(self.n_chips):
            if self.chip_state(c).enabled:
                r += self.model.hit_rate_hz * mean_cluster_size + self.derived(c).noise_rate_hz
        return r

    def slice_end(self, t_start_ticks: int, t_end_ticks: int, max_hits: float,
                  mean_cluster_size: float = 4.0) -> int:
        """The latest end in (start, end] such that ``generate(start, end)`` is expected to make at
        most ``max_hits`` pixel hits (all chips), so that one slice's generation time stays bounded
        even inside a time-of-flight burst. Always at least one tick past the start.

        Counts the triggered clusters already scheduled (it schedules up to ``t_end + 1 ms`` first,
        as ``generate`` would) plus the expected flat background and noise. The stream stays one
        continuous stream (triggers, counters and ToF clusters are scheduled exactly as by
        ``generate``), but random numbers are drawn in another order than without this call."""
        a, b = int(t_start_ticks), int(t_end_ticks)
        if b <= a + 1:
            return max(b, a + 1)
        if a != self._expected_start:
            self.restart(a)
        m = self.model
        B = b * UNITS_PER_TICK
        self._schedule(B + UNITS_PER_SECOND // 1000)
        rate = 0.0          # pixel hits per tick, spread evenly
        pools = []          # time-sorted arrival times of each chip's triggered clusters
        bg = m.hit_rate_hz * (1.0 - m.tof_fraction if self._triggered() else 1.0)
        for chip in range(self.n_chips):
            cs = self.chip_state(chip)
            if not cs.enabled:
                continue
            d = self.derived(chip)
            rate += (d.noise_rate_hz + (bg * mean_cluster_size if d.signal_gain > 0 else 0.0)) / TICKS_PER_SECOND
            if d.signal_gain > 0 and len(self._pool[chip]["t"]):
                pools.append(self._pool[chip]["t"])

        def expected(end: int) -> float:
            n_cl = sum(int(np.searchsorted(t, end * UNITS_PER_TICK, side="left")) for t in pools)
            return n_cl * mean_cluster_size + rate * (end - a)

        if expected(b) <= max_hits:
            return b
        lo, hi = a + 1, b          # expected(lo) may exceed max_hits: one tick is the least we can do
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if expected(mid) <= max_hits:
                lo = mid
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------ schedules
    def _exp_units(self, rate_hz: float) -> int:
        return max(1, int(self._rng.exponential(1.0 / rate_hz) * UNITS_PER_SECOND))

    def _schedule(self, until_units: int) -> None:
        """Create every TDC edge (with its counter) and every triggered cluster up to ``until_units``."""
        m = self.model
        new: list[tuple[int, int, int]] = []   # (time, kind, tdc)
        if self._next_trig is not None:
            period = UNITS_PER_SECOND / m.trigger_rate_hz
            width = int(round(m.trigger_width_s * UNITS_PER_SECOND))
            while self._next_trig < until_units:
                t = self._next_trig
                if m.trigger_jitter_s > 0:
                    t += int(self._rng.normal(0.0, m.trigger_jitter_s) * UNITS_PER_SECOND)
                new.append((t, E.TDC1_RISING, 1))
                new.append((t + width, E.TDC1_FALLING, 1))
                self._next_trig += int(round(period))
        if self._next_tdc2 is not None:
            width2 = int(round(m.tdc2_width_s * UNITS_PER_SECOND))
            while self._next_tdc2 < until_units:
                t = self._next_tdc2
                new.append((t, E.TDC2_RISING, 2))
                new.append((t + width2, E.TDC2_FALLING, 2))
                # the next rising edge comes after this falling edge
                self._next_tdc2 = t + width2 + self._exp_units(m.tdc2_rate_hz)
        with self._inject_lock:
            injected, self._injected = self._injected, []
        width = int(round(m.trigger_width_s * UNITS_PER_SECOND))
        for t in injected:
            new.append((t, E.TDC1_RISING, 1))
            new.append((t + width, E.TDC1_FALLING, 1))
        new.sort()
        for t, kind, tdc in new:
            self._counters[tdc] += 1
            cnt = self._counters[tdc]
            self._edges.append((t, kind, cnt))
            if kind == E.TDC1_RISING:
                dec = E.tdc_time_fields(t)[3]
                self._rising_t = np.append(self._rising_t, dec)
                self._rising_c = np.append(self._rising_c, cnt)
                self._add_tof_clusters(t, cnt)
        self._edges.sort()
        self._scheduled_until = until_units

    def _triggered(self) -> bool:
        """True when clusters are shared between ToF peaks and the flat background."""
        return bool(self.model.tof_peaks) and (self.model.trigger_rate_hz > 0 or self._injecting)

    def _add_tof_clusters(self, t_trig: int, counter: int) -> None:
        m = self.model
        if not self._triggered() or m.tof_fraction <= 0:
            return
        rate = m.trigger_rate_hz if m.trigger_rate_hz > 0 else m.injected_trigger_rate_hz
        per_trigger = m.hit_rate_hz * m.tof_fraction / rate
        weights = np.array([p.weight for p in m.tof_peaks], float)
        weights = weights / weights.sum()
        for chip in range(self.n_chips):
            counts = self._rng.poisson(per_trigger * weights)
            n = int(counts.sum())
            if n == 0:
                continue
            peak = np.repeat(np.arange(len(m.tof_peaks), dtype=np.int16), counts)
            tof = np.concatenate([self._rng.normal(p.tof_s, p.sigma_s, c) for p, c in zip(m.tof_peaks, counts)])
            x = np.empty(n)
            y = np.empty(n)
            s = 0
            for p, c in zip(m.tof_peaks, counts):
                if p.ring_radius_px > 0:
                    ang = self._rng.uniform(0, 2 * math.pi, c)
                    rad = self._rng.normal(p.ring_radius_px, p.spot_sigma_px, c)
                    x[s:s + c] = p.center[0] + rad * np.cos(ang)
                    y[s:s + c] = p.center[1] + rad * np.sin(ang)
                else:
                    x[s:s + c] = self._rng.normal(p.center[0], p.spot_sigma_px, c)
                    y[s:s + c] = self._rng.normal(p.center[1], p.spot_sigma_px, c)
                s += c
            q, sig = self._draw_charge(n)
            t = t_trig + np.maximum(tof, 0.0) * UNITS_PER_SECOND
            self._pool_add(chip, t.astype(np.int64), x, y, q, sig, peak, np.full(n, counter, np.int64))

    def _pool_add(self, chip, t, x, y, q, s, peak, trig):
        """Add triggered clusters to the chip's pool, which stays sorted by arrival time (so that
        taking a slice's clusters, and sizing slices, is a binary search, not a pass over the pool)."""
        p = self._pool[chip]
        for k, v in (("t", t), ("x", np.clip(x, 0.0, 255.999)), ("y", np.clip(y, 0.0, 255.999)),
                     ("q", q), ("s", s), ("peak", peak), ("trig", trig)):
            p[k] = np.concatenate([p[k], v])
        order = np.argsort(p["t"], kind="stable")
        for k in p:
            p[k] = p[k][order]

    def _draw_charge(self, n: int):
        """Deposited charge (Moyal = Landau-like: mpv + width * -ln(N^2)) and cloud rms (lognormal)."""
        m = self.model
        z = self._rng.standard_normal(n)
        q = m.charge_mpv_e + m.charge_width_e * -np.log(np.maximum(z * z, 1e-300))
        q = np.clip(q, 0.1 * m.charge_mpv_e, m.charge_max_e)
        s = m.cloud_sigma_px * np.exp(self._rng.normal(0.0, m.cloud_sigma_spread, n))
        return q, s

    # ------------------------------------------------------------ main entry
    def generate(self, t_start_ticks: int, t_end_ticks: int) -> GeneratedSlice:
        """Words per chip and truth for board times [t_start_ticks, t_end_ticks) (25 ns ticks)."""
        a, b = int(t_start_ticks), int(t_end_ticks)
        if b < a:
            raise ValueError(f"slice end {b} before start {a}")
        if a != self._expected_start:
            self.restart(a)
        self._expected_start = b
        m = self.model
        A, B = a * UNITS_PER_TICK, b * UNITS_PER_TICK
        # Schedule ahead so that hits pushed past B by timewalk still see every trigger before them.
        self._schedule(B + UNITS_PER_SECOND // 1000)
        # TDC edges of this slice
        n_edges = 0
        while n_edges < len(self._edges) and self._edges[n_edges][0] < B:
            n_edges += 1
        edges, self._edges = self._edges[:n_edges], self._edges[n_edges:]
        # heartbeats of this slice
        hbs = []
        if self._next_hb is not None:
            period = max(1, int(round(m.heartbeat_period_s * TICKS_PER_SECOND)))
            while self._next_hb < b:
                hbs.append(self._next_hb)
                self._next_hb += period
        tdc_chips = set(range(self.n_chips)) if m.tdc_chips is None else set(m.tdc_chips)

        words, hits, clusters, trigs, beats = [], [], [], [], []
        for chip in range(self.n_chips):
            cs = self.chip_state(chip)
            if not cs.enabled:
                words.append(np.empty(0, np.uint64))
                self._pool_take(chip, B)       # their time has passed
                continue
            w, h, cl, tr, hb = self._generate_chip(chip, cs, A, B, edges if chip in tdc_chips else [], hbs)
            words.append(w)
            hits.append(h)
            clusters.append(cl)
            trigs.append(tr)
            beats.append(hb)
        # forget rising edges that can no longer be the latest one before a hit
        if len(self._rising_t) > 1:
            # keep one spare: a hit's jitter can put it a hair before the slice start
            keep = max(0, int(np.searchsorted(self._rising_t, B, side="right")) - 2)
            self._rising_t, self._rising_c = self._rising_t[keep:], self._rising_c[keep:]
        truth = Truth.concat([Truth(h, cl, tr, hb) for h, cl, tr, hb in zip(hits, clusters, trigs, beats)])
        return GeneratedSlice(words, truth, a, b)

    def _pool_take(self, chip: int, B: int) -> dict:
        """Remove and return the pooled clusters arriving before ``B`` (the pool is time-sorted)."""
        p = self._pool[chip]
        n = int(np.searchsorted(p["t"], B, side="left"))
        out = {k: v[:n] for k, v in p.items()}
        self._pool[chip] = {k: v[n:] for k, v in p.items()}
        return out

    def _event_of(self, t: np.ndarray) -> np.ndarray:
        if len(self._rising_t) == 0:
            return np.full(len(t), -1, np.int64)
        i = np.searchsorted(self._rising_t, t, side="right") - 1
        return np.where(i >= 0, self._rising_c[np.maximum(i, 0)], -1)

    def _generate_chip(self, chip, cs, A, B, edges, hbs):
        m = self.model
        rng = self._rng
        d = self.derived(chip)
        dt_s = (B - A) / UNITS_PER_SECOND
        # ---- particles: triggered clusters that arrive now + flat background
        trig = self._pool_take(chip, B)
        bg_rate = m.hit_rate_hz * (1.0 - m.tof_fraction if self._triggered() else 1.0)
        nbg = int(rng.poisson(bg_rate * dt_s)) if bg_rate > 0 else 0
        q, s = self._draw_charge(nbg)
        ntr = len(trig["t"])
        # ---- noise hits, as entries of the same list (sigma 0: one pixel with a given charge)
        if d.noise_rate_hz > 0:
            pix = np.repeat(d.noisy_pixels, rng.poisson(d.noisy_rates * dt_s))
        else:
            pix = np.empty(0, np.int64)
        nn = len(pix)
        thr_n = d.thr_e[pix]
        # charge of a noise excursion above threshold: thr + Exp(noise^2 / thr) (Gaussian tail)
        qn = thr_n + rng.exponential(m.noise_e ** 2 / np.maximum(thr_n, m.noise_e))
        gain = d.signal_gain
        ncl = ntr + nbg if gain > 0 else 0
        ent_t = np.concatenate([trig["t"], rng.integers(A, max(B, A + 1), nbg), rng.integers(A, max(B, A + 1), nn)])
        ent_x = np.concatenate([trig["x"], rng.uniform(0, 256, nbg), (pix >> 8) + 0.5])
        ent_y = np.concatenate([trig["y"], rng.uniform(0, 256, nbg), (pix & 255) + 0.5])
        ent_q = np.concatenate([trig["q"] * gain, q * gain, qn])
        ent_s = np.concatenate([trig["s"] * d.sigma_scale, s * d.sigma_scale, np.zeros(nn)])
        peak = np.concatenate([trig["peak"], np.full(nbg, -1, np.int16)])
        trig_c = np.concatenate([trig["trig"], np.full(nbg, -1, np.int64)])
        if gain <= 0:       # no signal charge: particles leave no hits (and no truth clusters)
            keep = slice(ntr + nbg, None)
            ent_t, ent_x, ent_y, ent_q, ent_s = (v[keep] for v in (ent_t, ent_x, ent_y, ent_q, ent_s))
            peak, trig_c = peak[:0], trig_c[:0]
        is_cl = np.zeros(len(ent_t), bool)
        is_cl[:ncl] = True
        order = np.argsort(ent_t, kind="stable")
        ent_t, ent_x, ent_y, ent_q, ent_s, is_cl = (v[order] for v in (ent_t, ent_x, ent_y, ent_q, ent_s, is_cl))
        # cluster ids in time order; noise entries map to -1
        id0 = self._next_cluster_id
        self._next_cluster_id += ncl
        cid = np.full(len(ent_t), -1, np.int64)
        cid[is_cl] = np.arange(id0, id0 + ncl)
        size = np.zeros(len(ent_t), np.uint16)
        hx, hy, htot, ht, hent = self._expand(d, ent_x, ent_y, ent_q, ent_s, ent_t, size)
        # ---- anchors: TDC edges and heartbeats, in stream order
        lat = int(round(m.tdc_latency_s * UNITS_PER_SECOND))
        na = len(edges) + len(hbs)
        anc_keys = np.empty(na, np.int64)
        anc_wcount = np.empty(na, np.int64)
        anc_words = []
        trig_rows = np.zeros(len(edges), TDC_DTYPE)
        for i, (te, kind, cnt) in enumerate(edges):
            coarse, step, fine, dec = E.tdc_time_fields(te)
            anc_keys[i] = te + lat
            anc_wcount[i] = 1
            anc_words.append(E.encode_tdc(kind, cnt & 0xFFF, coarse & 0xFFFFFFFF, step, fine))
            tdc, rising = _EDGE_KIND[kind]
            trig_rows[i] = (kind, tdc, rising, chip, cnt, dec)
        for j, tick in enumerate(hbs):
            anc_keys[len(edges) + j] = tick * UNITS_PER_TICK
            anc_wcount[len(edges) + j] = 4
            anc_words.extend(E.heartbeat_words(tick))
        hb_rows = np.zeros(len(hbs), HEARTBEAT_DTYPE)
        hb_rows["chip"] = chip
        hb_rows["timer"] = hbs
        # Edges are time-ordered with a uniform latency, so the stable sort keeps their order
        # (trig_rows stay in stream order); heartbeats interleave.
        aorder = np.argsort(anc_keys, kind="stable")
        wstart = (np.concatenate([[0], np.cumsum(anc_wcount)[:-1]]).astype(np.int64) if na
                  else np.empty(0, np.int64))
        anc_keys, anc_wstart, anc_wcount = anc_keys[aorder], wstart[aorder], anc_wcount[aorder]
        anc_words = np.array(anc_words, dtype=np.uint64)
        # ---- FIFO disorder: a share p of hits is delayed (see delay_probability)
        nh = len(hx)
        p = m.delay_probability()
        delay = np.full(nh, -1.0)
        if p > 0 and nh > 1:
            dl = rng.random(nh) < p
            delay[dl] = rng.random(int(dl.sum()))
        window = int(round(m.disorder_window_s * UNITS_PER_SECOND))
        mode = int(cs.operation_mode)
        words, hit_order, toa, ftoa = K.finish_stream(hx, hy, htot, ht, mode, anc_keys, anc_wstart, anc_wcount,
                                                      anc_words, delay, window, m.disorder_depth)
        # ---- truth
        hits = np.empty(nh, HIT_TRUTH_DTYPE)
        K.fill_hit_truth(hits, hit_order, hx, hy, htot, toa, ftoa, hent, cid, self._rising_t, self._rising_c,
                         chip, 0 if mode == 2 else 25)
        clusters = np.empty(ncl, CLUSTER_TRUTH_DTYPE)
        clusters["id"] = cid[is_cl]
        clusters["chip"] = chip
        clusters["x"], clusters["y"], clusters["t"] = ent_x[is_cl], ent_y[is_cl], ent_t[is_cl]
        clusters["charge"], clusters["sigma"], clusters["size"] = ent_q[is_cl], ent_s[is_cl], size[is_cl]
        corder = order[is_cl]            # positions in the unsorted peak/trigger lists
        clusters["peak"], clusters["trigger"] = peak[corder], trig_c[corder]
        clusters["event"] = self._event_of(ent_t[is_cl])
        return words, hits, clusters, trig_rows, hb_rows

    def _expand(self, d, cx, cy, q, s, t, size):
        """Run the cluster kernel over all entries (in ``threads`` parallel chunks when there are
        many; the counter-based random numbers make the result independent of the split)."""
        n = len(cx)
        if n == 0:
            e = np.empty(0, np.uint16)
            return e, e.copy(), e.copy(), np.empty(0, np.int64), np.empty(0, np.int64)
        key = int(self._rng.integers(0, 2 ** 63))
        params = self.model.kernel_params()
        if self.threads > 1 and n >= 20_000:
            bounds = np.linspace(0, n, self.threads + 1).astype(np.int64)
            chunks = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
            results = list(self._thread_pool().map(
                lambda ab: self._expand_range(ab[0], ab[1], d, cx, cy, q, s, t, size, key, params), chunks))
            return tuple(np.concatenate([r[i] for r in results]) for i in range(5))
        return self._expand_range(0, n, d, cx, cy, q, s, t, size, key, params)

    @staticmethod
    def _expand_range(a, b, d, cx, cy, q, s, t, size, key, params):
        """Entries a..b-1; their cluster indices stay global (the kernel's counters and out_cl)."""
        parts = []
        first = 0
        sl = slice(a, b)
        while first < b - a:
            cap = max(4096, (b - a - first) * 8)
            ox = np.empty(cap, np.uint16)
            oy = np.empty(cap, np.uint16)
            ot = np.empty(cap, np.uint16)
            otime = np.empty(cap, np.int64)
            ocl = np.empty(cap, np.int64)
            nw, first = K.expand_clusters(cx[sl], cy[sl], q[sl], s[sl], t[sl], a, key, d.thr_e, params, first,
                                          ox, oy, ot, otime, ocl, size[sl])
            parts.append((ox[:nw], oy[:nw], ot[:nw], otime[:nw], ocl[:nw] + a))
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(5))

    def _thread_pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="tpx3-sim-gen")
        return self._executor

    def close(self) -> None:
        """Stop the worker threads (only started with ``threads`` > 1)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


_warm_lock = threading.Lock()
_warm = False


def warm_up() -> None:
    """Load (or compile) every numba kernel of the generator once per process, by generating
    10 ms of a small busy model (clusters, noise, both TDCs, heartbeats, disorder). The first
    real slice would otherwise take ~0.5 s or more, and a real-time stream would start that far
    behind the board clock. Thread-safe; later calls return at once."""
    global _warm
    with _warm_lock:
        if _warm:
            return
        model = PhysicsModel(hit_rate_hz=100_000, trigger_rate_hz=1000, tdc2_rate_hz=1000,
                             heartbeat_period_s=0.004, seed=0)
        st = ChipState(dacs=dict(DAC_DEFAULTS, Vthreshold_fine=450))      # some noise hits too
        gen = HitGenerator(model, [st])
        gen.slice_end(0, 400_000, 1e9)
        gen.generate(0, 400_000)
        _warm = True
