"""`ptmrec recommend` on the smoke run: a ranked table, budgets, and clear errors for bad input."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ptmrec.data import load_tasks
from ptmrec.paths import REPO
from ptmrec.recommend import RecommendError, check_run, recommend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(smoke_runs):
    return smoke_runs / "smoke"


@pytest.fixture(scope="module")
def images(run, tmp_path_factory):
    """Three classes of real target images, one unreadable file, grey and RGBA files mixed in."""
    pools, _ = load_tasks(run / "00_zoo_and_tasks" / "tasks")
    pool = pools["fmnist"]
    root = tmp_path_factory.mktemp("images")
    for c in range(3):
        d = root / pool.classes[c].replace("/", "-")
        d.mkdir()
        for k, i in enumerate(np.flatnonzero(pool.labels == c)[:6]):  # fewer than tokens.per_class: all are read
            im = Image.fromarray(pool.images[i])
            im = im.convert("L") if k % 3 == 1 else im.convert("RGBA") if k % 3 == 2 else im
            im.save(d / f"{k}.png")
    (root / pool.classes[0].replace("/", "-") / "broken.png").write_bytes(b"not a png")
    return root


def _cli(*args: str, env_runs=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PTMREC_RUNS": str(env_runs)} if env_runs else {})}
    return subprocess.run([sys.executable, "-m", "ptmrec.cli", "recommend", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


def test_cli_ranks_every_model_and_writes_csv_and_json(run, images, tmp_path, smoke_runs):
    r = _cli("--run", str(run), "--images", str(images), "--out", str(tmp_path), env_runs=smoke_runs)
    assert r.returncode == 0, r.stderr
    table = pd.read_csv(tmp_path / "ranking.csv")
    zoo = pd.read_csv(run / "00_zoo_and_tasks/zoo/index.csv")
    assert sorted(table.model_id) == sorted(zoo.model_id) and table["rank"].tolist() == list(range(1, len(zoo) + 1))
    assert table.score.is_monotonic_decreasing and np.isfinite(table.score).all()
    assert {"latency_p50_ms", "peak_memory_mb"} <= set(table.columns)  # stage 08 profiled the cpu
    info = json.loads((tmp_path / "ranking.json").read_text())
    assert info["n_images"] == 18 and len(info["classes"]) == 3
    assert any("broken.png" in s[0] for s in info["skipped_files"]) and "skipped 1 unreadable" in r.stdout
    assert info["seconds"]["rank"] < 5


def test_python_api_matches_the_cli(run, images, tmp_path, smoke_runs, monkeypatch):
    monkeypatch.setenv("PTMREC_RUNS", str(smoke_runs))
    rec = recommend(run, images, top=3)
    assert len(rec.table) == 3 and rec.table["rank"].tolist() == [1, 2, 3]
    again = recommend(run, images)
    assert again.table.model_id.head(3).tolist() == rec.table.model_id.tolist()


def test_budget_nothing_fits_shows_the_nearest(run, images, tmp_path, smoke_runs):
    r = _cli("--run", str(run), "--images", str(images), "--max-latency-ms", "0.0001", "--out", str(tmp_path),
             env_runs=smoke_runs)
    assert r.returncode == 1 and "No model fits the budget. Nearest models:" in r.stdout
    assert len(pd.read_csv(tmp_path / "nearest.csv")) > 0


def test_budget_keeps_only_models_within_it(run, images, smoke_runs, monkeypatch):
    monkeypatch.setenv("PTMREC_RUNS", str(smoke_runs))
    full = recommend(run, images)
    limit = float(full.table.latency_p50_ms.median())
    rec = recommend(run, images, max_latency_ms=limit)
    assert 0 < len(rec.table) < len(full.table) and (rec.table.latency_p50_ms <= limit).all()


def test_one_class_folder_is_a_clear_error(run, images, tmp_path, smoke_runs):
    one = tmp_path / "one"
    shutil.copytree(next(p for p in images.iterdir() if p.is_dir()), one / "only")
    r = _cli("--run", str(run), "--images", str(one), env_runs=smoke_runs)
    assert r.returncode == 2 and str(one) in r.stderr


def test_run_missing_a_stage_or_from_another_version(run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(run / "00_zoo_and_tasks" / "zoo", partial / "00_zoo_and_tasks" / "zoo")
    with pytest.raises(RecommendError, match="04_dataset_tokens/params.resolved.yaml: missing; stage 04_dataset_tokens"):
        check_run(partial)
    old = tmp_path / "old"
    for stage in ("04_dataset_tokens", "06_ranker"):
        shutil.copytree(run / stage, old / stage)
    shutil.copytree(run / "00_zoo_and_tasks" / "zoo", old / "00_zoo_and_tasks" / "zoo")
    cfg = json.loads((old / "06_ranker/ranker/config.json").read_text())
    (old / "06_ranker/ranker/config.json").write_text(json.dumps({**cfg, "format": 0}))
    with pytest.raises(RecommendError, match="another version of ptmrec"):
        check_run(old)
    with pytest.raises(RecommendError, match="no such run folder"):
        check_run(tmp_path / "nope")


def test_the_encoder_comes_from_the_cache_beside_the_run(run, images, monkeypatch, tmp_path):
    """A run read from another runs folder than $PTMREC_RUNS still finds its own cached encoder."""
    from ptmrec import encoders

    monkeypatch.delenv("PTMREC_CACHE", raising=False)
    monkeypatch.setenv("PTMREC_RUNS", str(tmp_path / "elsewhere"))
    seen = {}

    def build(params, device, cache_dir):
        seen["cache"] = cache_dir
        raise RuntimeError("stop here")

    monkeypatch.setattr(encoders, "build_encoder", build)
    with pytest.raises(RuntimeError, match="stop here"):
        recommend(run, images)
    assert seen["cache"] == run.resolve().parent / "_cache"
