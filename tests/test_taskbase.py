"""Tests of the LSST-shaped Task base Module, ConfigurableField and Struct."""

import dataclasses
import logging
import time
import weakref

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmatch._taskbase import ConfigurableField, Struct, Task

# --- a three-level hierarchy: top -> sub -> subsub --------------------------------------


@dataclasses.dataclass(frozen=True)
class SubSubConfig:
    factor: float = 2.0


class SubSubTask(Task):
    ConfigClass = SubSubConfig
    _DefaultName = "subsub"

    def getSchemaCatalogs(self):
        return {"subsubSchema": "catalog-b"}


@dataclasses.dataclass(frozen=True)
class SubConfig:
    subsub: ConfigurableField = dataclasses.field(
        default_factory=lambda: SubSubTask.makeField("the sub-subtask")
    )


class SubTask(Task):
    ConfigClass = SubConfig
    _DefaultName = "sub"

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        self.makeSubtask("subsub")


@dataclasses.dataclass(frozen=True)
class TopConfig:
    sub: ConfigurableField = dataclasses.field(
        default_factory=lambda: SubTask.makeField("the subtask")
    )
    threshold: float = 3.0


class TopTask(Task):
    """A task with an array field, as the real tasks will have."""

    ConfigClass = TopConfig
    _DefaultName = "top"
    weight: jax.Array

    def __init__(self, config=None, *, weight=1.0, **kwargs):
        super().__init__(config, **kwargs)
        self.weight = jnp.asarray(weight)
        self.makeSubtask("sub")

    def scale(self, x):
        return self.weight * x

    def getSchemaCatalogs(self):
        return {"topSchema": "catalog-a"}


@pytest.fixture
def top():
    return TopTask()


def test_names_and_hierarchy(top):
    assert (top.getName(), top.sub.getName(), top.sub.subsub.getName()) == ("top", "sub", "subsub")
    assert top.getFullName() == "top"
    assert top.sub.getFullName() == "top.sub"
    assert top.sub.subsub.getFullName() == "top.sub.subsub"
    assert top.sub.config is top.config.sub.value
    assert top.sub.subsub.config.factor == 2.0
    assert top.sub.log.name == "top.sub" and top.sub.subsub.log.name == "top.sub.subsub"
    assert TopTask(name="other").sub.getFullName() == "other.sub"


def test_task_dict_holds_weakrefs(top):
    for task in (top, top.sub):  # same answer from anywhere in the hierarchy, as LSST
        taskDict = task.getTaskDict()
        assert list(taskDict) == ["top", "top.sub", "top.sub.subsub"]
        assert all(isinstance(ref, weakref.ref) for ref in taskDict.values())
        assert taskDict["top"]() is top
        assert taskDict["top.sub"]() is top.sub
        assert taskDict["top.sub.subsub"]() is top.sub.subsub


def test_full_metadata_and_empty(top):
    top.metadata["a"] = 1
    top.sub.metadata["b"] = 2
    top.sub.subsub.metadata["c"] = 3
    assert top.getFullMetadata() == {"top.a": 1, "top:sub.b": 2, "top:sub:subsub.c": 3}
    top.sub.subsub.emptyMetadata()  # clears every level, like LSST's shared task dict
    assert top.getFullMetadata() == {}
    assert top.metadata == {} and top.sub.metadata == {}


