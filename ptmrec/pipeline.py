"""Stages, their cache keys, and the papermill driver behind ``run_all.sh``.

A stage is one numbered notebook. Its cache key hashes the parameter sections it reads, its
notebook's code, the source of every ptmrec module the notebook imports (followed transitively:
``stage_modules``), and the keys of the stages it depends on; the notebook's last cell (``finish_stage``) writes the key to ``<stage>/_stage.json``.
A stage whose recorded key equals its current key is skipped; ``force`` redoes it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from . import params as params_mod
from .paths import REPO, jobs, read_json, run_dir, stage_dir, write_json, write_text
from .registry import Registry


@dataclass(frozen=True)
class Stage:
    name: str  # also the notebook's file stem and the output folder
    sections: tuple[str, ...]  # parameter sections it reads
    depends: tuple[str, ...] = ()

    @property
    def notebook(self) -> Path:
        return REPO / "notebooks" / f"{self.name}.ipynb"


STAGES = Registry("stage")  # name -> Stage, in pipeline order


def register_stage(stage: Stage) -> Stage:
    return STAGES.add(stage.name, stage)


register_stage(Stage("00_zoo_and_tasks", ("run", "data", "tasks", "zoo")))
register_stage(Stage("01_groundtruth", ("run", "groundtruth"), ("00_zoo_and_tasks",)))
register_stage(Stage("02_model_vectors", ("run", "extract"), ("00_zoo_and_tasks", "01_groundtruth")))
register_stage(Stage("03_autoencoder", ("run", "autoencoder", "train_autoencoder"), ("02_model_vectors",)))
register_stage(Stage("04_dataset_tokens", ("run", "encoder", "tokens"), ("00_zoo_and_tasks",)))
register_stage(Stage("05_baselines", ("run", "baselines"), ("00_zoo_and_tasks", "01_groundtruth")))
register_stage(Stage("06_ranker", ("run", "groundtruth", "ranker", "train_ranker", "evaluate"),
                     ("01_groundtruth", "03_autoencoder", "04_dataset_tokens", "05_baselines")))
register_stage(Stage("07_evaluate", ("run", "groundtruth", "autoencoder", "ranker", "train_autoencoder", "train_ranker", "evaluate"),
                     ("02_model_vectors", "05_baselines", "06_ranker")))
register_stage(Stage("08_hardware", ("run", "groundtruth", "hardware"), ("00_zoo_and_tasks", "01_groundtruth", "07_evaluate")))

# Modules whose source counts in a key but whose own imports are not followed: the driver (its sharders
# import the stages' modules lazily), the parameter checks (import every registry) and the report.
INFRASTRUCTURE = frozenset({"pipeline", "checks", "report"})


def ptmrec_imports(source: str, root: Path = REPO) -> set[str]:
    """Names of the ptmrec modules that ``source`` imports anywhere (top level or inside a function)."""
    return set(_imports(source, str(root)))


@functools.lru_cache(maxsize=512)
def _imports(source: str, root: str) -> frozenset[str]:  # a stage key parses each module once per process
    import ast

    root = Path(root)
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").split(".")[0] == "ptmrec"):
            parts = (node.module or "").split(".")
            parts = parts[1:] if parts[0] == "ptmrec" else parts
            found |= {parts[0]} if parts and parts[0] else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ptmrec.")}
    return frozenset(m for m in found if (root / "ptmrec" / f"{m}.py").is_file())


def stage_modules(name: str, root: Path = REPO) -> frozenset[str]:
    """The ptmrec modules a stage's results depend on: what its notebook imports, and what those import,
    transitively (``INFRASTRUCTURE`` modules count but are not followed). Derived from the code, so a new
    import can never leave a stage stale."""
    nb = root / "notebooks" / f"{name}.ipynb"
    code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
    todo = list(ptmrec_imports("\n".join(l for l in code.splitlines() if not l.lstrip().startswith(("%", "!"))), root))
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            if m not in INFRASTRUCTURE:
                todo += ptmrec_imports((root / "ptmrec" / f"{m}.py").read_text(), root)
    return frozenset(seen)


def code_hash(name: str, root: Path = REPO) -> str:
    """Hash of a stage's notebook code and of the source of every module in ``stage_modules``."""
    parts = [_notebook_hash(root / "notebooks" / f"{name}.ipynb")]
    parts += [f"{m}:{_file_hash(root / 'ptmrec' / f'{m}.py')}" for m in sorted(stage_modules(name, root))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def list_stages() -> list[str]:
    return list(STAGES)


# A shardable stage does its expensive part model by model into a resumable work folder
# (work_dir). ``ptmrec shard <params> <stage> --index i --count n`` computes the models of shard
# i (every n-th model from the i-th), so n jobs of a SLURM array share the work; the stage's
# notebook, run after them, finds every part done and only merges.
SHARDERS = Registry("sharder")  # stage name -> fn(P, index, count)


def register_sharder(stage: str) -> Callable:
    """Decorator: register ``fn(P, index, count)`` that computes shard ``index`` of ``count`` of ``stage``."""
    return SHARDERS.register(stage)


def list_sharders() -> list[str]:
    """The shardable stages, in stage order."""
    return [n for n in STAGES if n in SHARDERS]


def shard_rows(rows: Any, index: int, count: int) -> Any:
    """Shard ``index`` of ``count`` of a table (or list): rows index, index + count, ... (big and small models mix)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in 0..{count - 1}")
    return rows.iloc[index::count] if hasattr(rows, "iloc") else rows[index::count]


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"


def _notebook_hash(path: Path) -> str:
    """Hash of a notebook's code: prose, outputs and metadata do not change what it computes."""
    if not path.exists():
        return "missing"
    cells = json.loads(path.read_text())["cells"]
    code = [c["source"] for c in cells if c["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def stage_key(P: params_mod.Params, name: str) -> str | None:
    """The key a finished run of ``name`` must have recorded; None while a dependency is not done."""
    stage = STAGES[name]
    parts = [P.section_hash(*stage.sections), code_hash(name)]
    for dep in stage.depends:
        done = recorded_key(P, dep)
        if done is None or done != stage_key(P, dep):
            return None
        parts.append(done)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def recorded_key(P: params_mod.Params, name: str) -> str | None:
    marker = run_dir(P.name) / name / "_stage.json"
    try:
        return read_json(marker)["key"]
    except (OSError, ValueError, KeyError):
        return None


def is_fresh(P: params_mod.Params, name: str) -> bool:
    key = stage_key(P, name)
    return key is not None and recorded_key(P, name) == key


def _ready(P: params_mod.Params, name: str) -> None:
    """Raise unless every dependency of ``name`` is done; then seed and set torch's threads."""
    for dep in STAGES[name].depends:
        if not is_fresh(P, dep):
            raise RuntimeError(f"stage {name} needs stage {dep} of run '{P.name}', which is missing or out of "
                               f"date in {run_dir(P.name) / dep}: run ./run_all.sh {P.source} --from {dep}")
    seed_everything(P.run.seed)
    if P.run.threads:
        import torch

        torch.set_num_threads(P.run.threads)


def start_stage(params_file: str | Path, name: str, force: bool = False) -> tuple[params_mod.Params, Path]:
    """First cell of every stage notebook: load + validate params, seed, record them.

    Returns the params and the stage's output folder. Raises if a dependency is not done.
    ``force`` empties the stage folder first, so nothing is resumed from an earlier run.
    """
    P = params_mod.load(params_file)
    _ready(P, name)
    out = stage_dir(P.name, name)
    if force:
        shutil.rmtree(out)
        out.mkdir(parents=True)
    write_text(out / "params.resolved.yaml", P.to_yaml())
    return P, out


def work_dir(P: params_mod.Params, name: str, sub: str) -> Path:
    """A resumable work folder inside a stage: kept while the stage key holds, emptied when it changes.

    Partial results (one file per model, say) live here so a killed run resumes where it
    stopped, but a run with other parameters or code never trusts them.
    """
    d = stage_dir(P.name, name) / sub
    key = stage_key(P, name)
    marker = d / "_key.json"
    with _locked(d.parent / f".{sub}.lock"):  # shards of one stage may start at once (a SLURM array)
        try:
            same = read_json(marker)["key"] == key
        except (OSError, ValueError, KeyError):
            same = False
        if not same:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            write_json(marker, {"key": key})
    return d


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive POSIX lock on ``path`` for the block (fcntl.lockf: also on NFS / GPFS / most Lustre).

    Where the file system refuses locks, the block runs unlocked: one process at a time still works.
    """
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX)
        except OSError as e:
            print(f"[ptmrec] no file lock on {path} ({e}); concurrent shards may race", file=sys.stderr)
        try:
            yield
        finally:
            try:
                fcntl.lockf(f, fcntl.LOCK_UN)
            except OSError:
                pass


def finish_stage(P: params_mod.Params, name: str, metrics: dict[str, Any], started: float) -> Path:
    """Last cell of every stage notebook: write metrics.json and the cache marker."""
    out = stage_dir(P.name, name)
    metrics = {**metrics, "stage": name, "params": P.name, "seconds": round(time.time() - started, 2)}
    write_json(out / "metrics.json", metrics)
    write_json(out / "_stage.json", {"key": stage_key(P, name), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "seconds": metrics["seconds"]})
    return out / "metrics.json"


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select(start: str | None = None, only: list[str] | None = None) -> list[str]:
    """The stages to run, in order: all, those from ``start`` on, or exactly ``only``."""
    names = list_stages()
    for n in [start, *(only or [])]:
        if n is not None and n not in STAGES:
            raise SystemExit(f"unknown stage '{n}'; stages: {', '.join(names)}")
    if only:
        return [n for n in names if n in only]
    return names[names.index(start):] if start else names


def run(params_file: str | Path, force: bool = False, start: str | None = None,
        only: list[str] | None = None) -> int:
    """Run the stage notebooks with papermill; return a process exit code."""
    import papermill as pm

    P = params_mod.load(params_file)  # fails on a bad key before any work
    from .checks import check_choices

    check_choices(P)  # ... and on a value no registry knows (a loss, an extractor, a dataset, ...)
    params_file = Path(params_file).resolve()
    nb_dir = run_dir(P.name) / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PTMREC_PLAIN_PROGRESS"] = "1"  # inherited by the kernels papermill starts
    n_jobs = jobs()
    for name in select(start, only):
        if not force and is_fresh(P, name):
            print(f"[ptmrec] {name}: up to date, skipped", flush=True)
            continue
        t0 = time.time()
        fresh = force
        if n_jobs > 1 and name in SHARDERS:
            if force:  # emptied here, not by the notebook, which must find what the shards computed
                shutil.rmtree(stage_dir(P.name, name))
                fresh = False
            if run_shards(params_file, name, n_jobs) != 0:
                return 1
        print(f"[ptmrec] {name}: running {STAGES[name].notebook.relative_to(REPO)}", flush=True)
        out_nb = nb_dir / f"{name}.ipynb"
        try:
            pm.execute_notebook(STAGES[name].notebook, out_nb, parameters={"params_file": str(params_file), "force": fresh},
                                cwd=str(REPO / "notebooks"), progress_bar=False, kernel_name="python3",
                                stdout_file=sys.stdout, stderr_file=sys.stderr)  # as it comes: progress lines of long cells
        except pm.PapermillExecutionError as e:
            print(f"[ptmrec] FAILED: notebook {out_nb}, cell {e.exec_count} (index {e.cell_index}): "
                  f"{e.ename}: {e.evalue}", file=sys.stderr, flush=True)
            return 1
        wall = round(time.time() - t0, 2)
        marker = stage_dir(P.name, name) / "_stage.json"
        write_json(marker, {**read_json(marker), "wall_seconds": wall, "jobs": n_jobs})  # shards included
        print(f"[ptmrec] {name}: done in {wall:.1f} s", flush=True)
    return 0


def run_shards(params_file: str | Path, name: str, count: int) -> int:
    """``count`` processes of ``ptmrec shard`` for stage ``name`` side by side, one torch thread each (the
    stage's notebook then merges their parts); 0 when every shard succeeded, else 1, naming the failed ones."""
    import subprocess

    print(f"[ptmrec] {name}: {count} shard processes", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PTMREC_JOBS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "ptmrec.cli", "shard", str(params_file), name, "--index", str(i),
                               "--count", str(count)], env=env, cwd=str(REPO)) for i in range(count)]
    failed = [i for i, p in enumerate(procs) if p.wait() != 0]
    if failed:
        print(f"[ptmrec] FAILED: {name}, shard(s) {', '.join(map(str, failed))} of {count} (their output is above); "
              f"rerun resumes from what the others finished", file=sys.stderr, flush=True)
        return 1
    return 0


def run_shard(params_file: str | Path, name: str, index: int, count: int) -> int:
    """Compute shard ``index`` of ``count`` of a shardable stage (one SLURM array task); return an exit code."""
    P = params_mod.load(params_file)
    if name not in SHARDERS:
        raise SystemExit(f"stage '{name}' cannot be sharded; shardable stages: {', '.join(list_sharders()) or 'none'}")
    if is_fresh(P, name):
        print(f"[ptmrec] {name}: up to date, shard {index}/{count} skipped", flush=True)
        return 0
    _ready(P, name)
    os.environ["PTMREC_PLAIN_PROGRESS"] = "1"
    t0 = time.time()
    print(f"[ptmrec] {name}: shard {index}/{count}", flush=True)
    SHARDERS[name](P, index, count)
    print(f"[ptmrec] {name}: shard {index}/{count} done in {time.time() - t0:.1f} s", flush=True)
    return 0


def _shard_world(P: params_mod.Params, index: int, count: int) -> tuple[Path, dict, list, Any]:
    """(stage-00 folder, pools, tasks, the shard's rows of the zoo index): what a per-model sharder reads."""
    import pandas as pd

    from .data import load_tasks

    world = run_dir(P.name) / "00_zoo_and_tasks"
    pools, tasks = load_tasks(world / "tasks")
    return world, pools, tasks, shard_rows(pd.read_csv(world / "zoo" / "index.csv"), index, count)


@register_sharder("00_zoo_and_tasks")
def _zoo_shard(P: params_mod.Params, index: int, count: int) -> None:
    """The shard's models of the zoo plan into 00_zoo_and_tasks/zoo/ (notebook 00 then finds them built)."""
    from . import world
    from .progress import progress
    from .zoo import build_zoo

    build_zoo(P.zoo, world.source_pools(P, progress), work_dir(P, "00_zoo_and_tasks", "zoo"), P.run.seed,
              progress=progress, shard=(index, count))


@register_sharder("01_groundtruth")
def _groundtruth_shard(P: params_mod.Params, index: int, count: int) -> None:
    """Ground truth of the shard's models into 01_groundtruth/parts/ (what notebook 01 then merges)."""
    from . import features, groundtruth
    from .progress import progress

    world, pools, tasks, zoo = _shard_world(P, index, count)
    parts, store = work_dir(P, "01_groundtruth", "parts"), work_dir(P, "01_groundtruth", features.STORE)
    groundtruth.run_groundtruth(zoo, world / "zoo", pools, tasks, P.groundtruth, P.run.seed, parts, store, progress)


@register_sharder("02_model_vectors")
def _vectors_shard(P: params_mod.Params, index: int, count: int) -> None:
    """Vectors of the shard's models by every extractor design into 02_model_vectors/parts/<design>/."""
    import pandas as pd

    from . import extract

    zoo_dir = run_dir(P.name) / "00_zoo_and_tasks" / "zoo"
    zoo = shard_rows(pd.read_csv(zoo_dir / "index.csv"), index, count)
    extract.extract_parts(zoo, zoo_dir, P.extract.length, work_dir(P, "02_model_vectors", "parts"))


@register_sharder("05_baselines")
def _baselines_shard(P: params_mod.Params, index: int, count: int) -> None:
    """Transferability scores of the shard's models into 05_baselines/parts/ (what notebook 05 then merges)."""
    from . import baselines, features
    from .progress import progress

    world, pools, tasks, zoo = _shard_world(P, index, count)
    parts = work_dir(P, "05_baselines", "parts")
    store = features.run_store(run_dir(P.name))
    baselines.run_baselines(zoo, store, pools, tasks, P.baselines.scorers, parts, progress)
