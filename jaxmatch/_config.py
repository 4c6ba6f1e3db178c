"""`MatchBackgroundsConfig`: the LSST config fields, with the same names and defaults.

The config is a frozen, hashable dataclass: it is *static* structure (it decides
code paths and array shapes), so it can be a static argument of `jax.jit` and an
`eqx.field(static=True)` of a module. The floats a user may want to differentiate
or tune (`splineRoughness`, `softminTemperature`, the reference-cost weights) are
also given here as defaults; the functional API and the task take them as array
arguments, so changing them does not recompile.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GRID_STATISTICS = ("MEAN", "MEDIAN", "MEANCLIP")
UNDERSAMPLE_STYLES = ("THROW_EXCEPTION", "REDUCE_INTERP_ORDER", "INCREASE_NXNYSAMPLE")
INTERP_STYLES = ("CONSTANT", "LINEAR", "NATURAL_SPLINE", "AKIMA_SPLINE", "NONE")
CHEBYSHEV_TERMS = ("TOTAL", "TENSOR")
DTYPES = ("float32", "float64")
DEFAULT_BAD_MASK_PLANES = ("NO_DATA", "DETECTED", "DETECTED_NEGATIVE", "SAT", "BAD", "INTRP", "CR")


@dataclasses.dataclass(frozen=True)
class MatchBackgroundsConfig:
    """Configuration of background matching (LSST `MatchBackgroundsConfig` names).

    LSST fields (same names, types, defaults and allowed values):

    - `usePolynomial`: fit a Chebyshev polynomial (True) or a spline (False).
    - `order`: Chebyshev order (polynomial path only), ``>= 0``.
    - `badMaskPlanes`: mask planes whose pixels are ignored in every statistic.
    - `gridStatistic`: ``MEAN``, ``MEDIAN`` or ``MEANCLIP`` (value of each bin).
    - `undersampleStyle`: ``THROW_EXCEPTION``, ``REDUCE_INTERP_ORDER`` or
      ``INCREASE_NXNYSAMPLE`` (the last acts only on the polynomial path).
    - `binSize`: bin side [pixels], ``> 0``.
    - `interpStyle`: ``CONSTANT``, ``LINEAR``, ``NATURAL_SPLINE``, ``AKIMA_SPLINE``
      or ``NONE`` (spline path only; ``NONE`` is refused there).
    - `numSigmaClip`, `numIter`: clipping of ``MEANCLIP`` (and of `diffImVar`).
    - `bestRefWeightCoverage`, `bestRefWeightVariance`, `bestRefWeightLevel`:
      weights in ``[0, 1]`` of the reference-selection cost.
    - `approxWeighting`: inverse-variance weights in the fit.
    - `gridStdevEpsilon`: floor on a bin's standard deviation, ``>= 0``.

    jaxmatch's own fields:

    - `orderY`: Chebyshev order in y for ``chebyshevTerms="TENSOR"`` (None: `order`).
    - `chebyshevTerms`: ``TOTAL`` (LSST: terms with ``i + j <= order``) or
      ``TENSOR`` (``i <= order``, ``j <= orderY``).
    - `splineKnotSpacing`: knot spacing of the spline in bins (1: a knot per bin).
    - `splineRoughness`: roughness penalty λ ``>= 0`` (dimensionless, see
      `docs/algorithm.md` §4-6): second differences of the spline's knot values,
      or the order-weighted ridge ``Σ (p + q)² C[p, q]²`` of the Chebyshev model.
    - `clipSharpness`: None (LSST's hard ``MEANCLIP`` cut) or β > 0: the smooth
      clipping weight ``sigmoid(β (numSigmaClip - |x - μ| / σ))``, differentiable
      in ``numSigmaClip`` and β.
    - `softminTemperature`: temperature ``> 0`` of the soft-min reference selection.
    - `dtype`: ``"float32"``, ``"float64"`` or None (keep the inputs' dtype).
    - `matchMode`: ``"REFERENCE"`` (LSST: each exposure against one reference) or
      ``"GLOBAL"`` (every overlap at once, `jaxmatch.match_all`).
    - `globalGauge`: ``"REFERENCE"`` (the reference's model is 0) or ``"MEAN"``
      (each group's mean model is 0), GLOBAL mode only.
    - `globalWeights`: ``"NUISANCE"`` (pair weights consistent with independent
      per-exposure noise: calibrated uncertainties) or ``"PAIR"`` (each pair's own
      ``1/e²``, as the core), GLOBAL mode only.
    - `globalMaxPartners`: None (every overlapping pair) or the number of
      best-overlapping partners kept per exposure, GLOBAL mode only.
    """

    usePolynomial: bool = False
    order: int = 8
    badMaskPlanes: tuple[str, ...] = DEFAULT_BAD_MASK_PLANES
    gridStatistic: str = "MEAN"
    undersampleStyle: str = "REDUCE_INTERP_ORDER"
    binSize: int = 256
    interpStyle: str = "AKIMA_SPLINE"
    numSigmaClip: float = 3.0
    numIter: int = 2
    bestRefWeightCoverage: float = 0.4
    bestRefWeightVariance: float = 0.4
    bestRefWeightLevel: float = 0.2
    approxWeighting: bool = True
    gridStdevEpsilon: float = 1e-8
    # jaxmatch's own
    orderY: int | None = None
    chebyshevTerms: str = "TOTAL"
    splineKnotSpacing: int = 1
    splineRoughness: float = 0.0
    clipSharpness: float | None = None
    softminTemperature: float = 0.05
    dtype: str | None = None
    matchMode: str = "REFERENCE"
    globalGauge: str = "REFERENCE"
    globalWeights: str = "NUISANCE"
    globalMaxPartners: int | None = None

    def __post_init__(self):
        # Lists are accepted for badMaskPlanes but stored as a tuple (hashable).
        if isinstance(self.badMaskPlanes, str):
            raise TypeError("badMaskPlanes must be a list of plane names, not a string")
        try:
            planes = tuple(self.badMaskPlanes)
        except TypeError:
            raise TypeError(
                f"badMaskPlanes must be a list of plane names, got {self.badMaskPlanes!r}"
            ) from None
        object.__setattr__(self, "badMaskPlanes", planes)
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` / `TypeError` naming the first invalid field."""
        _check_type("usePolynomial", self.usePolynomial, bool)
        _check_type("approxWeighting", self.approxWeighting, bool)
        for name in ("order", "binSize", "numIter", "splineKnotSpacing"):
            _check_type(name, getattr(self, name), int)
        if self.orderY is not None:
            _check_type("orderY", self.orderY, int)
        for name in (
            "numSigmaClip",
            "bestRefWeightCoverage",
            "bestRefWeightVariance",
            "bestRefWeightLevel",
            "gridStdevEpsilon",
            "splineRoughness",
            "softminTemperature",
        ):
            value = getattr(self, name)
            _check_type(name, value, (int, float))
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        _check_choice("gridStatistic", self.gridStatistic, GRID_STATISTICS)
        _check_choice("undersampleStyle", self.undersampleStyle, UNDERSAMPLE_STYLES)
        _check_choice("interpStyle", self.interpStyle, INTERP_STYLES)
        _check_choice("chebyshevTerms", self.chebyshevTerms, CHEBYSHEV_TERMS)
        if self.dtype is not None:
            _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("matchMode", self.matchMode, ("REFERENCE", "GLOBAL"))
        _check_choice("globalGauge", self.globalGauge, ("REFERENCE", "MEAN"))
        _check_choice("globalWeights", self.globalWeights, ("NUISANCE", "PAIR"))
        if self.globalMaxPartners is not None:
            _check_type("globalMaxPartners", self.globalMaxPartners, int)
            if self.globalMaxPartners < 1:
                raise ValueError(f"globalMaxPartners must be >= 1, got {self.globalMaxPartners}")
        if self.order < 0:
            raise ValueError(f"order must be >= 0, got {self.order}")
        if self.orderY is not None and self.orderY < 0:
            raise ValueError(f"orderY must be >= 0, got {self.orderY}")
        if self.binSize <= 0:
            raise ValueError(f"binSize must be a positive number of pixels, got {self.binSize}")
        if self.numIter < 0:
            raise ValueError(f"numIter must be >= 0, got {self.numIter}")
        if self.numSigmaClip <= 0:
            raise ValueError(f"numSigmaClip must be > 0, got {self.numSigmaClip}")
        for name in ("bestRefWeightCoverage", "bestRefWeightVariance", "bestRefWeightLevel"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.gridStdevEpsilon < 0:
            raise ValueError(f"gridStdevEpsilon must be >= 0, got {self.gridStdevEpsilon}")
        if self.splineKnotSpacing < 1:
            raise ValueError(f"splineKnotSpacing must be >= 1, got {self.splineKnotSpacing}")
        if self.clipSharpness is not None:
            _check_type("clipSharpness", self.clipSharpness, (int, float))
            if not (math.isfinite(self.clipSharpness) and self.clipSharpness > 0):
                raise ValueError(f"clipSharpness must be None or > 0, got {self.clipSharpness}")
        if self.splineRoughness < 0:
            raise ValueError(f"splineRoughness must be >= 0, got {self.splineRoughness}")
        if self.softminTemperature <= 0:
            raise ValueError(f"softminTemperature must be > 0, got {self.softminTemperature}")
        if self.chebyshevTerms == "TOTAL" and self.orderY not in (None, self.order):
            raise ValueError(
                "orderY differs from order, which needs chebyshevTerms='TENSOR' "
                "(the LSST 'TOTAL' basis has one order)"
            )
        if not self.usePolynomial and self.interpStyle == "NONE":
            raise ValueError(
                "interpStyle='NONE' cannot be used for the spline model (usePolynomial=False)"
            )
        for plane in self.badMaskPlanes:
            if not isinstance(plane, str) or not plane:
                raise ValueError(f"badMaskPlanes must hold plane names, got {plane!r}")

    # -- conversions ----------------------------------------------------------------
    def replace(self, **changes: Any) -> MatchBackgroundsConfig:
        """A copy with some fields changed (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def toDict(self) -> dict[str, Any]:
        """A plain dict (lists for tuples), the inverse of `fromDict`."""
        out = dataclasses.asdict(self)
        out["badMaskPlanes"] = list(self.badMaskPlanes)
        return out

    @classmethod
    def fromDict(cls, values: Mapping[str, Any]) -> MatchBackgroundsConfig:
        """Build from a mapping of field names; unknown names are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config field(s): {sorted(unknown)}")
        return cls(**dict(values))

    def toToml(self) -> str:
        """The config as TOML text (fields that are None are left out)."""
        lines = []
        for key, value in self.toDict().items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def fromToml(cls, text: str) -> MatchBackgroundsConfig:
        """Parse TOML text written by `toToml` (or by hand)."""
        return cls.fromDict(tomllib.loads(text))

    def save(self, path: str | Path) -> None:
        """Write the config as a TOML file."""
        Path(path).write_text(self.toToml())

    @classmethod
    def load(cls, path: str | Path) -> MatchBackgroundsConfig:
        """Read a config from a TOML file."""
        return cls.fromToml(Path(path).read_text())


def _check_type(name: str, value: Any, types) -> None:
    # bool is an int in Python; an int field must not silently take True.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise TypeError(f"{name} must be {types}, got the bool {value!r}")
    if not isinstance(value, types):
        raise TypeError(f"{name} must be {types}, got {type(value).__name__} {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
