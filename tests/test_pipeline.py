"""The pipeline end to end on the smoke set: outputs, caching, resume, failure reporting, nbval."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import copy_stages, run_pipeline
from ptmrec import params, pipeline
from ptmrec.paths import REPO

pytestmark = pytest.mark.slow


def test_smoke_run_writes_every_stage(smoke_runs):
    run = smoke_runs / "smoke"
    for name in pipeline.list_stages():
        assert (run / "notebooks" / f"{name}.ipynb").exists()
        assert json.loads((run / name / "metrics.json").read_text())["stage"] == name
        resolved = (run / name / "params.resolved.yaml").read_text()
        assert "train_per_class: 60" in resolved  # the smoke overrides were applied and recorded
    P = params.load(REPO / "params/smoke.yaml")
    zoo = pd.read_csv(run / "00_zoo_and_tasks/zoo/index.csv")
    assert len(zoo) == len(P.zoo.families) * len(P.zoo.sources) + len(P.zoo.lite_variants) + 1
    tasks = pd.read_csv(run / "00_zoo_and_tasks/tasks/index.csv")
    assert len(tasks) == sum(P.tasks.datasets.values())
    perf = pd.read_csv(run / "01_groundtruth/performance.csv")
    main = perf[perf.seed == P.run.seed]
    assert set(main.method) == set(P.groundtruth.methods)
    tuned = min(P.groundtruth.finetune_tasks or len(tasks), len(tasks))  # fine-tuning covers a subset of tasks
    assert (main.method == "linear_probe").sum() == len(zoo) * len(tasks)
    assert (main.method == "finetune").sum() == len(zoo) * tuned
    assert main.accuracy.between(0, 1).all()
    # transfer is real: better than chance on average, and models differ
    assert (main.accuracy - main.chance).mean() > 0.1
    assert main.groupby("task_id").accuracy.std().mean() > 0.02
    # two jobs: each shardable stage ran as two shard processes before its notebook, timed with them
    log = (smoke_runs / "smoke_log.txt").read_text()
    assert log.count("train_per_class: 60") >= len(pipeline.list_stages())  # each notebook's output streams in
    for name in pipeline.list_sharders():
        assert all(f"{name}: shard {i}/2 done" in log for i in range(2)), name
        marker = json.loads((run / name / "_stage.json").read_text())
        assert marker["jobs"] == 2 and marker["wall_seconds"] >= marker["seconds"]


def test_rerun_with_nothing_changed_skips_every_stage(smoke_runs):
    t0 = time.time()
    r = run_pipeline(smoke_runs, "params/smoke.yaml")
    assert r.stdout.count("up to date, skipped") == len(pipeline.list_stages())
    assert time.time() - t0 < 30


def test_changed_parameters_rerun_downstream_only(smoke_runs, monkeypatch):
    monkeypatch.setenv("PTMREC_RUNS", str(smoke_runs))
    P = params.load(REPO / "params/smoke.yaml")
    changed = params.from_dict({**_smoke_overrides(), "groundtruth": {"probe_steps": 51}}, name="smoke")
    assert pipeline.is_fresh(P, "00_zoo_and_tasks") and pipeline.is_fresh(P, "01_groundtruth")
    assert pipeline.is_fresh(changed, "00_zoo_and_tasks")
    assert not pipeline.is_fresh(changed, "01_groundtruth")
    assert not pipeline.is_fresh(changed, "03_autoencoder")  # downstream of a changed stage


def _smoke_overrides() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params/smoke.yaml").read_text())


def test_failure_names_notebook_and_cell(tmp_path):
    bad = tmp_path / "broken.yaml"  # valid values (checked before any work), impossible data: 12 classes of 10
    bad.write_text("tasks:\n  datasets: {digits: 1}\n  min_classes: 12\n  max_classes: 12\n")
    # one job: with two, stage 00's shard processes would first train the default zoo (minutes), and only its
    # notebook, which samples the tasks, meets the impossible class count
    r = run_pipeline(tmp_path / "runs", str(bad), check=False, jobs=1)
    assert r.returncode != 0
    assert "FAILED: notebook" in r.stderr and "00_zoo_and_tasks.ipynb" in r.stderr and "cell" in r.stderr
    assert "dataset digits: a task needs 12 classes" in r.stderr
    assert not (tmp_path / "runs/broken/01_groundtruth/metrics.json").exists()  # stopped at the first failure


def test_only_needs_its_dependencies(tmp_path):
    r = run_pipeline(tmp_path / "runs", "params/smoke.yaml", "--only", "01_groundtruth", check=False)
    assert r.returncode != 0 and "needs stage 00_zoo_and_tasks" in r.stderr


def test_killed_run_resumes_and_trusts_no_half_file(smoke_runs, tmp_path):
    """SIGKILL the smoke run during ground truth, leave a half-written file, re-run: same results."""
    runs = tmp_path / "runs"
    copy_stages(smoke_runs / "smoke", runs, "00_zoo_and_tasks")  # up to date: only ground truth runs
    env = {**os.environ, "PTMREC_RUNS": str(runs)}
    upto = ["--only", "01_groundtruth"]  # what is resumed; later stages add nothing here
    proc = subprocess.Popen([str(REPO / "run_all.sh"), "params/smoke.yaml", *upto], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = runs / "smoke/01_groundtruth/parts"
    deadline = time.time() + 600
    while time.time() < deadline and len(list(parts.glob("*.csv"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (runs / "smoke/01_groundtruth/_stage.json").exists(), "the run finished before it was killed"
    # a half-written file as a killed writer would leave it: never trusted
    (parts / ".performance.csv.half.tmp").write_text("model_id,task_id\ngarbage")
    run_pipeline(runs, "params/smoke.yaml", *upto)
    got = pd.read_csv(runs / "smoke/01_groundtruth/performance.csv").drop(columns="seconds")
    want = pd.read_csv(smoke_runs / "smoke/01_groundtruth/performance.csv").drop(columns="seconds")
    key = ["model_id", "task_id", "method", "seed", "split"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  want.sort_values(key).reset_index(drop=True))


def test_nbval_reproduces_the_smoke_notebooks(smoke_runs, tmp_path):
    """Re-execute the executed smoke notebooks from scratch in a fresh runs folder; marked outputs must match."""
    notebooks = sorted(str(p) for p in (smoke_runs / "smoke/notebooks").glob("*.ipynb"))
    env = {**os.environ, "PTMREC_RUNS": str(tmp_path / "runs"), "PTMREC_PLAIN_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                        "--rootdir", str(tmp_path), *notebooks], env=env, capture_output=True, text=True,
                       timeout=1200, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:]
    assert "passed" in r.stdout


def test_stage_modules_come_from_the_notebooks_imports():
    """What a stage hashes is what its notebook imports, transitively: no hand-written list to forget."""
    from ptmrec import pipeline

    assert {"evaluate", "protocol", "probing", "ranker", "train", "autoencoder", "metrics", "tokens", "audit",
            "extract", "baselines"} <= pipeline.stage_modules("07_evaluate")
    assert {"offline", "icons", "photos", "pools", "zoo", "nets", "world"} <= pipeline.stage_modules("00_zoo_and_tasks")
    assert "ranker" not in pipeline.stage_modules("00_zoo_and_tasks")  # the driver's lazy imports are not followed


def test_editing_any_module_a_stage_uses_makes_it_stale(tmp_path):
    """Touch each module of a stage's closure in a copy of the code: that stage's code hash moves, and a stage that
    does not use the module keeps its hash."""
    import shutil

    from ptmrec import pipeline

    for sub in ("ptmrec", "notebooks"):
        shutil.copytree(REPO / sub, tmp_path / sub, ignore=shutil.ignore_patterns("__pycache__"))
    before = {s: pipeline.code_hash(s, tmp_path) for s in pipeline.STAGES}
    for stage in ("03_autoencoder", "06_ranker"):
        for m in sorted(pipeline.stage_modules(stage, tmp_path)):
            f = tmp_path / "ptmrec" / f"{m}.py"
            original = f.read_text()
            f.write_text(original + "\n# an edit\n")
            assert pipeline.code_hash(stage, tmp_path) != before[stage], m
            for other in pipeline.STAGES:
                if m not in pipeline.stage_modules(other, tmp_path):
                    assert pipeline.code_hash(other, tmp_path) == before[other], (m, other)
            f.write_text(original)


def test_no_import_cycles_and_no_private_helpers_across_modules():
    """Every ptmrec module's imports (top level or lazy, inside functions) form no cycle, and no module imports
    another's private helper: a helper used by two modules is public in the one that owns it."""
    import ast

    from ptmrec import pipeline

    mods = sorted(p.stem for p in (REPO / "ptmrec").glob("*.py") if p.stem != "__init__")
    graph = {m: pipeline.ptmrec_imports((REPO / "ptmrec" / f"{m}.py").read_text()) - {m} for m in mods}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [n])}"
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in mods:
        if m not in state:
            visit(m, [m])
    for m in mods:
        for node in ast.walk(ast.parse((REPO / "ptmrec" / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"ptmrec/{m}.py imports private {private} from {node.module}"


def test_no_module_defines_a_name_twice():
    """A second top-level ``def`` of a name silently replaces the first (the feature store once had two
    ``store_path`` functions with different arguments, and the first's callers got the second)."""
    import ast
    from collections import Counter

    for path in sorted((REPO / "ptmrec").glob("*.py")):
        names = Counter(n.name for n in ast.parse(path.read_text()).body
                        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
        assert not [n for n, c in names.items() if c > 1], (path.name, [n for n, c in names.items() if c > 1])
