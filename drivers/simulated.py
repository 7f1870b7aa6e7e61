"""A simulated environmental sensor, so the whole gateway runs (and is tested) without hardware.

Values follow the day and the season: temperature peaks mid-afternoon and bottoms out before
dawn, relative humidity follows from a slowly wandering dew point (so it moves inversely to
temperature), pressure wanders over days with the small semidiurnal tide on top, PM rises at
rush hours and under the night inversion, CO2 builds up at night (indoors: people asleep in a
closed room). Each quantity has a mean-reverting random walk (weather) and sensor noise, and is
quantized to the chip's output resolution.

Everything is deterministic for a given seed, sensor id and sequence of `now` values, and cheap:
the daily shapes are tables built once, noise comes from a precomputed Gaussian table indexed by
`getrandbits`, so a `read()` of three quantities costs a few microseconds.

Optional faults (spike, stuck, drift, range, dropout, implausible) are injected from their own
seeded stream, so turning them on does not change the clean signal. The simulator never flags
its own faults: finding them is the detection modules' job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from random import Random
from typing import Any, ClassVar

from drivers import manifests
from drivers.base import Measurement, SensorDriver
from gateway.core.errors import ConfigError, SensorError
from gateway.core.fields import Field

__all__ = ["FAULTS", "KIND_QUANTITIES", "QUANTITY_UNITS", "SimulatedSensor", "units_for"]

# --- what the simulator can produce ------------------------------------------------------------

#: every simulated quantity -> SenML unit, in the order `read()` returns them (its manifest's)
QUANTITY_UNITS: Mapping[str, str] = manifests.SIMULATED.units()
_ORDER = tuple(QUANTITY_UNITS)
_T, _RH, _P, _PM1, _PM25, _PM10, _CO2 = range(7)

#: the quantities of each `kind`, modelled on a real chip
KIND_QUANTITIES: Mapping[str, tuple[str, ...]] = {
    "climate": ("temperature", "humidity", "pressure"),  # BME280
    "pm": ("pm1", "pm2_5", "pm10"),  # PMS5003 (SDS011 has no PM1)
    "co2": ("co2", "temperature", "humidity"),  # SCD4x
    "all": _ORDER,
}

#: fault names accepted in the `faults` option
FAULTS = ("spike", "stuck", "drift", "range", "dropout", "implausible")

# Output resolution per quantity (multiplier before rounding to an integer):
# 0.01 Cel, 0.01 %RH, 1 Pa, 0.1 ug/m3, 1 ppm.
_SCALE = (100.0, 100.0, 1.0, 10.0, 10.0, 10.0, 1.0)

# Measurements are frozen, so equal ones are shared: building one costs ~0.5 us, a look-up
# ~0.04 us. Per quantity at most this many are kept (a few hundred kB for "all").
_MEMO_SIZE = 2048

# Scale of short-term variability used to size spikes and drifts: absolute + relative part.
_SIGMA_ABS = (0.5, 2.0, 20.0, 1.0, 1.5, 2.0, 20.0)
_SIGMA_REL = (0.0, 0.0, 0.0, 0.2, 0.2, 0.2, 0.02)
# Faults on concentrations go upward (a negative PM is a range fault, not a spike).
_UPWARD = (False, False, False, True, True, True, True)

# Values no supported chip can report; the built-in `ranges` module flags each of them.
_IMPOSSIBLE = (
    (-80.0, 150.0),  # Cel (chips: -40..85)
    (-10.0, 130.0),  # %RH
    (20_000.0, 150_000.0),  # Pa (BME280: 300..1100 hPa)
    (2_000.0, 5_000.0),  # ug/m3 (SDS011/PMS5003: up to 1000)
    (2_000.0, 5_000.0),
    (2_000.0, 5_000.0),
    (-100.0, 65_535.0),  # ppm (SCD4x: 0..40000; 65535 is an all-ones word)
)

# --- daily shapes, one value per minute of the local day (index 0..1440, wrapping) -------------


def _gauss_bump(minute: float, centre_h: float, width_h: float) -> float:
    d = (minute / 60.0 - centre_h + 12.0) % 24.0 - 12.0  # signed hours from the centre
    return math.exp(-0.5 * (d / width_h) ** 2)


def _temperature_shape() -> list[float]:
    """-1 at 05:30 (just before sunrise), +1 at 15:00; warms faster than it cools."""
    lo, hi = 330.0, 900.0
    out = []
    for m in range(1441):
        if lo <= m <= hi:
            out.append(-math.cos(math.pi * (m - lo) / (hi - lo)))
        else:
            out.append(math.cos(math.pi * ((m - hi) % 1440) / (1440.0 - hi + lo)))
    return out


def _tide_shape() -> list[float]:
    """Semidiurnal pressure tide: maxima near 10:00 and 22:00, amplitude ~1 hPa at mid latitudes."""
    return [100.0 * math.cos(4.0 * math.pi * (m / 60.0 - 10.0) / 24.0) for m in range(1441)]


def _pm_shape(indoor: bool) -> list[float]:
    """PM factor around 1: morning and evening traffic, night inversion; indoors also cooking."""
    raw = []
    for m in range(1441):
        out = (
            0.7
            + 0.6 * _gauss_bump(m, 8.0, 1.2)
            + 0.45 * _gauss_bump(m, 18.5, 1.6)
            + 0.35 * _gauss_bump(m, 2.0, 2.5)
        )
        if indoor:
            out = 0.6 * out + 0.8 * _gauss_bump(m, 12.5, 0.5) + 1.2 * _gauss_bump(m, 19.0, 0.6)
        raw.append(out)
    mean = sum(raw[:1440]) / 1440.0
    return [x / mean for x in raw]


_CO2_OUTDOOR = 420.0  # ppm, background air


def _co2_shape(indoor: bool) -> list[float]:
    """CO2 in ppm over the day. Outdoors: ~420 with a night-inversion bump. Indoors: a one-room
    box model (50 m3; two people asleep 23-07, airing 07-08, away 08-17, home 17-23)."""
    if not indoor:
        return [
            _CO2_OUTDOOR + 40.0 * _gauss_bump(m, 5.0, 2.5) + 10.0 * _gauss_bump(m, 8.0, 1.0)
            for m in range(1441)
        ]
    outdoor, volume_l = _CO2_OUTDOOR, 50_000.0
    # hour -> (CO2 generation in L/h for the room, air changes per hour)
    asleep, home, airing, away = (30.0, 0.5), (40.0, 0.8), (40.0, 3.0), (0.0, 0.8)
    plan = [asleep] * 7 + [airing] + [away] * 9 + [home] * 6 + [asleep]
    c = outdoor
    day: list[float] = []
    for _ in range(3):  # settle into the periodic steady state, keep the last day
        day = []
        for m in range(1440):
            gen, ach = plan[m // 60]
            day.append(c)
            c += (gen / volume_l * 1e6 - ach * (c - outdoor)) / 60.0
    day.append(day[0])
    return day


_SHAPE_CACHE: dict[str, list[float]] = {}


def _shape(name: str) -> list[float]:
    """Tables are built on first use and shared by every instance."""
    table = _SHAPE_CACHE.get(name)
    if table is None:
        indoor = name.endswith("-in")
        if name == "temperature":
            table = _temperature_shape()
        elif name == "tide":
            table = _tide_shape()
        elif name.startswith("pm"):
            table = _pm_shape(indoor)
        else:
            table = _co2_shape(indoor)
        _SHAPE_CACHE[name] = table
    return table


# Standard-normal noise: a table of 4096 draws, indexed with 12 random bits (cheaper than gauss()).
_NOISE_BITS = 12
_NOISE: list[float] = []


def _noise_table() -> list[float]:
    if not _NOISE:
        rng = Random(0x5EED)
        draws = [rng.gauss(0.0, 1.0) for _ in range(1 << _NOISE_BITS)]
        mean = sum(draws) / len(draws)
        sd = math.sqrt(sum((x - mean) ** 2 for x in draws) / len(draws))
        _NOISE.extend((x - mean) / sd for x in draws)
    return _NOISE


# --- configuration -----------------------------------------------------------------------------


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    import difflib  # only on the error path

    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_names(value: Any, known: Sequence[str], what: str) -> str | None:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        return f"expected a list of {what} names"
    for v in value:
        if v not in known:
            return f"unknown {what} {v!r}{_did_you_mean(v, known)} (known: {', '.join(known)})"
    return None


def _check_quantities(value: Any) -> str | None:
    return _check_names(value, _ORDER, "quantity")


def _check_faults(value: Any) -> str | None:
    return _check_names(value, FAULTS, "fault")


def units_for(kind: str, quantities: Sequence[str] = ()) -> dict[str, str]:
    """Quantity -> unit that a sensor of `kind` returns, optionally restricted to `quantities`."""
    names = KIND_QUANTITIES[kind]
    if quantities:
        names = tuple(q for q in names if q in quantities)
    return {q: QUANTITY_UNITS[q] for q in names}


def check_options(options: Mapping[str, Any]) -> list[str]:
    """Every problem with an option set, including the rules that span fields (the config
    loader checks each field alone; the constructor runs this and raises ConfigError)."""
    problems = []
    for key, field in SimulatedSensor.CONFIG.items():
        value = options.get(key, field.default)
        numeric = field.kind in ("int", "float")
        if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
            problems.append(f"{key}: expected a number, got {value!r}")
        elif field.kind == "str" and not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        elif field.choices is not None and value not in field.choices:
            choices = ", ".join(map(str, field.choices))
            problems.append(f"{key}: {value!r} is not one of {choices}")
        elif field.min is not None and value < field.min:
            problems.append(f"{key}: {value!r} is below the minimum {field.min:g}")
        elif field.max is not None and value > field.max:
            problems.append(f"{key}: {value!r} is above the maximum {field.max:g}")
        elif field.check is not None and (err := field.check(value)) is not None:
            problems.append(f"{key}: {err}")
    if problems:
        return problems
    kind = options.get("kind", "climate")
    chosen = units_for(kind, options.get("quantities") or ())
    for q in options.get("quantities") or ():
        if q not in KIND_QUANTITIES[kind]:
            has = ", ".join(KIND_QUANTITIES[kind])
            problems.append(f"quantities: kind {kind!r} has no {q!r} (it has: {has})")
    faults = options.get("faults") or ()
    if "implausible" in faults and not {"pm2_5", "pm10"} <= chosen.keys():
        problems.append('faults: "implausible" needs both pm2_5 and pm10 among the quantities')
    return problems


# --- the driver --------------------------------------------------------------------------------


def _stable_seed(seed: int, sensor_id: str, stream: str) -> int:
    """A seed that mixes in the sensor id the same way in every process (hash() is salted)."""
    import hashlib  # here: loading OpenSSL costs every `status` and start a few ms

    text = f"{seed}\x00{sensor_id}\x00{stream}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


class _Walk:
    """A mean-reverting random walk (Ornstein-Uhlenbeck) with stationary spread `sd` and
    correlation time `tau` seconds, stepped by the time between reads."""

    __slots__ = ("a", "b", "dt", "sd", "tau", "x")

    def __init__(self, sd: float, tau: float, start: float) -> None:
        self.sd, self.tau, self.x = sd, tau, sd * start
        self.dt, self.a, self.b = -1.0, 1.0, 0.0

    def set_dt(self, dt: float) -> None:
        self.dt = dt
        self.a = math.exp(-dt / self.tau)
        self.b = self.sd * math.sqrt(1.0 - self.a * self.a)


class _Event:
    __slots__ = ("amount", "index", "kind", "left", "length")

    def __init__(self, kind: str, index: int, length: int, amount: float) -> None:
        self.kind, self.index, self.length, self.left, self.amount = (
            kind,
            index,
            length,
            length,
            amount,
        )


class SimulatedSensor(SensorDriver):
    """A seeded environmental sensor with daily cycles, weather, noise and optional faults."""

    name = "simulated"
    blocking = False
    default_interval = 10.0
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "kind": Field(
            "str",
            "which chip to imitate: climate (BME280), pm (PMS5003), co2 (SCD4x) or all",
            default="climate",
            choices=tuple(KIND_QUANTITIES),
        ),
        "quantities": Field(
            "str-list",
            "only these quantities of the kind (empty: all of them)",
            default=(),
            check=_check_quantities,
        ),
        "seed": Field(
            "int", "readings repeat exactly for the same seed, sensor id and times", default=0
        ),
        "site": Field(
            "str",
            "indoor (steady temperature, CO2 from people) or outdoor; auto: indoor for co2",
            default="auto",
            choices=("auto", "indoor", "outdoor"),
        ),
        "mean_temperature": Field(
            "float", "annual mean outdoor temperature, Cel", default=11.0, min=-30.0, max=35.0
        ),
        "altitude": Field(
            "float",
            "metres above sea level; sets the mean pressure",
            default=0.0,
            min=-400.0,
            max=5000.0,
        ),
        "utc_offset": Field(
            "float",
            "hours from UTC to local time, for the daily cycle",
            default=0.0,
            min=-14.0,
            max=14.0,
        ),
        "faults": Field(
            "str-list",
            f"fault types to inject, from: {', '.join(FAULTS)}",
            default=(),
            check=_check_faults,
        ),
        "fault_every": Field(
            "int", "on average one fault event every this many reads", default=50, min=1
        ),
        "fault_after": Field("int", "no faults during the first this many reads", default=0, min=0),
    }

    def __init__(self, *, sensor_id: str, options: Mapping[str, Any]) -> None:
        full = {key: field.default for key, field in self.CONFIG.items()}
        full.update(options)
        super().__init__(sensor_id=sensor_id, options=full)
        problems = check_options(full)
        if problems:
            raise ConfigError(problems, source=f"sensor {sensor_id!r} (simulated)")

        kind: str = full["kind"]
        self._units = units_for(kind, full["quantities"])
        names = tuple(self._units)
        index = tuple(_ORDER.index(q) for q in names)
        # (quantity, index, scale, interned Measurements by quantized integer value)
        self._plan = tuple(
            (q, i, _SCALE[i], dict[int, Measurement]()) for q, i in zip(names, index, strict=True)
        )
        self._index = index
        needed = set(index)
        self._need_t = bool(needed & {_T, _RH})
        self._need_rh = _RH in needed
        self._need_p = _P in needed
        self._need_pm = bool(needed & {_PM1, _PM25, _PM10})
        self._need_co2 = _CO2 in needed

        site: str = full["site"]
        self._indoor = site == "indoor" or (site == "auto" and kind == "co2")
        sfx = "-in" if self._indoor else "-out"
        self._temp_shape = _shape("temperature")
        self._tide = _shape("tide")
        self._pm_shape = _shape("pm" + sfx)
        self._co2_shape = _shape("co2" + sfx)
        self._noise = _noise_table()
        self._offset = float(full["utc_offset"]) * 3600.0
        self._mean_t = float(full["mean_temperature"])
        # barometric formula (ICAO standard atmosphere)
        self._p0 = 101_325.0 * (1.0 - 2.25577e-5 * float(full["altitude"])) ** 5.25588

        rng = Random(_stable_seed(int(full["seed"]), sensor_id, "signal"))
        self._bits = rng.getrandbits
        start = rng.gauss
        hour, day = 3600.0, 86400.0
        indoor = self._indoor
        # weather: (stationary spread, correlation time)
        self._w_t = _Walk(0.4 if indoor else 1.5, 4 * hour if indoor else 6 * hour, start())
        self._w_dew = _Walk(1.5 if indoor else 2.0, 12 * hour, start())
        self._w_p = _Walk(900.0, 2.5 * day, start())
        self._w_pm = _Walk(0.5, 18 * hour, start())  # log of the PM level
        self._w_r1 = _Walk(0.06, 6 * hour, start())  # pm1 / pm2_5 ratio
        self._w_r10 = _Walk(0.25, 6 * hour, start())  # pm10 / pm2_5 ratio
        # indoors: log-scale on the excess over outdoor air (how many people, how airy)
        self._w_co2 = _Walk(0.2 if indoor else 8.0, 3 * hour if indoor else 6 * hour, start())
        self._walks = tuple(
            w
            for w, need in (
                (self._w_t, self._need_t),
                (self._w_dew, self._need_rh),
                (self._w_p, self._need_p),
                (self._w_pm, self._need_pm),
                (self._w_r1, self._need_pm),
                (self._w_r10, self._need_pm),
                (self._w_co2, self._need_co2),
            )
            if need
        )
        self._last_now: float | None = None
        self._day = -1
        self._t_mean = self._t_amp = self._dew_mean = 0.0

        self._faults: tuple[str, ...] = tuple(dict.fromkeys(full["faults"]))
        self._fault_every = int(full["fault_every"])
        self._frng = Random(_stable_seed(int(full["seed"]), sensor_id, "faults"))
        self._event: _Event | None = None
        self._countdown = int(full["fault_after"]) + self._gap() if self._faults else 0

    @property
    def quantities(self) -> Mapping[str, str]:
        return self._units

    # --- the clean signal ---

    def _season(self, local: float) -> None:
        """Seasonal means, recomputed once per simulated day (northern hemisphere)."""
        self._day = int(local // 86400.0)
        doy = (local / 86400.0) % 365.2425
        summer = math.cos(2.0 * math.pi * (doy - 200.0) / 365.2425)  # +1 mid-July
        if self._indoor:
            self._t_mean, self._t_amp = 21.0 + 1.0 * summer, 0.8
            self._dew_mean = 6.0 + 5.0 * summer  # dry heated air in winter
        else:
            self._t_mean = self._mean_t + 9.0 * summer
            self._t_amp = 4.5 + 1.5 * summer
            # nights come close to saturation (dew, some fog), afternoons are drier in summer
            self._dew_mean = self._t_mean - self._t_amp - 2.0 - 1.0 * summer

    def _signal(self, now: float) -> list[float]:
        """Unquantized values of all seven quantities (those not needed stay 0)."""
        g = self._noise
        bits = self._bits
        last = self._last_now
        dt = 0.0 if last is None or now <= last else now - last
        self._last_now = now
        if dt > 0.0:
            for w in self._walks:
                if w.dt != dt:
                    w.set_dt(dt)
                w.x = w.x * w.a + w.b * g[bits(_NOISE_BITS)]

        local = now + self._offset
        if int(local // 86400.0) != self._day:
            self._season(local)
        minute = (local % 86400.0) / 60.0
        i = int(minute)
        f = minute - i

        v = [0.0] * 7
        if self._need_t:
            s = self._temp_shape
            t = self._t_mean + self._t_amp * (s[i] + (s[i + 1] - s[i]) * f) + self._w_t.x
            v[_T] = t + 0.03 * g[bits(_NOISE_BITS)]
            if self._need_rh:
                # Magnus formula: RH from dew point and temperature
                dew = min(self._dew_mean + self._w_dew.x, t)
                rh = 100.0 * math.exp(17.62 * dew / (243.12 + dew) - 17.62 * t / (243.12 + t))
                rh += 0.3 * g[bits(_NOISE_BITS)]
                v[_RH] = 100.0 if rh > 100.0 else (0.0 if rh < 0.0 else rh)
        if self._need_p:
            s = self._tide
            v[_P] = (
                self._p0 + s[i] + (s[i + 1] - s[i]) * f + self._w_p.x + 2.0 * g[bits(_NOISE_BITS)]
            )
        if self._need_pm:
            s = self._pm_shape
            level = 9.0 * math.exp(self._w_pm.x) * (s[i] + (s[i + 1] - s[i]) * f)
            pm25 = level * (1.0 + 0.08 * g[bits(_NOISE_BITS)]) + 0.3 * g[bits(_NOISE_BITS)]
            pm25 = pm25 if pm25 > 0.0 else 0.0
            r1 = 0.7 + self._w_r1.x + 0.02 * g[bits(_NOISE_BITS)]
            r10 = 1.6 + self._w_r10.x + 0.05 * g[bits(_NOISE_BITS)]
            v[_PM1] = pm25 * (0.4 if r1 < 0.4 else (0.98 if r1 > 0.98 else r1))
            v[_PM25] = pm25
            v[_PM10] = pm25 * (1.05 if r10 < 1.05 else r10)
        if self._need_co2:
            s = self._co2_shape
            co2 = s[i] + (s[i + 1] - s[i]) * f
            if self._indoor:
                co2 = _CO2_OUTDOOR + (co2 - _CO2_OUTDOOR) * math.exp(self._w_co2.x)
            else:
                co2 += self._w_co2.x
            co2 += 6.0 * g[bits(_NOISE_BITS)]
            v[_CO2] = co2 if co2 > 380.0 else 380.0
        return v

    # --- faults ---

    def _gap(self) -> int:
        """Reads until the next fault event: geometric with mean `fault_every`."""
        n = self._fault_every
        if n <= 1:
            return 1
        u = self._frng.random()
        return 1 + int(math.log(1.0 - u) / math.log(1.0 - 1.0 / n))

    def _start_event(self, v: list[float]) -> _Event:
        rng = self._frng
        kind = rng.choice(self._faults)
        if kind == "dropout":
            return _Event(kind, -1, rng.randint(1, 6), 0.0)
        if kind == "implausible":
            return _Event(kind, _PM10, rng.randint(1, 12), rng.uniform(0.5, 0.9))
        i = rng.choice(self._index)
        sigma = _SIGMA_ABS[i] + _SIGMA_REL[i] * abs(v[i])
        sign = 1.0 if _UPWARD[i] or rng.random() < 0.5 else -1.0
        if kind == "spike":
            return _Event(kind, i, 1, sign * rng.uniform(5.0, 10.0) * sigma)
        if kind == "stuck":
            scale = _SCALE[i]
            return _Event(kind, i, rng.randint(12, 48), round(v[i] * scale) / scale)
        if kind == "drift":
            return _Event(kind, i, rng.randint(96, 240), sign * rng.uniform(5.0, 15.0) * sigma)
        return _Event(kind, i, 1, rng.choice(_IMPOSSIBLE[i]))  # range

    def _inject(self, v: list[float]) -> None:
        ev = self._event
        self._countdown -= 1
        if ev is None:
            if self._countdown > 0:
                return
            ev = self._event = self._start_event(v)
            self._countdown = self._gap()
        ev.left -= 1
        if ev.left <= 0:
            self._event = None
        kind, i = ev.kind, ev.index
        if kind == "spike":
            v[i] += ev.amount
        elif kind == "drift":
            k = ev.length - ev.left  # 1..length
            v[i] += ev.amount * (1.0 - abs(2.0 * k / (ev.length + 1) - 1.0))
        elif kind in ("stuck", "range"):
            v[i] = ev.amount
        elif kind == "implausible":
            pm25 = v[_PM25] if v[_PM25] > 1.0 else 1.0
            v[_PM25] = pm25
            v[_PM10] = min(pm25 * ev.amount, pm25 - 0.5)
            v[_PM1] = min(v[_PM1], pm25)
        else:  # dropout
            raise SensorError("simulated dropout")

    # --- the driver interface ---

    def read(self, now: float) -> list[Measurement]:
        v = self._signal(now)
        if self._faults:
            self._inject(v)
        out = []
        for q, i, scale, memo in self._plan:
            k = round(v[i] * scale)
            m = memo.get(k)
            if m is None:
                if len(memo) >= _MEMO_SIZE:
                    memo.clear()
                m = memo[k] = Measurement(q, k / scale)
            out.append(m)
        return out
