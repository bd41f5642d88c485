"""What each fitted component saw: a record of task and model ids, for the held-out tests.

Every component that fits something to ground truth or to model weights (the autoencoder and its
standardiser, the ranker's training and early-stopping batches, the static priors, inner
validation) calls ``seen(component, tasks=..., models=...)`` with the ids that reach it. Outside
``recording()`` that is a no-op; inside, each call is kept with the fold that ``fold(name)`` set:

    >>> with recording() as records:
    ...     run_protocol(...)
    >>> [r for r in records if r.fold == "mnist" and "mnist-plain-3c-1a2b3c" in r.tasks]   # must be empty

tests/test_protocol.py asserts, for every fold of both kinds, that no held-out task id and no
held-out model id is in any record of that fold.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class Record:
    component: str  # "ranker", "autoencoder", "standardiser", "popularity", ...
    fold: str  # the fold set by ``fold()``, "" outside one
    tasks: frozenset[str]
    models: frozenset[str]


_records: list[Record] | None = None
_fold = ""


def seen(component: str, tasks: Iterable[str] = (), models: Iterable[str] = ()) -> None:
    """Note that ``component`` was fitted with (or validated on) these task and model ids."""
    if _records is not None:
        _records.append(Record(component, _fold, frozenset(map(str, tasks)), frozenset(map(str, models))))


def is_recording() -> bool:
    return _records is not None


def extend(records: Iterable[Record]) -> None:
    """Keep records made elsewhere (a worker process of ``protocol.ranker_predictions``) as if made here."""
    if _records is not None:
        _records.extend(records)


@contextmanager
def recording() -> Iterator[list[Record]]:
    """Collect every ``seen`` call of the block into the yielded list."""
    global _records
    old, _records = _records, []
    try:
        yield _records
    finally:
        _records = old


@contextmanager
def fold(name: str) -> Iterator[None]:
    """Records made in the block belong to fold ``name``."""
    global _fold
    old, _fold = _fold, name
    try:
        yield
    finally:
        _fold = old
