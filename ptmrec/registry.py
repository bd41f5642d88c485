"""One registry for everything ptmrec looks up by name: a dict and a decorator.

    >>> SCORERS = Registry("scorer")
    >>> @SCORERS.register("logme", needs_logits=False)
    ... def logme(features, labels, logits=None): ...
    >>> SCORERS.list("*leep")          # fnmatch wildcards, sorted
    ['leep', 'nleep']
    >>> SCORERS.get("logmee")          # KeyError: unknown scorer 'logmee'; registered: gbc, hscore, ...

One duplicate policy everywhere: registering the same definition again (a module or notebook cell
run twice: same module and qualified name) replaces it; a different object under a taken name is an
error naming both. Keyword arguments of ``register`` are kept as the entry's ``info`` (a licence, a
citation, ...). ``normalize`` maps names before lookup (case-insensitive trainers, say).
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterator


def _origin(obj: Any) -> tuple[str, str]:
    """Where a definition comes from; an entry that wraps a function (``.fn``, a scorer) is judged by it."""
    obj = getattr(obj, "fn", obj)
    return getattr(obj, "__module__", ""), getattr(obj, "__qualname__", repr(obj))


class Registry:
    """name -> object, with per-entry ``info`` and a readable KeyError."""

    def __init__(self, kind: str, normalize: Callable[[str], str] | None = None):
        self.kind = kind
        self._normalize = normalize or (lambda s: s)
        self._items: dict[str, Any] = {}
        self._names: dict[str, str] = {}  # normalised -> registered name
        self.info: dict[str, dict[str, Any]] = {}

    @classmethod
    def of(cls, kind: str, entries: dict[str, Any]) -> "Registry":
        """A registry filled from a literal dict: the fixed choices (losses, activations, architectures, ...)."""
        reg = cls(kind)
        for name, obj in entries.items():
            reg.add(name, obj)
        return reg

    def add(self, name: str, obj: Any, **info: Any) -> Any:
        """Register ``obj`` under ``name`` (the duplicate policy of the module docstring); returns ``obj``."""
        key = self._normalize(name)
        if key in self._names:
            old_name = self._names[key]
            old = self._items[old_name]
            if old is not obj and _origin(old) != _origin(obj):
                raise ValueError(f"{self.kind} '{name}' is already registered by {'.'.join(_origin(old))}")
            del self._items[old_name]
            self.info.pop(old_name, None)
        self._names[key] = name
        self._items[name] = obj
        self.info[name] = dict(info)
        return obj

    def register(self, name: str | None = None, **info: Any) -> Callable[[Any], Any]:
        """Decorator: register the function or class under ``name`` (default: its ``__name__``)."""

        def deco(obj: Any) -> Any:
            return self.add(name or obj.__name__, obj, **info)

        return deco

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a KeyError lists the registered names."""
        key = self._normalize(str(name))
        if key not in self._names:
            raise KeyError(f"unknown {self.kind} '{name}'; registered: {', '.join(self.list()) or 'none'}")
        return self._items[self._names[key]]

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching the fnmatch ``pattern``, sorted."""
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalize(name) in self._names

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __delitem__(self, name: str) -> None:  # tests unregister what they registered
        del self._items[name]
        self.info.pop(name, None)
        self._names = {k: v for k, v in self._names.items() if v != name}

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> Any:
        return self._items.items()

    def values(self) -> Any:
        return self._items.values()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.list()})"
