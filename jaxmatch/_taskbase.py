"""LSST-shaped task conveniences: `Struct`, `ConfigurableField` and the `Task` base Module.

Mirrors `lsst.pipe.base.Task` / `lsst.pipe.base.Struct` / `lsst.pex.config.ConfigurableField`
(names and semantics of the LSST API page). `Task` is an `equinox.Module`: its Python-side
state (name, parent, metadata, subtasks, logger) lives in one static `TaskState`, hashed by
identity, so the only pytree leaves of a task are the array fields its subclass adds, and
`eqx.filter_jit` does not retrace when only those change.
"""
# pyright: reportAssignmentType=false
# (the parent task is Optional until attached.)

from __future__ import annotations

import contextlib
import datetime
import logging
import time
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

import equinox as eqx


class Struct:
    """Attribute bag, like `lsst.pipe.base.Struct`: `Struct(a=1, b=2).a == 1`."""

    def __init__(self, **keyArgs: Any):
        for name, value in keyArgs.items():
            self._add(name, value)

    def _add(self, name: str, value: Any) -> None:
        if name.startswith("__"):  # LSST refuses these too (it raises RuntimeError)
            raise ValueError(f"Struct item name {name!r} is invalid: must not begin with '__'")
        setattr(self, name, value)

    def getDict(self) -> dict[str, Any]:
        """Return a shallow copy of the items as a dict (name → value)."""
        return dict(self.__dict__)

    def mergeItems(self, struct: Struct, *names: str) -> None:
        """Copy the items `names` of `struct` into this one.

        Raises `ValueError` (LSST: `RuntimeError`) if a name already exists here; unlike LSST,
        nothing is copied in that case.
        """
        clash = [name for name in names if name in self.__dict__]
        if clash:
            raise ValueError(f"Struct.mergeItems: items {clash} already exist in this Struct")
        for name in names:
            self._add(name, getattr(struct, name))

    def copy(self) -> Struct:
        """Return a shallow copy."""
        return type(self)(**self.__dict__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Struct):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __len__(self) -> int:
        return len(self.__dict__)

    def __repr__(self) -> str:
        items = ", ".join(f"{name}={value!r}" for name, value in self.__dict__.items())
        return f"{type(self).__name__}({items})"


class ConfigurableField:
    """A config entry naming a subtask class and holding its config (`lsst.pex.config`).

    Arguments:
        doc: help text.
        target: the `Task` subclass to build.
        ConfigClass: its config class; defaults to `target.ConfigClass`.
        value: the config instance; defaults to `ConfigClass()`.

    Hashed and compared by identity, so it can be the default of a frozen dataclass field.
    """

    def __init__(
        self, doc: str, target: type[Task], ConfigClass: type | None = None, value: Any = None
    ):
        self.doc = doc
        self.target = target
        self.ConfigClass = _config_class(target, ConfigClass)
        self.value = self.ConfigClass() if value is None else value

    def retarget(self, target: type[Task], ConfigClass: type | None = None) -> None:
        """Build `target` instead; `value` is reset only if the config class changes (as LSST)."""
        ConfigClass = _config_class(target, ConfigClass)
        self.target = target
        if ConfigClass is not self.ConfigClass:
            self.ConfigClass = ConfigClass
            self.value = ConfigClass()

    def apply(self, *args: Any, **keyArgs: Any) -> Task:
        """Build the target task with `config=self.value`; other arguments are passed on."""
        return self.target(*args, config=self.value, **keyArgs)

    def __repr__(self) -> str:
        return f"ConfigurableField(target={self.target.__name__}, doc={self.doc!r})"


def _config_class(target: type, ConfigClass: type | None) -> type:
    ConfigClass = ConfigClass or getattr(target, "ConfigClass", None)
    if ConfigClass is None:
        raise TypeError(f"ConfigurableField: {target!r} has no ConfigClass; pass ConfigClass=")
    return ConfigClass


_MISSING = object()


class TaskState:
    """Mutable Python-side state of a task; equality and hashing by identity.

    Attributes: `name`, `full_name` ("top.sub"), `parent` (`weakref.ref` to the parent task or
    None), `metadata` (item → value), `subtasks` (name → task, insertion ordered), `log`.
    """

    def __init__(self, name: str, full_name: str, parent: weakref.ref | None, log: logging.Logger):
        self.name = name
        self.full_name = full_name
        self.parent = parent
        self.metadata: dict[str, Any] = {}
        self.subtasks: dict[str, Task] = {}
        self.log = log

    def __repr__(self) -> str:
        return f"TaskState(name={self.full_name!r})"


