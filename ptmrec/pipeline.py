"""Stages, their cache keys, and the papermill driver behind ``run_all.sh``.

A stage is one numbered notebook. Its cache key hashes the parameter sections it reads, the
source of the ptmrec modules it calls, its notebook, and the keys of the stages it depends
on; the notebook's last cell (``finish_stage``) writes the key to ``<stage>/_stage.json``.
A stage whose recorded key equals its current key is skipped; ``force`` redoes it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import params as params_mod
from .paths import REPO, read_json, run_dir, stage_dir, write_json, write_text


@dataclass(frozen=True)
class Stage:
    name: str  # also the notebook's file stem and the output folder
    sections: tuple[str, ...]  # parameter sections it reads
    modules: tuple[str, ...]  # ptmrec modules whose source is part of its key
    depends: tuple[str, ...] = ()

    @property
    def notebook(self) -> Path:
        return REPO / "notebooks" / f"{self.name}.ipynb"


STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    STAGES[stage.name] = stage
    return stage


register_stage(Stage("00_zoo_and_tasks", ("run", "data", "tasks", "zoo"), ("data", "offline", "zoo", "nets", "world")))
register_stage(Stage("01_groundtruth", ("run", "groundtruth"), ("groundtruth", "zoo", "nets", "data"),
                     ("00_zoo_and_tasks",)))
register_stage(Stage("02_model_vectors", ("run", "extract"), ("extract", "probes"), ("00_zoo_and_tasks", "01_groundtruth")))
register_stage(Stage("03_autoencoder", ("run", "autoencoder", "train"), ("autoencoder", "train", "probes"),
                     ("02_model_vectors",)))


def list_stages() -> list[str]:
    return list(STAGES)


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
    parts = [P.section_hash(*stage.sections), _notebook_hash(stage.notebook)]
    parts += [_file_hash(REPO / "ptmrec" / f"{m}.py") for m in stage.modules]
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


def start_stage(params_file: str | Path, name: str, force: bool = False) -> tuple[params_mod.Params, Path]:
    """First cell of every stage notebook: load + validate params, seed, record them.

    Returns the params and the stage's output folder. Raises if a dependency is not done.
    ``force`` empties the stage folder first, so nothing is resumed from an earlier run.
    """
    P = params_mod.load(params_file)
    for dep in STAGES[name].depends:
        if not is_fresh(P, dep):
            raise RuntimeError(f"stage {name} needs stage {dep} of run '{P.name}', which is missing or out of "
                               f"date in {run_dir(P.name) / dep}: run ./run_all.sh {P.source} --from {dep}")
    seed_everything(P.run.seed)
    if P.run.threads:
        import torch

        torch.set_num_threads(P.run.threads)
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
    try:
        same = read_json(marker)["key"] == key
    except (OSError, ValueError, KeyError):
        same = False
    if not same:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        write_json(marker, {"key": key})
    return d


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
    params_file = Path(params_file).resolve()
    nb_dir = run_dir(P.name) / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PTMREC_PLAIN_PROGRESS"] = "1"  # inherited by the kernels papermill starts
    for name in select(start, only):
        if not force and is_fresh(P, name):
            print(f"[ptmrec] {name}: up to date, skipped", flush=True)
            continue
        print(f"[ptmrec] {name}: running {STAGES[name].notebook.relative_to(REPO)}", flush=True)
        t0 = time.time()
        out_nb = nb_dir / f"{name}.ipynb"
        try:
            pm.execute_notebook(STAGES[name].notebook, out_nb, parameters={"params_file": str(params_file), "force": force},
                                cwd=str(REPO / "notebooks"), log_output=True, progress_bar=False,
                                kernel_name="python3")
        except pm.PapermillExecutionError as e:
            print(f"[ptmrec] FAILED: notebook {out_nb}, cell {e.exec_count} (index {e.cell_index}): "
                  f"{e.ename}: {e.evalue}", file=sys.stderr, flush=True)
            return 1
        print(f"[ptmrec] {name}: done in {time.time() - t0:.1f} s", flush=True)
    return 0
