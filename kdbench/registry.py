"""A small generic registry with "did you mean" errors and plugin loading."""

import importlib
from importlib import metadata
from typing import Callable, Dict, Iterable, List, Optional

from .errors import UsageError, unknown_choice


class Registry:
    """Name -> object. `register(name)` decorates; `get(name)` fails with the valid choices."""

    def __init__(self, kind: str, entry_point_group: Optional[str] = None, builtins: Iterable[str] = ()):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._builtins = tuple(builtins)   # modules imported on first lookup (self-registering)
        self._items: Dict[str, object] = {}
        self._loaded = False

    def register(self, name: str) -> Callable:
        def decorator(obj):
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is already registered by {self._items[name]!r}")
            obj.registry_name = name
            self._items[name] = obj
            return obj
        return decorator

    def _load(self):
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtins:
            importlib.import_module(module)
        if self.entry_point_group:
            for ep in metadata.entry_points(group=self.entry_point_group):
                try:
                    ep.load()
                except Exception as exc:  # a broken third-party plugin must name itself
                    raise UsageError(f"plugin entry point '{ep.name}' ({ep.value}) failed to load: {exc}") from exc

    def get(self, name: str):
        self._load()
        if name not in self._items:
            raise unknown_choice(self.kind, name, self._items)
        return self._items[name]

    def names(self):
        self._load()
        return sorted(self._items)

    def __contains__(self, name):
        self._load()
        return name in self._items

    def parse(self, spec: str) -> List[str]:
        """'a,b' or 'all' -> the named items, each checked, duplicates dropped, in the given order."""
        names = [n.strip() for n in spec.split(",") if n.strip()]
        names = self.names() if names == ["all"] else list(dict.fromkeys(names))
        for n in names:
            self.get(n)
        return names


TASKS = ("classification", "detection")
DEFAULT_TASK = "classification"


class DistillerRegistry(Registry):
    """Distillers, one implementation per (name, task). `register(name)` registers a
    classification distiller; `register(name, task="detection")` the same method's detection
    implementation. `get(name, task)` names the tasks a method supports when it lacks `task`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._by_task: Dict[str, Dict[str, object]] = {t: {} for t in TASKS}

    def register(self, name: str, task: str = DEFAULT_TASK) -> Callable:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} for distiller '{name}': must be one of {', '.join(TASKS)}")

        def decorator(obj):
            table = self._by_task[task]
            if name in table and table[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' ({task}) is already registered by {table[name]!r}")
            obj.registry_name, obj.task = name, task
            table[name] = obj
            self._items.setdefault(name, obj)
            return obj
        return decorator

    def get(self, name: str, task: str = DEFAULT_TASK):
        self._load()
        if name not in self._items:
            raise unknown_choice(self.kind, name, self._items)
        if name not in self._by_task.get(task, {}):
            raise UsageError(f"distiller '{name}' does not support the {task} task; it supports: "
                             f"{', '.join(self.tasks_of(name))}")
        return self._by_task[task][name]

    def tasks_of(self, name: str) -> List[str]:
        self._load()
        return [t for t in TASKS if name in self._by_task[t]]

    def names(self, task: Optional[str] = None):
        self._load()
        return sorted(self._items if task is None else self._by_task[task])

    def parse(self, spec: str, task: str = DEFAULT_TASK) -> List[str]:
        """'a,b' or 'all' -> the named items of `task` (all: every one that supports it), each
        checked (a name given twice is an error), in the given order."""
        names = [n.strip() for n in spec.split(",") if n.strip()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UsageError(f"{self.kind} '{twice[0]}' is listed twice in '{spec}'; list each once")
        names = self.names(task) if names == ["all"] else names
        for n in names:
            self.get(n, task)
        return names


def load_plugin(module: str):
    """Import a user module that registers distillers (`--plugin my_pkg.my_distiller`)."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or any error raised while the plugin registers itself
        raise UsageError(f"cannot load plugin module '{module}': {exc.__class__.__name__}: {exc}") from exc


DISTILLERS = DistillerRegistry("distiller", "kdbench.distillers", builtins=("distillers",))
register_distiller = DISTILLERS.register