class Task(eqx.Module):
    """Base class of tasks, mirroring `lsst.pipe.base.Task`, as an `equinox.Module`.

    Arguments:
        config: an instance of `ConfigClass` (default `ConfigClass()`); must be hashable,
            e.g. a frozen dataclass, since it is a static field.
        name: brief task name, without '.'; defaults to `_DefaultName`.
        parentTask: the parent task, or None for a top-level task.
        log: logger; defaults to `logging.getLogger(full name)`, a child of the parent's.

    Subclasses set `_DefaultName` and `ConfigClass`, may add (array) fields, and in their own
    `__init__` call `super().__init__(config, name=..., parentTask=..., log=...)` first.
    Subtasks are reachable as attributes but are *not* pytree leaves of their parent.
    """

    config: Any = eqx.field(static=True)
    _state: TaskState = eqx.field(static=True)

    _DefaultName: ClassVar[str]
    ConfigClass: ClassVar[type]

    def __init__(
        self,
        config: Any = None,
        *,
        name: str | None = None,
        parentTask: Task | None = None,
        log: logging.Logger | None = None,
    ):
        cls = type(self)
        if config is None:
            if getattr(cls, "ConfigClass", None) is None:
                raise TypeError(f"{cls.__name__}: pass config= or set the ConfigClass attribute")
            config = cls.ConfigClass()
        try:
            hash(config)
        except TypeError as err:
            raise TypeError(
                f"{cls.__name__}: config must be hashable (a static field); use a frozen dataclass"
            ) from err
        name = name if name is not None else getattr(cls, "_DefaultName", None)
        if name is None:
            raise ValueError(f"{cls.__name__}: pass name= or set the _DefaultName attribute")
        if "." in name:
            raise ValueError(f"Task name {name!r} must not contain '.'")
        if parentTask is None:
            full_name, parent = name, None
            log = log if log is not None else logging.getLogger(full_name)
        else:
            full_name, parent = f"{parentTask.getFullName()}.{name}", weakref.ref(parentTask)
            log = log if log is not None else parentTask.log.getChild(name)
        self.config = config
        self._state = TaskState(name, full_name, parent, log)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: fall back on the subtasks (the Module is frozen).
        if not name.startswith("_"):
            state = self.__dict__.get("_state")
            if state is not None and name in state.subtasks:
                return state.subtasks[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def log(self) -> logging.Logger:
        """This task's logger."""
        return self._state.log

    @property
    def metadata(self) -> dict[str, Any]:
        """This task's own metadata (item → value); mutable."""
        return self._state.metadata

    def getName(self) -> str:
        """Return the brief name of the task ("sub")."""
        return self._state.name

    def getFullName(self) -> str:
        """Return the hierarchical name: "top", "top.sub", "top.sub.sub2"."""
        return self._state.full_name

    def _hierarchy(self) -> Iterator[Task]:
        # As LSST's shared task dict: the whole tree from the (alive) root, whichever task asks.
        root: Task = self
        while root._state.parent is not None and root._state.parent() is not None:
            root = root._state.parent()
        stack = [root]
        while stack:
            task = stack.pop()
            yield task
            stack.extend(reversed(task._state.subtasks.values()))

    def getTaskDict(self) -> dict[str, weakref.ref]:
        """Return full name → `weakref.ref(task)` for the top-level task and all its subtasks."""
        return {task.getFullName(): weakref.ref(task) for task in self._hierarchy()}

    def getFullMetadata(self) -> dict[str, Any]:
        """Return all tasks' metadata, flat, keyed "top:sub.item" (LSST's naming)."""
        return {
            f"{task.getFullName().replace('.', ':')}.{item}": value
            for task in self._hierarchy()
            for item, value in task.metadata.items()
        }

    def emptyMetadata(self) -> None:
        """Clear the metadata of every task in the hierarchy."""
        for task in self._hierarchy():
            task.metadata.clear()

    def getSchemaCatalogs(self) -> dict[str, Any]:
        """Return this task's schema catalogs (dataset type → catalog); override if any."""
        return {}

    def getAllSchemaCatalogs(self) -> dict[str, Any]:
        """Return the schema catalogs of every task in the hierarchy, merged into one dict."""
        catalogs: dict[str, Any] = {}
        for task in self._hierarchy():
            catalogs.update(task.getSchemaCatalogs())
        return catalogs

    @classmethod
    def makeField(cls, doc: str) -> ConfigurableField:
        """Return a `ConfigurableField` for this task class, to put in a parent's config."""
        return ConfigurableField(doc=doc, target=cls)

    def makeSubtask(self, name: str, **keyArgs: Any) -> None:
        """Build the subtask described by `self.config.<name>` and make it `self.<name>`.

        Arguments:
            name: brief name of the subtask; `self.config.<name>` must be a ConfigurableField.
            **keyArgs: extra constructor arguments (not `config` or `parentTask`).
        """
        for key in ("config", "parentTask"):
            if key in keyArgs:
                raise TypeError(f"makeSubtask: {key!r} is provided automatically; do not pass it")
        field = getattr(self.config, name, _MISSING)
        if field is _MISSING:
            raise ValueError(f"makeSubtask: config of {self.getFullName()!r} has no field {name!r}")
        if not isinstance(field, ConfigurableField):
            raise TypeError(
                f"makeSubtask: config field {name!r} is {type(field).__name__}, "
                "not a ConfigurableField"
            )
        if name in self._state.subtasks or hasattr(type(self), name) or name in self.__dict__:
            raise ValueError(f"makeSubtask: {name!r} is already an attribute or subtask")
        subtask = field.target(config=field.value, name=name, parentTask=self, **keyArgs)
        self._state.subtasks[name] = subtask

    @contextlib.contextmanager
    def timer(self, name: str, logLevel: int = logging.DEBUG) -> Iterator[None]:
        """Time a block: records `name` + StartUtc/StartCpuTime/EndUtc/EndCpuTime/Duration.

        Arguments:
            name: prefix of the metadata items.
            logLevel: level of the one log message giving the duration.

        The End* items and Duration (wall time [s]) are recorded even if the block raises.
        """
        md = self.metadata
        md[name + "StartUtc"] = datetime.datetime.now(datetime.UTC).isoformat()
        md[name + "StartCpuTime"] = time.process_time()
        start = time.perf_counter()
        try:
            yield
        finally:
            md[name + "Duration"] = time.perf_counter() - start
            md[name + "EndUtc"] = datetime.datetime.now(datetime.UTC).isoformat()
            md[name + "EndCpuTime"] = time.process_time()
            self.log.log(
                logLevel, "%s: %s took %.6f s", self.getFullName(), name, md[name + "Duration"]
            )
