"""Shared fixtures: the smoke pipeline, run once per test session into a temporary runs folder."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ptmrec.paths import REPO


def pytest_configure(config):
    """One cache of decoded datasets and built encoders for every runs folder of the session.

    The smoke runs of different tests (fixture, resume, nbval, SLURM) then decode the clip art
    and align the embedded encoder once, not once per runs folder; what they compute is the same.
    """
    # One torch thread in the tests and the pipelines they start: their models are tiny (one thread is as fast),
    # and on a busy 2-core machine two threads per process oversubscribe it (tests ran 5-15x slower so).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("PTMREC_JOBS", "1")  # in-process protocol calls stay in one process (run_pipeline: two)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if not os.environ.get("PTMREC_CACHE"):
        import tempfile

        os.environ["PTMREC_CACHE"] = tempfile.mkdtemp(prefix="ptmrec-test-cache-")
        config._ptmrec_cache = os.environ["PTMREC_CACHE"]  # this session made it: pytest_unconfigure removes it


def pytest_unconfigure(config):
    """Remove the session's dataset cache (135-380 MB; left behind, a hundred sessions filled /tmp)."""
    made = getattr(config, "_ptmrec_cache", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
        os.environ.pop("PTMREC_CACHE", None)


def run_pipeline(runs: Path, *args: str, check: bool = True, jobs: int = 2) -> subprocess.CompletedProcess:
    """./run_all.sh with PTMREC_RUNS=runs; output captured."""
    # two jobs: the shardable stages run as two shard processes and stage 07's folds in two workers, as on a
    # newcomer's 2-core machine; the pinned smoke figures then prove that this changes no number
    env = {**os.environ, "PTMREC_RUNS": str(runs), "PTMREC_JOBS": str(jobs)}
    r = subprocess.run([str(REPO / "run_all.sh"), *args], env=env, capture_output=True, text=True, timeout=1500)
    if check and r.returncode != 0:
        raise AssertionError(f"run_all.sh {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> Path:
    """The runs folder of one full smoke run (params/smoke.yaml); its wall time in smoke_seconds.txt."""
    runs = tmp_path_factory.mktemp("runs")
    t0 = time.time()
    r = run_pipeline(runs, "params/smoke.yaml")
    (runs / "smoke_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
    (runs / "smoke_log.txt").write_text(r.stdout)
    return runs


def copy_stages(local: Path, runs: Path, *stages: str) -> None:
    """Copy finished stage folders of the local smoke run (``runs/smoke``) into ``runs/smoke``: up to date there."""
    for s in stages:
        shutil.copytree(local / s, runs / "smoke" / s)
