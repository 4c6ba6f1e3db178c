"""LSST-shaped task conveniences: `Struct`, `ConfigurableField` and the `Task` base Module.

Mirrors `lsst.pipe.base.Task` / `lsst.pipe.base.Struct` / `lsst.pex.config.ConfigurableField`
(names and semantics of the LSST API page). `Task` is an `equinox.Module`: its Python-side
state (name, parent, metadata, subtasks, logger, the config object) lives in one static
`TaskState`, and the config's frozen snapshot is a second static field, so the only pytree
leaves of a task are the array fields its subclass adds. Both static fields compare by
value: `eqx.filter_jit` does not retrace when only the arrays change, nor for a new task
instance with an equal config and name.

The config may be a frozen, hashable dataclass, or a mutable pex_config-style `Config`
(`jaxmatch._config`): ``task.config.order = 4`` then replaces the task's static snapshot
(an immutable value), so a compiled function never runs with a config it was not traced for.
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
from typing import TYPE_CHECKING, Any, ClassVar

import equinox as eqx

from ._config import Config, InvalidConfigKey
from ._exceptions import FieldValidationError


class Struct:
    """Attribute bag, like `lsst.pipe.base.Struct`: `Struct(a=1, b=2).a == 1`."""

    def __init__(self, **keyArgs: Any):
        for name, value in keyArgs.items():
            self._add(name, value)

    if TYPE_CHECKING:  # the items are set at run time: any attribute may be one

        def __getattr__(self, name: str) -> Any: ...

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
    As pex_config's, other attributes are those of the config: ``field.binSize = 64`` sets
    ``field.value.binSize``; assigning ``value`` checks that it is a `ConfigClass`.
    """

    _OWN = ("doc", "target", "ConfigClass", "value")

    def __init__(
        self, doc: str, target: type[Task], ConfigClass: type | None = None, value: Any = None
    ):
        object.__setattr__(self, "_listeners", [])
        self.doc = doc
        self.target = target
        self.ConfigClass = _config_class(target, ConfigClass)
        self.value = self.ConfigClass() if value is None else value

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        elif name in self._OWN:
            if name == "value":
                if not isinstance(value, self.ConfigClass) and not _same_frozen(
                    value, self.ConfigClass
                ):
                    raise FieldValidationError(
                        f"{self.doc!r}: config must be a {self.ConfigClass.__name__}, "
                        f"got {type(value).__name__}"
                    )
                if isinstance(value, Config):
                    value._subscribe(self)
            object.__setattr__(self, name, value)
            self._notify()
        else:
            setattr(self.value, name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in self._OWN:
            raise AttributeError(name)
        return getattr(self.value, name)

    def _subscribe(self, listener: Any) -> None:
        self._listeners.append(weakref.ref(listener))

    def _notify(self) -> None:
        for ref in list(self._listeners):
            listener = ref()
            if listener is not None:
                listener._configUpdated()

    def _configUpdated(self) -> None:
        self._notify()

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


def _same_frozen(value: Any, ConfigClass: type) -> bool:
    """A frozen config given for a mutable ConfigClass over it (or the reverse)."""
    frozen = getattr(ConfigClass, "Frozen", None)
    return (frozen is not None and isinstance(value, frozen)) or (
        isinstance(value, Config) and value.Frozen is ConfigClass
    )


def _config_class(target: type, ConfigClass: type | None) -> type:
    ConfigClass = ConfigClass or getattr(target, "ConfigClass", None)
    if ConfigClass is None:
        raise TypeError(f"ConfigurableField: {target!r} has no ConfigClass; pass ConfigClass=")
    return ConfigClass


_MISSING = object()


class TaskState:
    """Python-side state of a task: a static field, compared by value.

    Attributes: `name`, `full_name` ("top.sub"), `parent` (`weakref.ref` to the parent task or
    None), `metadata` (item → value), `subtasks` (name → task, insertion ordered), `log`,
    `config` (the config object, mutable or not) and `extras` (attributes set on the task
    that are not fields, e.g. LSST's ``debugDataIdString``).

    Two states are equal when their names, full names and subtasks are (subtasks compared
    as pytrees: configs and array values), so new instances of a task reuse compilations.
    Metadata, logger, parent and extras do not enter: they do not change what is computed.
    The config enters through the task's own static snapshot, not here.
    """

    def __init__(
        self, name: str, full_name: str, parent: weakref.ref | None, log: logging.Logger, config
    ):
        self.name = name
        self.full_name = full_name
        self.parent = parent
        self.metadata: dict[str, Any] = {}
        self.subtasks: dict[str, Task] = {}
        self.log = log
        self.config = config
        self.extras: dict[str, Any] = {}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskState):
            return NotImplemented
        if self is other:
            return True
        if (self.name, self.full_name, list(self.subtasks)) != (
            other.name,
            other.full_name,
            list(other.subtasks),
        ):
            return False
        return all(
            type(a) is type(b) and bool(eqx.tree_equal(a, b))
            for a, b in zip(self.subtasks.values(), other.subtasks.values())
        )

    def __hash__(self) -> int:
        return hash((self.name, self.full_name, tuple(self.subtasks)))

    def __repr__(self) -> str:
        return f"TaskState(name={self.full_name!r})"


