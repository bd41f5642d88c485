"""Progress that reads well in JupyterLab and in a papermill log.

tqdm.auto picks the widget front end inside any kernel, and widgets never advance in a
papermill log. The pipeline driver sets PTMREC_PLAIN_PROGRESS=1 for the kernels it starts;
then progress is plain text lines, at most one every ``PLAIN_INTERVAL`` seconds.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
PLAIN_INTERVAL = 15.0


def plain() -> bool:
    """True outside an interactive notebook, or when the driver asks for plain text."""
    if os.environ.get("PTMREC_PLAIN_PROGRESS"):
        return True
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return True
    return shell is None or type(shell).__name__ != "ZMQInteractiveShell"


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar suited to where the code runs."""
    if plain():
        from tqdm import tqdm

        return iter(tqdm(iterable, desc=desc, total=total, file=sys.stdout, ascii=True,
                         mininterval=PLAIN_INTERVAL, dynamic_ncols=False, ncols=100))
    from tqdm.notebook import tqdm

    return iter(tqdm(iterable, desc=desc, total=total))
