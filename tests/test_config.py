"""Tests of `MatchBackgroundsConfig`: LSST defaults, validation, round trips, hashing."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
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


# == the mutable, LSST-style config (pex_config idioms) ==================================
from jaxmatch import MatchBackgroundsTask  # noqa: E402
from jaxmatch._config import MatchBackgroundsTaskConfig  # noqa: E402
from jaxmatch._exceptions import FieldValidationError  # noqa: E402


def test_task_config_takes_lsst_assignments():
    task = MatchBackgroundsTask()
    assert isinstance(task.config, MatchBackgroundsTaskConfig)
    task.config.order = 4  # LSST's tests' setUp
    task.config.usePolynomial = True
    task.config.badMaskPlanes.append("EDGE")
    snap = task.staticConfig
    assert isinstance(snap, MatchBackgroundsConfig)
    assert (snap.order, snap.usePolynomial) == (4, True)
    assert snap.badMaskPlanes[-1] == "EDGE"
    assert task.config == snap and task.config != MatchBackgroundsConfig()


@pytest.mark.parametrize(
    "field, value",
    [("order", 2.5), ("order", True), ("usePolynomial", 1), ("binSize", "128"),
     ("badMaskPlanes", "BAD"), ("gridStatistic", "MODE"), ("interpStyle", "cubic")],
)  # fmt: skip
def test_assignment_checks_type_and_choice(field, value):
    config = MatchBackgroundsTaskConfig()
    with pytest.raises(FieldValidationError, match=field) as info:
        setattr(config, field, value)
    # pex_config's class is a ValueError; jaxmatch raised TypeError for types before
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert getattr(config, field) == getattr(MatchBackgroundsTaskConfig(), field)  # unchanged


def test_unknown_field_is_an_attribute_error():
    with pytest.raises(AttributeError, match="binsize"):
        MatchBackgroundsTaskConfig().binsize = 128


def test_validate_checks_ranges_and_combinations_and_each_call():
    task = MatchBackgroundsTask()
    task.config.interpStyle = "NONE"  # valid for the polynomial path only
    with pytest.raises(FieldValidationError, match="interpStyle"):
        task.config.validate()
    with pytest.raises(ValueError, match="interpStyle"):  # the next call refuses it too
        task.run([jm_exposure()], "deepCoadd_tempExp")
    task.config.usePolynomial = True  # the combination is fine now
    task.config.validate()
    task.config.bestRefWeightLevel = 1.5
    with pytest.raises(FieldValidationError, match="bestRefWeightLevel"):
        task.config.validate()


def jm_exposure():
    import jaxmatch as jm

    return jm.Exposure(jnp.ones((8, 8)))


def test_freeze_refuses_changes():
    config = MatchBackgroundsTaskConfig()
    config.freeze()
    with pytest.raises(FieldValidationError, match="frozen"):
        config.binSize = 128
    with pytest.raises(FieldValidationError, match="frozen"):
        config.badMaskPlanes.append("EDGE")
    assert config.binSize == 256 and "EDGE" not in config.badMaskPlanes


def test_python_override_file_as_pex_config(tmp_path):
    path = tmp_path / "réglages du ciel.py"  # spaces and accents
    path.write_text("config.binSize = 128\nconfig.order = 4\nroot.usePolynomial = True\n")
    config = MatchBackgroundsTaskConfig()
    config.load(path)
    assert (config.binSize, config.order, config.usePolynomial) == (128, 4, True)
    bad = tmp_path / "bad.py"
    bad.write_text("config.binSize = 'large'\n")
    with pytest.raises(FieldValidationError, match="binSize"):
        config.load(bad)


def test_save_load_round_trip_of_the_mutable_config(tmp_path):
    config = _non_default().thaw()
    path = tmp_path / "overrides file.py"
    config.save(path)
    back = MatchBackgroundsTaskConfig()
    back.load(str(path))
    assert back == config and back.snapshot() == _non_default()
    toml = tmp_path / "c.toml"  # the frozen config's TOML files load too
    _non_default().save(toml)
    fresh = MatchBackgroundsTaskConfig()
    fresh.load(toml)
    assert fresh.snapshot() == _non_default()


def test_thaw_and_snapshot_are_inverse():
    frozen = _non_default()
    thawed = frozen.thaw()
    assert thawed.snapshot() == frozen and hash(thawed.staticKey()) == hash(frozen)
    assert MatchBackgroundsTaskConfig.fromFrozen(frozen) == thawed
    with pytest.raises(TypeError):
        hash(thawed)  # mutable: its snapshot is the key


def test_subtask_config_as_pex_config():
    from jaxmatch._taskbase import Task

    @dataclasses.dataclass(frozen=True)
    class ParentFrozen:
        matcher: object = dataclasses.field(
            default_factory=lambda: MatchBackgroundsTask.makeField("matching")
        )
        factor: float = 1.0

    class ParentConfig(jm_config_base(), frozen=ParentFrozen):
        pass

    class Parent(Task):
        ConfigClass = ParentConfig
        _DefaultName = "parent"

        def __init__(self, config=None, **kw):
            super().__init__(config, **kw)
            self.makeSubtask("matcher")

    config = ParentConfig()
    config.matcher.binSize = 64  # pex_config: attributes of the subtask's config
    config.factor = 2  # an int for a float field is converted, as pex_config
    assert config.matcher.value.binSize == 64 and config.factor == 2.0
    parent = Parent(config)
    assert parent.matcher.staticConfig.binSize == 64
    parent.config.matcher.order = 3  # reaches the built subtask's static snapshot
    assert parent.matcher.staticConfig.order == 3
    replacement = MatchBackgroundsTaskConfig(binSize=32)
    config2 = ParentConfig()
    config2.matcher = replacement  # a whole config assigned to the field
    assert config2.matcher.value is replacement
    with pytest.raises(FieldValidationError, match="MatchBackgroundsTaskConfig"):
        config2.matcher = 3
    text = config.saveToString()
    assert "config.matcher.binSize = 64" in text and "retarget" in text
    again = ParentConfig()
    again.loadFromString(text)
    assert again.matcher.value.binSize == 64 and again.matcher.target is MatchBackgroundsTask


def jm_config_base():
    from jaxmatch._config import Config

    return Config


# -- value-keyed compilation reuse: counted traces ----------------------------------------
@pytest.fixture
def traces():
    """Counts every jit trace in the process while the test runs (jax.monitoring)."""
    import jax.monitoring

    counter = {"n": 0, "names": []}

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            counter["n"] += 1
            counter["names"].append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield counter
    jax.monitoring.unregister_event_duration_listener(listener)


def _pair(planes=None):
    """64 x 64 reference and science with one masked blob; ``planes`` relabels bits."""
    import jaxmatch as jm

    rng = np.random.default_rng(5)
    planes = dict(jm.DEFAULT_MASK_PLANES if planes is None else planes)
    y, x = np.mgrid[:64, :64]
    sci = rng.standard_normal((64, 64)) + 0.01 * x
    ref = rng.standard_normal((64, 64)) + 3.0
    mask = np.zeros((64, 64), np.int32)
    mask[10:20, 10:20] = 1 << planes["DETECTED"]
    sci[10:20, 10:20] += 100  # masked: must not matter
    mask[30:34, 40:44] = 1 << planes["SUSPECT"]  # not a bad plane
    return jm.Exposure(ref, mask_planes=planes), jm.Exposure(sci, mask, mask_planes=planes)


SMALL = dict(binSize=16, interpStyle="LINEAR")


def test_equal_configs_and_new_task_instances_trace_once(traces):
    ref, sci = _pair()
    first = MatchBackgroundsTask()
    first.config.update(**SMALL)
    model = first.matchBackgrounds(ref, _pair()[1]).backgroundModel.getImage()
    assert traces["names"].count("match_batch") == 1
    before = traces["n"]
    for config in (MatchBackgroundsTaskConfig(**SMALL), MatchBackgroundsConfig(**SMALL)):
        task = MatchBackgroundsTask(config)  # a new instance, an equal config
        again = task.matchBackgrounds(ref, _pair()[1]).backgroundModel.getImage()
        np.testing.assert_array_equal(again, model)
    assert traces["n"] == before, traces["names"][before:]  # nothing traced again
    first.config.binSize = 32  # a different config compiles
    first.matchBackgrounds(ref, _pair()[1])
    assert traces["names"].count("match_batch") == 2


def test_mask_plane_dictionaries_do_not_recompile(traces):
    import jaxmatch as jm

    config = MatchBackgroundsConfig(**SMALL)
    ref, sci = _pair()
    expected = jm.match(ref, sci, config)
    before = traces["n"]
    # the same planes on other bits, and a dictionary with an extra plane
    shuffled = {name: (bit + 5) % 9 for name, bit in jm.DEFAULT_MASK_PLANES.items()}
    extra = {**jm.DEFAULT_MASK_PLANES, "STREAK": 12}
    for planes in (shuffled, extra):
        ref2, sci2 = _pair(planes)
        got = jm.match(ref2, sci2, config)
        np.testing.assert_array_equal(got.model.coefficients, expected.model.coefficients)
    assert traces["n"] == before


def test_mask_plane_dictionaries_do_not_recompile_the_global_solve(traces):
    import jaxmatch as jm

    config = MatchBackgroundsConfig(matchMode="GLOBAL", **SMALL)

    def solve(planes=None):
        ref, sci = _pair(planes)
        batch = jm.stack_exposures([ref, sci])
        return jm.match_global(
            batch, np.array([[0, 1]]), np.array([0, 0]), np.array([True, False]), config
        )

    expected = solve()
    before = traces["names"].count("_match_global")
    assert before == 1
    shuffled = {name: (bit + 5) % 9 for name, bit in jm.DEFAULT_MASK_PLANES.items()}
    extra = {**jm.DEFAULT_MASK_PLANES, "STREAK": 12}
    for planes in (shuffled, extra):
        got = solve(planes)  # same bad pixels (the blob), other bits: same answer
        np.testing.assert_array_equal(got.model.coefficients, expected.model.coefficients)
    assert traces["names"].count("_match_global") == before


def test_user_jit_over_tasks_reuses_and_follows_config_changes():
    import equinox as eqx

    count = []

    @eqx.filter_jit
    def scaled(task, x):
        count.append(1)
        return task.refWeights.sum() * x + task.staticConfig.binSize

    one, two = jnp.asarray(1.0), jnp.asarray(2.0)  # arrays: Python floats would be static
    a = MatchBackgroundsTask()
    assert float(scaled(a, one)) == pytest.approx(1.0 + 256)
    assert float(scaled(MatchBackgroundsTask(), two)) == pytest.approx(2.0 + 256)
    assert len(count) == 1  # a new, equal task: the same compilation
    a.config.binSize = 128  # the task's static key follows: traced again, new value
    assert float(scaled(a, one)) == pytest.approx(1.0 + 128)
    assert len(count) == 2
    a.config.bestRefWeightLevel = 0.6  # the array leaf follows the config too
    assert float(scaled(a, one)) == pytest.approx(1.4 + 128)
    # (every config field is part of the snapshot, so this traced once more)
    b = eqx.tree_at(lambda t: t.refWeights, a, a.refWeights * 2)  # only an array: reused
    assert float(scaled(b, one)) == pytest.approx(2.8 + 128)
    assert len(count) == 3
