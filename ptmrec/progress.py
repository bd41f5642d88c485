"""Progress that reads well in JupyterLab and in a papermill log.

tqdm.auto picks the widget front end inside any kernel, and widgets never advance in a
papermill log; tqdm's text bar redraws one line with carriage returns, which a log shows as
one long smeared line. So: in an interactive notebook, a tqdm widget; otherwise (the pipeline
driver sets PTMREC_PLAIN_PROGRESS=1 for the kernels it starts; any terminal) plain lines, the
first after ``FIRST_LINE`` seconds, then at most one every ``PLAIN_INTERVAL`` seconds, and a
last one when a loop that printed finishes:

    extract dataset tokens: 12/40 (30%), 25 s so far, about 58 s left
    extract dataset tokens: 40/40 done in 1 min 24 s

A loop shorter than ``FIRST_LINE`` prints nothing. Without ``desc`` the calling function's
name says what runs (``progress`` is often passed down as a bare callable).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
FIRST_LINE = 10.0  # seconds before the first plain line: only loops this long report
PLAIN_INTERVAL = 15.0  # seconds between plain lines


def plain() -> bool:
    """True outside an interactive notebook, or when the driver asks for plain text."""
    if os.environ.get("PTMREC_PLAIN_PROGRESS") or "IPython" not in sys.modules:
        return True  # a notebook kernel has imported IPython long before any of our code runs: no import here
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return True
    return shell is None or type(shell).__name__ != "ZMQInteractiveShell"


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in progress reporting suited to where the code runs (see the module docstring)."""
    if not desc:  # the calling function says what runs ("<module>", "<lambda>": nothing to say)
        caller = sys._getframe(1).f_code.co_name
        desc = "working" if caller.startswith("<") else caller.strip("_").replace("_", " ")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if plain():
        return _plain(iterable, desc, total)
    from tqdm.notebook import tqdm

    return iter(tqdm(iterable, desc=desc, total=total))


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min': a duration as a person reads it."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def status_line(desc: str, done: int, total: int | None, elapsed: float) -> str:
    """'desc: 12/40 (30%), 25 s so far, about 58 s left' (without a total: 'desc: 12 done, 25 s so far')."""
    if not total:
        return f"{desc}: {done} done, {duration(elapsed)} so far"
    left = elapsed / done * (total - done) if done else None
    eta = f", about {duration(left)} left" if left is not None else ""
    return f"{desc}: {done}/{total} ({100 * done // total}%), {duration(elapsed)} so far{eta}"


def _plain(iterable: Iterable[T], desc: str, total: int | None) -> Iterator[T]:
    """Yield from ``iterable``, printing status lines to stdout (flushed: papermill logs them as they come)."""
    start = time.monotonic()
    due, done, printed = start + FIRST_LINE, 0, False
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now >= due and (total is None or done < total):
            print(status_line(desc, done, total, now - start), flush=True)
            due, printed = now + PLAIN_INTERVAL, True
    elapsed = time.monotonic() - start
    if printed or elapsed >= FIRST_LINE:
        print(f"{desc}: {done}{f'/{total}' if total else ''} done in {duration(elapsed)}", flush=True)