def test_timer_records_and_logs(top, caplog):
    caplog.set_level(logging.INFO, logger="top")
    with top.sub.timer("work", logLevel=logging.INFO):
        time.sleep(0.02)
    md = top.sub.metadata
    assert set(md) == {
        "workStartUtc",
        "workStartCpuTime",
        "workEndUtc",
        "workEndCpuTime",
        "workDuration",
    }
    assert md["workDuration"] >= 0.02
    assert md["workEndUtc"] >= md["workStartUtc"]  # ISO strings sort in time order
    assert md["workEndCpuTime"] >= md["workStartCpuTime"]
    records = [r for r in caplog.records if r.name == "top.sub"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "work" in records[0].getMessage()
    assert "top:sub.workDuration" in top.getFullMetadata()


def test_timer_records_on_exception(top):
    with pytest.raises(RuntimeError, match="boom"), top.timer("fail"):
        raise RuntimeError("boom")
    assert {"failStartUtc", "failEndUtc", "failDuration"} <= set(top.metadata)


def test_make_subtask_errors(top):
    with pytest.raises(TypeError, match="provided automatically"):
        top.makeSubtask("sub", config=SubConfig())
    with pytest.raises(TypeError, match="provided automatically"):
        top.makeSubtask("sub", parentTask=top)
    with pytest.raises(ValueError, match="'nosuch'"):
        top.makeSubtask("nosuch")
    with pytest.raises(TypeError, match="'threshold'.*not a ConfigurableField"):
        top.makeSubtask("threshold")
    with pytest.raises(ValueError, match="already"):
        top.makeSubtask("sub")
    with pytest.raises(AttributeError, match="nosuch"):
        _ = top.nosuch


def test_constructor_errors():
    with pytest.raises(ValueError, match="must not contain"):
        TopTask(name="a.b")

    class Nameless(Task):
        ConfigClass = SubSubConfig

    with pytest.raises(ValueError, match="_DefaultName"):
        Nameless()
    assert Nameless(name="ok").getName() == "ok"
    with pytest.raises(TypeError, match="hashable"):
        Nameless(config={"not": "hashable"}, name="x")


def test_schema_catalogs_merge(top):
    assert Task.getSchemaCatalogs(top.sub) == {}
    expected = {"topSchema": "catalog-a", "subsubSchema": "catalog-b"}
    assert top.getAllSchemaCatalogs() == expected
    assert top.sub.getAllSchemaCatalogs() == expected


def test_configurable_field_retarget_and_apply():
    @dataclasses.dataclass(frozen=True)
    class OtherConfig:
        factor: float = 5.0

    class OtherTask(Task):
        ConfigClass = OtherConfig
        _DefaultName = "other"

    field = SubSubTask.makeField("doc")
    assert field.target is SubSubTask and field.value == SubSubConfig() and field.doc == "doc"
    task = field.apply(name="x")
    assert isinstance(task, SubSubTask) and task.config is field.value
    field.retarget(OtherTask)
    assert field.target is OtherTask and field.value == OtherConfig()
    assert hash(field) == object.__hash__(field)  # identity: usable as a frozen default
    assert {field: 1}[field] == 1 and field != SubSubTask.makeField("doc")


def test_pytree_leaves_and_filter_jit_no_retrace(top):
    leaves = jax.tree_util.tree_leaves(top)
    assert len(leaves) == 1 and leaves[0] is top.weight

    traces = []

    @eqx.filter_jit
    def apply(task, x):
        traces.append(None)
        return task.scale(x)

    assert float(apply(top, 3.0)) == 3.0
    moved = eqx.tree_at(lambda t: t.weight, top, jnp.asarray(4.0))
    assert float(apply(moved, 3.0)) == 12.0
    assert float(eqx.filter_jit(TopTask.scale)(moved, 2.0)) == 8.0
    assert len(traces) == 1  # only an array leaf changed: no retrace
    apply(TopTask(), 3.0)
    # a new TopTask's config holds a new ConfigurableField, compared by identity: retrace
    assert len(traces) == 2


# --- static state compared by value ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LeafConfig:
    offset: float = 1.0


class LeafTask(Task):
    """A subtask with an array leaf of its own."""

    ConfigClass = LeafConfig
    _DefaultName = "leaf"
    scale: jax.Array

    def __init__(self, config=None, *, scale=1.0, **kwargs):
        super().__init__(config, **kwargs)
        self.scale = jnp.asarray(scale)


class HolderTask(Task):
    ConfigClass = SubSubConfig
    _DefaultName = "holder"

    def __init__(self, config=None, *, scale=1.0, **kwargs):
        super().__init__(config, **kwargs)
        # built by hand: the subtask's array is not a pytree leaf of the holder
        self._state.subtasks["leaf"] = LeafTask(scale=scale, name="leaf", parentTask=self)


def test_new_instances_with_equal_state_share_compilations():
    traces = []

    @eqx.filter_jit
    def apply(task, x):
        traces.append(None)
        return task.leaf.scale * x * task.config.factor

    x = jnp.asarray(3.0)
    assert float(apply(HolderTask(), x)) == 6.0
    assert float(apply(HolderTask(), x)) == 6.0  # a new, equal instance
    assert len(traces) == 1
    # the subtask's array is a constant of the trace, so a different value must retrace
    assert float(apply(HolderTask(scale=2.0), x)) == 12.0
    assert len(traces) == 2
    assert float(apply(HolderTask(name="other"), x)) == 6.0  # another name: retrace
    assert len(traces) == 3
    a, b = HolderTask(), HolderTask()
    a.metadata["anything"] = 1  # metadata does not enter the key
    assert a._state == b._state and hash(a._state) == hash(b._state)


def test_free_attributes_as_on_an_lsst_task(top):
    top.debugDataIdString = "Test Visit"  # LSST's task sets this during run
    assert top.debugDataIdString == "Test Visit"
    with pytest.raises(dataclasses.FrozenInstanceError):
        top.weight = jnp.asarray(2.0)  # fields stay frozen (equinox)
    with pytest.raises(AttributeError, match="config"):
        top.config = TopConfig()
    assert len(jax.tree_util.tree_leaves(top)) == 1  # not a pytree leaf


def test_configurable_field_passes_attributes_to_its_config():
    field = SubSubTask.makeField("doc")
    assert field.factor == 2.0  # read through to the config
    with pytest.raises(dataclasses.FrozenInstanceError):
        field.factor = 3.0  # this config is a frozen dataclass
    with pytest.raises(ValueError, match="SubSubConfig"):
        field.value = LeafConfig()


def test_struct():
    s = Struct(a=1, b=np.float64(2.5))
    assert s.a == 1 and s.b == 2.5 and len(s) == 2
    d = s.getDict()
    d["a"] = 99
    assert s.a == 1 and d == {"a": 99, "b": 2.5}
    assert repr(Struct(a=1, b="x")) == "Struct(a=1, b='x')"
    assert s == Struct(a=1, b=2.5) and s != Struct(a=1)
    c = s.copy()
    c.a = 5
    assert s.a == 1 and c == Struct(a=5, b=2.5)
    s.mergeItems(Struct(c=3, d=4, e=5), "c", "d")
    assert s.getDict() == {"a": 1, "b": 2.5, "c": 3, "d": 4}
    with pytest.raises(ValueError, match="already exist"):
        s.mergeItems(Struct(a=0, z=0), "z", "a")
    assert not hasattr(s, "z")  # nothing copied on a clash
    with pytest.raises(ValueError, match="__"):
        Struct(__x=1)
