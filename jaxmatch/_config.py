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
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from ._exceptions import FieldValidationError

GRID_STATISTICS = ("MEAN", "MEDIAN", "MEANCLIP")
UNDERSAMPLE_STYLES = ("THROW_EXCEPTION", "REDUCE_INTERP_ORDER", "INCREASE_NXNYSAMPLE")
INTERP_STYLES = ("CONSTANT", "LINEAR", "NATURAL_SPLINE", "AKIMA_SPLINE", "NONE")
CHEBYSHEV_TERMS = ("TOTAL", "TENSOR")
DTYPES = ("float32", "float64")
REF_SELECTIONS = ("GEN2", "GEN3")
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
    - `refSelection`: the reference-selection cost: ``"GEN2"`` (LSST's Gen2 task:
      variance, level and coverage) or ``"GEN3"`` (LSST's Gen3 task: χ² of a plane
      fit to the binned image, binned variance and coverage; `jaxmatch._reference`).
    - `bestRefWeightChi2`, `bestRefWeightGlobalCoverage`: the Gen3 weights
      (LSST Gen3 names and defaults 0.3 and 0.4) in ``[0, 1]``; the Gen3 cost's
      variance weight is `bestRefWeightVariance` (LSST Gen3's default is 0.3,
      Gen2's 0.4).
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
    refSelection: str = "GEN2"
    bestRefWeightChi2: float = 0.3
    bestRefWeightGlobalCoverage: float = 0.4

    def __post_init__(self):
        # Lists are accepted for badMaskPlanes but stored as a tuple (hashable).
        if isinstance(self.badMaskPlanes, str):
            raise FieldValidationError("badMaskPlanes must be a list of plane names, not a string")
        try:
            planes = tuple(self.badMaskPlanes)
        except TypeError:
            raise FieldValidationError(
                f"badMaskPlanes must be a list of plane names, got {self.badMaskPlanes!r}"
            ) from None
        object.__setattr__(self, "badMaskPlanes", planes)
        self.validate()

    def validate(self) -> None:
        """Raise `FieldValidationError` (a `ValueError` and a `TypeError`) naming the first
        invalid field."""
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
            "bestRefWeightChi2",
            "bestRefWeightGlobalCoverage",
            "gridStdevEpsilon",
            "splineRoughness",
            "softminTemperature",
        ):
            value = getattr(self, name)
            _check_type(name, value, (int, float))
            if not math.isfinite(value):
                raise FieldValidationError(f"{name} must be finite, got {value!r}")
        _check_choice("gridStatistic", self.gridStatistic, GRID_STATISTICS)
        _check_choice("undersampleStyle", self.undersampleStyle, UNDERSAMPLE_STYLES)
        _check_choice("interpStyle", self.interpStyle, INTERP_STYLES)
        _check_choice("chebyshevTerms", self.chebyshevTerms, CHEBYSHEV_TERMS)
        if self.dtype is not None:
            _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("matchMode", self.matchMode, ("REFERENCE", "GLOBAL"))
        _check_choice("globalGauge", self.globalGauge, ("REFERENCE", "MEAN"))
        _check_choice("globalWeights", self.globalWeights, ("NUISANCE", "PAIR"))
        _check_choice("refSelection", self.refSelection, REF_SELECTIONS)
        if self.globalMaxPartners is not None:
            _check_type("globalMaxPartners", self.globalMaxPartners, int)
            if self.globalMaxPartners < 1:
                raise FieldValidationError(
                    f"globalMaxPartners must be >= 1, got {self.globalMaxPartners}"
                )
        if self.order < 0:
            raise FieldValidationError(f"order must be >= 0, got {self.order}")
        if self.orderY is not None and self.orderY < 0:
            raise FieldValidationError(f"orderY must be >= 0, got {self.orderY}")
        if self.binSize <= 0:
            raise FieldValidationError(
                f"binSize must be a positive number of pixels, got {self.binSize}"
            )
        if self.numIter < 0:
            raise FieldValidationError(f"numIter must be >= 0, got {self.numIter}")
        if self.numSigmaClip <= 0:
            raise FieldValidationError(f"numSigmaClip must be > 0, got {self.numSigmaClip}")
        for name in (
            "bestRefWeightCoverage",
            "bestRefWeightVariance",
            "bestRefWeightLevel",
            "bestRefWeightChi2",
            "bestRefWeightGlobalCoverage",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FieldValidationError(f"{name} must lie in [0, 1], got {value}")
        if self.gridStdevEpsilon < 0:
            raise FieldValidationError(
                f"gridStdevEpsilon must be >= 0, got {self.gridStdevEpsilon}"
            )
        if self.splineKnotSpacing < 1:
            raise FieldValidationError(
                f"splineKnotSpacing must be >= 1, got {self.splineKnotSpacing}"
            )
        if self.clipSharpness is not None:
            _check_type("clipSharpness", self.clipSharpness, (int, float))
            if not (math.isfinite(self.clipSharpness) and self.clipSharpness > 0):
                raise FieldValidationError(
                    f"clipSharpness must be None or > 0, got {self.clipSharpness}"
                )
        if self.splineRoughness < 0:
            raise FieldValidationError(f"splineRoughness must be >= 0, got {self.splineRoughness}")
        if self.softminTemperature <= 0:
            raise FieldValidationError(
                f"softminTemperature must be > 0, got {self.softminTemperature}"
            )
        if self.chebyshevTerms == "TOTAL" and self.orderY not in (None, self.order):
            raise FieldValidationError(
                "orderY differs from order, which needs chebyshevTerms='TENSOR' "
                "(the LSST 'TOTAL' basis has one order)"
            )
        if not self.usePolynomial and self.interpStyle == "NONE":
            raise FieldValidationError(
                "interpStyle='NONE' cannot be used for the spline model (usePolynomial=False)"
            )
        for plane in self.badMaskPlanes:
            if not isinstance(plane, str) or not plane:
                raise FieldValidationError(f"badMaskPlanes must hold plane names, got {plane!r}")

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

    def thaw(self) -> MatchBackgroundsTaskConfig:
        """A mutable, LSST-style copy (`MatchBackgroundsTaskConfig`) of this config."""
        return MatchBackgroundsTaskConfig.fromFrozen(self)


def _check_type(name: str, value: Any, types) -> None:
    # bool is an int in Python; an int field must not silently take True.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise FieldValidationError(f"{name} must be {types}, got the bool {value!r}")
    if not isinstance(value, types):
        raise FieldValidationError(f"{name} must be {types}, got {type(value).__name__} {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FieldValidationError(f"{name} must be one of {choices}, got {value!r}")


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


# -- the mutable, pex_config-style config ------------------------------------------------
class InvalidConfigKey(tuple):
    """The static key of a mutable config that does not validate (field, value pairs)."""


class _NotifyingList(list):
    """A list field's value: in-place changes (``append``...) notify the owning config."""

    def __init__(self, items, owner: Config):
        super().__init__(items)
        self._owner = weakref.ref(owner)

    def _changed(self) -> None:
        owner = self._owner()
        if owner is not None:
            owner._checkNotFrozen()
            owner._notify()

    def __reduce__(self):  # copies and pickles are plain lists
        return list, (list(self),)


def _mutator(name: str):
    method = getattr(list, name)

    def call(self, *args, **kwargs):
        owner = self._owner()
        if owner is not None:
            owner._checkNotFrozen()
        out = method(self, *args, **kwargs)
        self._changed()
        return self if name in ("__iadd__", "__imul__") else out

    call.__name__ = name
    return call


for _name in (
    "append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
    "__setitem__", "__delitem__", "__iadd__", "__imul__",
):  # fmt: skip
    setattr(_NotifyingList, _name, _mutator(_name))


def _annotation(field: dataclasses.Field) -> tuple[str, bool]:
    """``(base type name, optional)`` of a dataclass field's annotation."""
    ann = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    ann = ann.replace(" ", "")
    optional = ann.endswith("|None") or ann.startswith("None|")
    base = ann.replace("|None", "").replace("None|", "")
    return base, optional


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


class Config:
    """A mutable configuration, in the style of ``lsst.pex.config.Config``.

    Each subclass mirrors a frozen dataclass, ``Frozen`` (given as
    ``class MyConfig(Config, frozen=MyFrozen)``): same field names and defaults.
    Use it as LSST code does::

        config = MatchBackgroundsTask.ConfigClass()
        config.binSize = 128                # type-checked on assignment
        config.badMaskPlanes.append("EDGE")
        config.load("overrides.py")         # Python lines ``config.order = 4``
        config.validate()                   # every field and their combinations
        config.freeze()                     # any later assignment raises

    The frozen, hashable snapshot (`snapshot`) is what jaxmatch compiles against:
    a task takes it by value at each call, so equal configs share compilations.

    Assigning a value of the wrong type, or a choice not allowed, raises
    `FieldValidationError` at once (as pex_config); ranges and combinations of
    fields are checked by `validate` (and on each use), so fields can be set one
    after the other through invalid intermediate states. A field holding a
    `ConfigurableField` (a subtask) takes attribute assignments on its config,
    ``config.sub.binSize = 64``, and a whole config, ``config.sub = SubConfig()``.
    """

    Frozen: ClassVar[type]
    #: field name → allowed values, checked on assignment (pex_config's ChoiceField).
    _choices: ClassVar[Mapping[str, tuple[Any, ...]]] = {}

    def __init_subclass__(cls, frozen: type | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if frozen is not None:
            # typeshed's DataclassInstance does not declare __dataclass_params__
            if not (
                dataclasses.is_dataclass(frozen) and frozen.__dataclass_params__.frozen  # pyright: ignore[reportAttributeAccessIssue]
            ):
                raise TypeError(f"{cls.__name__}: frozen= must be a frozen dataclass")
            cls.Frozen = frozen

    def __init__(self, **values: Any):
        if getattr(type(self), "Frozen", None) is None:
            raise TypeError(f"{type(self).__name__} needs a frozen dataclass: frozen=...")
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_isFrozen", False)
        object.__setattr__(self, "_listeners", [])
        self._fields = {f.name: f for f in dataclasses.fields(self.Frozen)}
        for name, field in self._fields.items():
            self._store(name, self._coerce(name, _default(field)))
        self.setDefaults()
        self.update(**values)

    @classmethod
    def fromFrozen(cls, frozen: Any) -> Self:
        """A mutable config holding the values of a ``Frozen`` instance."""
        if not isinstance(frozen, cls.Frozen):
            raise TypeError(f"expected a {cls.Frozen.__name__}, got {type(frozen).__name__}")
        return cls(**{f.name: getattr(frozen, f.name) for f in dataclasses.fields(frozen)})

    def setDefaults(self) -> None:
        """Override to change defaults after construction (pex_config's hook)."""

    # -- fields -----------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if name not in self._fields:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        self._checkNotFrozen()
        current = self._values[name]
        if _is_configurable_field(current) and not _is_configurable_field(value):
            current.value = value  # a subtask's config (the field checks its class)
            return
        self._store(name, self._coerce(name, value))
        self._notify()

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete config field {name!r}; assign a value instead")

    def _store(self, name: str, value: Any) -> None:
        if isinstance(value, list):
            value = _NotifyingList(value, self)
        if isinstance(value, Config) or _is_configurable_field(value):
            value._subscribe(self)
        self._values[name] = value

    def _coerce(self, name: str, value: Any) -> Any:
        """Check a value's type (and choice) for field ``name``; lists for tuple fields."""
        base, optional = _annotation(self._fields[name])
        if value is None:
            if (
                optional
                or base not in ("bool", "int", "float", "str")
                and not base.startswith("tuple")
            ):
                return None
            raise FieldValidationError(f"{name} cannot be None")
        if base == "bool":
            _check_type(name, value, bool)
        elif base == "int":
            _check_type(name, value, int)
        elif base == "float":
            _check_type(name, value, (int, float))
            value = float(value)
        elif base == "str":
            _check_type(name, value, str)
        elif base.startswith("tuple[str"):
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise FieldValidationError(f"{name} must be a list of str, got {value!r}")
            for item in value:
                _check_type(f"{name} item", item, str)
            value = list(value)
        choices = self._choices.get(name)
        if choices is not None and value not in choices:
            raise FieldValidationError(f"{name} must be one of {choices}, got {value!r}")
        return value

    def update(self, **values: Any) -> None:
        """Set several fields (``config.update(binSize=128, order=4)``)."""
        for name, value in values.items():
            setattr(self, name, value)

    def keys(self) -> list[str]:
        return list(self._values)

    def values(self) -> list[Any]:
        return list(self._values.values())

    def items(self) -> list[tuple[str, Any]]:
        return list(self._values.items())

    def __iter__(self):
        return iter(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def toDict(self) -> dict[str, Any]:
        """Field name → value (lists as plain lists; subtask configs as dicts)."""
        out = {}
        for name, value in self._values.items():
            if _is_configurable_field(value):
                value = value.value
            if isinstance(value, Config):
                value = value.toDict()
            elif isinstance(value, list):
                value = list(value)
            out[name] = value
        return out

    # -- validation, freezing, snapshots ----------------------------------------------
    def snapshot(self) -> Any:
        """The frozen, hashable ``Frozen`` instance of the current values (validated).

        Raises `FieldValidationError` naming the first invalid field.
        """
        values = {}
        for name, value in self._values.items():
            if isinstance(value, list):
                value = tuple(value)
            values[name] = value
        return self.Frozen(**values)

    def validate(self) -> None:
        """Check every field, their combinations and every subtask config
        (`FieldValidationError` naming the field)."""
        self.snapshot()
        for value in self._values.values():
            sub = value.value if _is_configurable_field(value) else value
            if hasattr(sub, "validate") and not isinstance(sub, type):
                sub.validate()

    def freeze(self) -> None:
        """Make this config (and its subtask configs) read-only, as pex_config."""
        object.__setattr__(self, "_isFrozen", True)
        for value in self._values.values():
            sub = value.value if _is_configurable_field(value) else value
            if isinstance(sub, Config):
                sub.freeze()

    def _checkNotFrozen(self) -> None:
        if self._isFrozen:
            raise FieldValidationError(f"cannot modify a frozen {type(self).__name__}")

    def staticKey(self) -> Any:
        """The hashable, immutable key of the current values: the `snapshot` when
        valid, else a tuple of ``(field, value)`` pairs that no valid config equals."""
        try:
            return self.snapshot()
        except (ValueError, TypeError):
            return InvalidConfigKey(
                (name, tuple(v) if isinstance(v, list) else v) for name, v in self._values.items()
            )

    # -- change notification (tasks refresh their static key) -------------------------
    def _subscribe(self, listener: Any) -> None:
        self._listeners.append(weakref.ref(listener))

    def _notify(self) -> None:
        alive = []
        for ref in self._listeners:
            listener = ref()
            if listener is not None:
                alive.append(ref)
                listener._configUpdated()
        self._listeners[:] = alive

    def _configUpdated(self) -> None:  # a subtask config changed: pass it on
        self._notify()

    # -- override files ---------------------------------------------------------------
    def loadFromString(self, code: str, filename: str = "<string>") -> None:
        """Execute Python override lines (``config.binSize = 128``), as pex_config.

        The code sees this config as ``config`` (and ``root``, pex_config's old name).
        """
        exec(compile(code, filename, "exec"), {"config": self, "root": self, "__file__": filename})

    def load(self, path: str | Path) -> None:
        """Apply an override file: Python lines as pex_config (``config.order = 4``),
        or a TOML table of field values for a ``.toml`` file."""
        path = Path(path)
        text = path.read_text()
        if path.suffix.lower() == ".toml":
            try:
                self.update(**tomllib.loads(text))
            except AttributeError as err:
                raise FieldValidationError(f"{path}: {err}") from None
        else:
            self.loadFromString(text, filename=str(path))

    def saveToString(self) -> str:
        """Python override lines that `loadFromString` reads back to an equal config."""
        lines = [f"# {type(self).__module__}.{type(self).__qualname__}"]
        imports: set[str] = set()
        self._saveLines("config", lines, imports)
        return "\n".join(sorted(imports) + lines) + "\n"

    def _saveLines(self, prefix: str, lines: list[str], imports: set[str]) -> None:
        for name, value in self._values.items():
            if _is_configurable_field(value):
                target = value.target
                imports.add(f"import {target.__module__}")
                lines.append(f"{prefix}.{name}.retarget({target.__module__}.{target.__qualname__})")
                sub = value.value
                if isinstance(sub, Config):
                    sub._saveLines(f"{prefix}.{name}", lines, imports)
                else:
                    mod = type(sub)
                    imports.add(f"import {mod.__module__}")
                    lines.append(f"{prefix}.{name} = {mod.__module__}.{sub!r}")
                continue
            if isinstance(value, list):
                value = list(value)
            lines.append(f"{prefix}.{name} = {value!r}")

    def save(self, path: str | Path) -> None:
        """Write the config as Python override lines (`load` reads them back)."""
        Path(path).write_text(self.saveToString())

    # -- comparison -------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Config):
            return type(other).Frozen is self.Frozen and other.toDict() == self.toDict()
        if isinstance(other, self.Frozen):
            return other == self.staticKey()
        return NotImplemented

    # mutable: use `snapshot()` or `staticKey()` as a key (None: the standard way to
    # make a class unhashable, which the checker does not accept against object's)
    __hash__ = None  # pyright: ignore[reportAssignmentType]

    def __repr__(self) -> str:
        items = ", ".join(f"{name}={value!r}" for name, value in self.toDict().items())
        return f"{type(self).__name__}({items})"


def _is_configurable_field(value: Any) -> bool:
    return hasattr(value, "retarget") and hasattr(value, "target") and not isinstance(value, type)


class MatchBackgroundsTaskConfig(Config, frozen=MatchBackgroundsConfig):
    """The mutable, LSST-style config of `MatchBackgroundsTask` (its ``ConfigClass``).

    The fields, names and defaults of `MatchBackgroundsConfig`, assignable as in
    LSST (``task.config.order = 4``); the task validates it and takes its frozen
    `snapshot` at each call. `MatchBackgroundsConfig.thaw` and `fromFrozen` convert.
    """

    _choices = {
        "gridStatistic": GRID_STATISTICS,
        "undersampleStyle": UNDERSAMPLE_STYLES,
        "interpStyle": INTERP_STYLES,
        "chebyshevTerms": CHEBYSHEV_TERMS,
        "dtype": (None, *DTYPES),
        "matchMode": ("REFERENCE", "GLOBAL"),
        "globalGauge": ("REFERENCE", "MEAN"),
        "globalWeights": ("NUISANCE", "PAIR"),
        "refSelection": REF_SELECTIONS,
    }


def static_config(config: Any) -> MatchBackgroundsConfig:
    """The frozen `MatchBackgroundsConfig` of a frozen or mutable config (validated)."""
    if isinstance(config, MatchBackgroundsConfig):
        return config
    if isinstance(config, Config) and config.Frozen is MatchBackgroundsConfig:
        return config.snapshot()
    raise TypeError(f"config must be a MatchBackgroundsConfig, got {type(config).__name__}")
