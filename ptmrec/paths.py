"""Run layout and atomic writes.

    runs/<set>/                  one folder per parameter set ($PTMREC_RUNS overrides runs/)
        notebooks/               executed notebooks
        00_zoo_and_tasks/        zoo/<model_id>/{config.json, model.safetensors}, zoo/index.csv,
                                 tasks/index.csv, tasks/splits.npz, tasks/pools/<dataset>.npz
        01_groundtruth/          performance.csv, noise.csv, parts/
    runs/_cache/                 decoded datasets and built encoders, shared by runs
                                 ($PTMREC_CACHE overrides it, e.g. one cache for many runs folders)
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


def runs_root() -> Path:
    return Path(os.environ.get("PTMREC_RUNS", REPO / "runs"))


MAX_DEFAULT_JOBS = 8  # a default-world shard process holds about 2 GB (its pools, one model, its features)


def jobs() -> int:
    """Worker processes for work that splits (shardable stages, stage 07's folds): $PTMREC_JOBS, else the
    CPUs this process may use, at most MAX_DEFAULT_JOBS. Each worker then runs torch on one thread."""
    if os.environ.get("PTMREC_JOBS"):
        n = int(os.environ["PTMREC_JOBS"])
        if n < 1:
            raise ValueError(f"PTMREC_JOBS={os.environ['PTMREC_JOBS']}: need a whole number >= 1")
        return n
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, MAX_DEFAULT_JOBS)


def cache_root(runs: Path | None = None) -> Path:
    """Where decoded datasets and built encoders are kept: $PTMREC_CACHE, else <runs>/_cache.

    ``runs`` is the runs folder (default runs_root()); a run read from elsewhere passes its parent.
    """
    if os.environ.get("PTMREC_CACHE"):
        return Path(os.environ["PTMREC_CACHE"])
    return Path(runs if runs is not None else runs_root()) / "_cache"


def run_dir(name: str) -> Path:
    return runs_root() / name


def stage_dir(name: str, stage: str) -> Path:
    d = run_dir(name) / stage
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    A killed run leaves at most a ``.tmp`` file, which no reader trusts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: str | Path, df) -> None:
    """Atomically write a pandas DataFrame as CSV (no index)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_npz(path: str | Path, **arrays) -> None:
    """Atomically write arrays to ``path`` (an .npz)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            import numpy as np

            np.savez(f, **arrays)


def resume(part: str | Path, compute: Callable[[], T], read: Callable[[Path], T],
           write: Callable[[Path, T], None]) -> T:
    """The result kept in ``part`` by an earlier (killed or sharded) run, else ``compute()``, written there first.

    ``write`` must be atomic (``atomic_path``), so a part that exists is whole: ground truth, baselines and
    extraction keep one part per model this way, which is how a killed run resumes and SLURM shards gather.
    """
    part = Path(part)
    if part.exists():
        return read(part)
    value = compute()
    write(part, value)
    return value
