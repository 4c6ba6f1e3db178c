"""Tests of `MatchBackgroundsConfig`: LSST defaults, validation, round trips, hashing."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest

from jaxmatch._config import (
    GRID_STATISTICS,
    INTERP_STYLES,
    UNDERSAMPLE_STYLES,
    MatchBackgroundsConfig,
)

# The Config table of the spec (LSST `MatchBackgroundsConfig`): field → default.
LSST_DEFAULTS = {
    "usePolynomial": False,
    "order": 8,
    "badMaskPlanes": ("NO_DATA", "DETECTED", "DETECTED_NEGATIVE", "SAT", "BAD", "INTRP", "CR"),
    "gridStatistic": "MEAN",
    "undersampleStyle": "REDUCE_INTERP_ORDER",
    "binSize": 256,
    "interpStyle": "AKIMA_SPLINE",
    "numSigmaClip": 3,
    "numIter": 2,
    "bestRefWeightCoverage": 0.4,
    "bestRefWeightVariance": 0.4,
    "bestRefWeightLevel": 0.2,
    "approxWeighting": True,
    "gridStdevEpsilon": 1e-8,
}


def _non_default():
    """A valid config that differs from the default in every field it can."""
    return MatchBackgroundsConfig(
        usePolynomial=True,
        order=3,
        badMaskPlanes=["BAD", "my plane", 'quote"d', "back\\slash"],
        gridStatistic="MEANCLIP",
        undersampleStyle="INCREASE_NXNYSAMPLE",
        binSize=64,
        interpStyle="NONE",
        numSigmaClip=2.5,
        numIter=5,
        bestRefWeightCoverage=0.0,
        bestRefWeightVariance=1.0,
        bestRefWeightLevel=0.125,
        approxWeighting=False,
        gridStdevEpsilon=0.0,
        orderY=5,
        chebyshevTerms="TENSOR",
        splineKnotSpacing=2,
        splineRoughness=1e-3,
        clipSharpness=4.0,
        softminTemperature=0.7,
        dtype="float32",
        matchMode="GLOBAL",
        globalGauge="MEAN",
        globalWeights="PAIR",
        globalMaxPartners=4,
        refSelection="GEN3",
        bestRefWeightChi2=0.5,
        bestRefWeightGlobalCoverage=0.25,
    )


# -- defaults ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LSST_DEFAULTS))
def test_lsst_field_default(name):
    config = MatchBackgroundsConfig()
    expected = LSST_DEFAULTS[name]
    value = getattr(config, name)
    assert value == expected
    # bool fields must be real bools, and ints must not be bools (True == 1).
    assert isinstance(value, bool) == isinstance(expected, bool)


def test_bad_mask_planes_default_is_exactly_the_seven_lsst_planes():
    planes = MatchBackgroundsConfig().badMaskPlanes
    assert isinstance(planes, tuple)  # a tuple: the config must stay hashable
    assert len(planes) == 7
    assert set(planes) == {"NO_DATA", "DETECTED", "DETECTED_NEGATIVE", "SAT", "BAD", "INTRP", "CR"}


def test_choice_lists_match_the_spec():
    assert set(GRID_STATISTICS) == {"MEAN", "MEDIAN", "MEANCLIP"}
    assert set(UNDERSAMPLE_STYLES) == {
        "THROW_EXCEPTION",
        "REDUCE_INTERP_ORDER",
        "INCREASE_NXNYSAMPLE",
    }
    assert set(INTERP_STYLES) == {"CONSTANT", "LINEAR", "NATURAL_SPLINE", "AKIMA_SPLINE", "NONE"}


@pytest.mark.parametrize(
    "field, values",
    [
        ("gridStatistic", GRID_STATISTICS),
        ("undersampleStyle", UNDERSAMPLE_STYLES),
        ("interpStyle", ("CONSTANT", "LINEAR", "NATURAL_SPLINE", "AKIMA_SPLINE")),
    ],
)
def test_every_allowed_choice_is_accepted(field, values):
    for value in values:
        assert getattr(MatchBackgroundsConfig(**{field: value}), field) == value


def test_interp_none_is_accepted_on_the_polynomial_path():
    config = MatchBackgroundsConfig(usePolynomial=True, interpStyle="NONE")
    assert config.interpStyle == "NONE"


def test_weights_on_the_closed_interval_edges_are_accepted():
    config = MatchBackgroundsConfig(
        bestRefWeightCoverage=0.0, bestRefWeightVariance=1.0, bestRefWeightLevel=1
    )
    assert (config.bestRefWeightCoverage, config.bestRefWeightVariance) == (0.0, 1.0)


# -- validation ---------------------------------------------------------------------------
INVALID = [
    # unknown choices
    ("gridStatistic", {"gridStatistic": "MODE"}, ValueError),
    ("gridStatistic", {"gridStatistic": "mean"}, ValueError),  # choices are case-sensitive
    ("undersampleStyle", {"undersampleStyle": "IGNORE"}, ValueError),
    ("interpStyle", {"interpStyle": "CUBIC_SPLINE"}, ValueError),
    ("chebyshevTerms", {"chebyshevTerms": "FULL"}, ValueError),
    ("dtype", {"dtype": "float16"}, ValueError),
    # weights outside [0, 1]
    ("bestRefWeightCoverage", {"bestRefWeightCoverage": -0.1}, ValueError),
    ("bestRefWeightCoverage", {"bestRefWeightCoverage": 1.5}, ValueError),
    ("bestRefWeightVariance", {"bestRefWeightVariance": -1e-9}, ValueError),
    ("bestRefWeightVariance", {"bestRefWeightVariance": 1.0000001}, ValueError),
    ("bestRefWeightLevel", {"bestRefWeightLevel": -0.2}, ValueError),
    ("bestRefWeightLevel", {"bestRefWeightLevel": 2}, ValueError),
    ("bestRefWeightLevel", {"bestRefWeightLevel": math.nan}, ValueError),
    # ranges
    ("order", {"order": -1}, ValueError),
    ("orderY", {"orderY": -1, "chebyshevTerms": "TENSOR"}, ValueError),
    ("binSize", {"binSize": 0}, ValueError),
    ("binSize", {"binSize": -256}, ValueError),
    ("numIter", {"numIter": -1}, ValueError),
    ("numSigmaClip", {"numSigmaClip": 0}, ValueError),
    ("gridStdevEpsilon", {"gridStdevEpsilon": -1e-8}, ValueError),
    ("gridStdevEpsilon", {"gridStdevEpsilon": math.inf}, ValueError),
    ("splineRoughness", {"splineRoughness": -0.5}, ValueError),
    ("splineKnotSpacing", {"splineKnotSpacing": 0}, ValueError),
    ("clipSharpness", {"clipSharpness": 0.0}, ValueError),
    ("clipSharpness", {"clipSharpness": -2.0}, ValueError),
    ("clipSharpness", {"clipSharpness": math.inf}, ValueError),
    ("clipSharpness", {"clipSharpness": "4"}, TypeError),
    ("softminTemperature", {"softminTemperature": 0.0}, ValueError),
    ("softminTemperature", {"softminTemperature": -1.0}, ValueError),
    # combinations
    ("interpStyle", {"interpStyle": "NONE"}, ValueError),  # spline path (the default)
    ("interpStyle", {"interpStyle": "NONE", "usePolynomial": False}, ValueError),
    ("orderY", {"orderY": 3, "order": 4}, ValueError),  # TOTAL basis has one order
    ("badMaskPlanes", {"badMaskPlanes": ["BAD", ""]}, ValueError),
    # wrong types
    ("order", {"order": 2.5}, TypeError),
    ("order", {"order": True}, TypeError),
    ("order", {"order": "8"}, TypeError),
    ("binSize", {"binSize": 256.0}, TypeError),
    ("binSize", {"binSize": False}, TypeError),
    ("numIter", {"numIter": 2.0}, TypeError),
    ("usePolynomial", {"usePolynomial": 1}, TypeError),
    ("usePolynomial", {"usePolynomial": "False"}, TypeError),
    ("approxWeighting", {"approxWeighting": 0}, TypeError),
    ("numSigmaClip", {"numSigmaClip": "3"}, TypeError),
    ("bestRefWeightLevel", {"bestRefWeightLevel": True}, TypeError),
    ("gridStdevEpsilon", {"gridStdevEpsilon": None}, TypeError),
    ("badMaskPlanes", {"badMaskPlanes": "BAD"}, TypeError),
    ("badMaskPlanes", {"badMaskPlanes": 7}, TypeError),
    ("badMaskPlanes", {"badMaskPlanes": None}, TypeError),
]


@pytest.mark.parametrize(
    "field, changes, error", INVALID, ids=[f"{f}-{list(c.values())}" for f, c, _ in INVALID]
)
def test_invalid_value_raises_naming_the_field(field, changes, error):
    with pytest.raises(error, match=field):
        MatchBackgroundsConfig(**changes)


@pytest.mark.parametrize("field, changes, error", INVALID[:6])
def test_replace_and_fromDict_validate_too(field, changes, error):
    with pytest.raises(error, match=field):
        MatchBackgroundsConfig().replace(**changes)
    with pytest.raises(error, match=field):
        MatchBackgroundsConfig.fromDict(changes)


def test_config_is_frozen():
    config = MatchBackgroundsConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.order = 3  # type: ignore[misc]


# -- unknown keys -------------------------------------------------------------------------
def test_unknown_keys_are_refused():
    with pytest.raises(TypeError, match="binsize"):
        MatchBackgroundsConfig(binsize=128)  # LSST names are case-sensitive
    with pytest.raises(ValueError, match="binsize"):
        MatchBackgroundsConfig.fromDict({"binsize": 128})
    with pytest.raises(ValueError, match="colour"):
        MatchBackgroundsConfig().replace(colour="red")
    with pytest.raises(ValueError, match="extra"):
        MatchBackgroundsConfig.fromToml('order = 3\nextra = "x"\n')


# -- round trips --------------------------------------------------------------------------
@pytest.mark.parametrize("make", [MatchBackgroundsConfig, _non_default], ids=["default", "custom"])
def test_dict_round_trip(make):
    config = make()
    as_dict = config.toDict()
    assert isinstance(as_dict["badMaskPlanes"], list)
    assert set(as_dict) == {f.name for f in dataclasses.fields(MatchBackgroundsConfig)}
    back = MatchBackgroundsConfig.fromDict(as_dict)
    assert back == config
    assert back.toDict() == as_dict


@pytest.mark.parametrize("make", [MatchBackgroundsConfig, _non_default], ids=["default", "custom"])
def test_toml_round_trip(make):
    config = make()
    text = config.toToml()
    back = MatchBackgroundsConfig.fromToml(text)
    assert back == config
    # Same types too: an int field must not come back as a float or a bool.
    for field in dataclasses.fields(MatchBackgroundsConfig):
        assert type(getattr(back, field.name)) is type(getattr(config, field.name)), field.name


@pytest.mark.parametrize("make", [MatchBackgroundsConfig, _non_default], ids=["default", "custom"])
def test_save_load_round_trip(make, tmp_path):
    config = make()
    path = tmp_path / "match.toml"
    config.save(path)
    assert path.is_file()
    back = MatchBackgroundsConfig.load(str(path))  # str paths work too
    assert back == config
    assert hash(back) == hash(config)


def test_hand_written_toml_is_read():
    text = 'usePolynomial = true\norder = 4\nbadMaskPlanes = ["BAD", "CR"]\nbinSize = 128\n'
    config = MatchBackgroundsConfig.fromToml(text)
    assert config == MatchBackgroundsConfig(
        usePolynomial=True, order=4, badMaskPlanes=("BAD", "CR"), binSize=128
    )


def test_non_default_differs_from_default_in_every_field():
    # Guards the round-trip tests: they would pass trivially on a field left at default.
    a, b = MatchBackgroundsConfig().toDict(), _non_default().toDict()
    assert [k for k in a if a[k] == b[k]] == []


# -- hashing (a static jit argument) -----------------------------------------------------
def test_equal_configs_are_equal_and_hash_equal():
    a = MatchBackgroundsConfig(badMaskPlanes=["BAD", "CR"], binSize=64)
    b = MatchBackgroundsConfig(badMaskPlanes=("BAD", "CR"), binSize=64)
    assert a == b
    assert hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a != a.replace(binSize=32)
    assert a != a.replace(badMaskPlanes=["CR", "BAD"])  # order matters for equality


def test_config_is_a_static_jit_argument():
    traces = []

    @jax.jit
    def scaled(x, n):
        return x * n

    def f(x, config):
        traces.append(config)
        return scaled(x, config.binSize)

    f_jit = jax.jit(f, static_argnums=1)
    x = jnp.arange(3.0)
    out = f_jit(x, MatchBackgroundsConfig(binSize=4))
    assert jnp.array_equal(out, x * 4)
    f_jit(x, MatchBackgroundsConfig(binSize=4))  # equal config: cached, no retrace
    assert len(traces) == 1
    out = f_jit(x, MatchBackgroundsConfig(binSize=8))  # different config: retrace
    assert len(traces) == 2
    assert jnp.array_equal(out, x * 8)