class Task(eqx.Module):
    """Base class of tasks, mirroring `lsst.pipe.base.Task`, as an `equinox.Module`.

    Arguments:
        config: an instance of `ConfigClass` (default `ConfigClass()`): a mutable
            pex_config-style `Config` (then ``task.config.x = ...`` works, as in LSST), or a
            hashable frozen dataclass. The task keeps this object (``task.config is config``).
        name: brief task name, without '.'; defaults to `_DefaultName`.
        parentTask: the parent task, or None for a top-level task.
        log: logger; defaults to `logging.getLogger(full name)`, a child of the parent's.

    Subclasses set `_DefaultName` and `ConfigClass`, may add (array) fields, and in their own
    `__init__` call `super().__init__(config, name=..., parentTask=..., log=...)` first.
    Subtasks are reachable as attributes but are *not* pytree leaves of their parent.
    """

    _configKey: Any = eqx.field(static=True)
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
        if not isinstance(config, Config):
            try:
                hash(config)
            except TypeError as err:
                raise TypeError(
                    f"{cls.__name__}: config must be a jaxmatch Config or hashable (a static "
                    "field), e.g. a frozen dataclass"
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
        self._state = TaskState(name, full_name, parent, log, config)
        self._configKey = _static_key(config)
        if isinstance(config, Config):
            config._subscribe(self)

    @property
    def config(self) -> Any:
        """The config object given at construction (mutable if it is a `Config`)."""
        return self._state.config

    @property
    def staticConfig(self) -> Any:
        """The frozen snapshot of the config this task was last updated to (validated);
        what code traced with this task uses. `FieldValidationError` if it is invalid."""
        key = self._configKey
        if isinstance(key, InvalidConfigKey):
            self.config.snapshot()  # raises, naming the field
        return key

    def _configUpdated(self) -> None:
        """The mutable config changed: take a new snapshot (an immutable static key)."""
        previous = self._configKey
        object.__setattr__(self, "_configKey", _static_key(self.config))
        self._configChanged(previous)

    def _configChanged(self, previous: Any) -> None:
        """Hook for subclasses: refresh what they derive from the config (``previous``:
        the former static key)."""

    def __setattr__(self, name: str, value: Any) -> None:
        # Fields are frozen (equinox); other names are free attributes, as on an LSST task.
        if (
            name in _field_names(type(self))
            or name.startswith("__")
            or "_state" not in self.__dict__
        ):
            super().__setattr__(name, value)
        elif name == "config":
            raise AttributeError("task.config cannot be replaced; set its fields instead")
        elif isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)  # the property's setter checks it
        else:
            self._state.extras[name] = value

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: fall back on the subtasks (the Module is frozen).
        if not name.startswith("_"):
            state = self.__dict__.get("_state")
            if state is not None and name in state.subtasks:
                return state.subtasks[name]
            if state is not None and name in state.extras:
                return state.extras[name]
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
        if (
            name in self._state.subtasks
            or hasattr(type(self), name)
            or name in self.__dict__
            or name in self._state.extras
        ):
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


def _static_key(config: Any) -> Any:
    return config.staticKey() if isinstance(config, Config) else config


def _field_names(cls: type) -> frozenset[str]:
    import dataclasses

    return frozenset(f.name for f in dataclasses.fields(cls))
