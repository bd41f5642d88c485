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
from ptmrec.ranker import load_ranker
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
        recommend(run, images, traced=False)  # the open_clip path (an older run without the traced tower)
    assert seen["cache"] == run.resolve().parent / "_cache"


# ----------------------------------------------------------------------------- the traced tower: a fast cold start


HEAVY = ("open_clip", "transformers", "timm", "sklearn", "matplotlib", "seaborn", "scipy")


def _ranker_config(**changes):
    """An edit for ``_view``: the view's ranker config.json with ``changes`` (a new file, not the linked one)."""

    def edit(view):
        cfg = view / "06_ranker/ranker/config.json"
        data = json.loads(cfg.read_text())
        cfg.unlink()  # the view links the run's file: replace the link, never write through it
        cfg.write_text(json.dumps({**data, **changes}))

    return edit


def _view(run, tmp_path, skip=(), edit=None):
    """A copy of ``run`` made of links to its files, except those under ``skip``; ``edit(view)`` may change it.
    Its runs folder links the run's cache, so the encoder built there is found (the open_clip fallback)."""
    view = tmp_path / "runs" / "smoke"
    for f in run.rglob("*"):
        rel = f.relative_to(run).as_posix()
        if f.is_file() and not any(rel.startswith(s) for s in skip):
            (view / rel).parent.mkdir(parents=True, exist_ok=True)
            (view / rel).symlink_to(f.resolve())
    if (run.parent / "_cache").exists():
        (view.parent / "_cache").symlink_to((run.parent / "_cache").resolve())
    if edit:
        edit(view)
    return view


def test_cold_cli_ranks_without_importing_torch(run, images, tmp_path, smoke_runs):
    """The default cold call (tokens only, CPU) runs the run's ONNX exports: it imports neither torch nor
    open_clip, timm, transformers, sklearn or matplotlib (torch's import alone was 2 s of a 3.5 s call)."""
    assert (run / "04_dataset_tokens/image_tower/image_tower.onnx").is_file()
    assert (run / "06_ranker/ranker/ranker.onnx").is_file()
    env = {**os.environ, "PTMREC_RUNS": str(smoke_runs)}
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ptmrec.cli", "recommend", "--run", str(run),
                        "--images", str(images), "--out", str(tmp_path), "--probe", "0"], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported and not imported & {"torch", *HEAVY}, sorted(imported & {"torch", *HEAVY})
    assert "onnx)" in r.stdout and json.loads((tmp_path / "ranking.json").read_text())["encoder"] == "onnx"


def test_onnx_traced_and_open_clip_paths_rank_alike(run, images, tmp_path, smoke_runs, monkeypatch):
    """The three ways to embed and rank (ONNX without torch, the traced tower with the torch ranker, open_clip)
    give one ranking: an export that drifted from the trained ranker or encoder would reorder it."""
    monkeypatch.setenv("PTMREC_RUNS", str(smoke_runs))
    no_onnx = _view(run, tmp_path, skip=("04_dataset_tokens/image_tower/image_tower.onnx", "06_ranker/ranker/ranker.onnx"))
    recs = [recommend(run, images, probe=0), recommend(no_onnx, images, probe=0),
            recommend(run, images, traced=False, probe=0)]
    assert [r.info["encoder"] for r in recs] == ["onnx", "traced", "open_clip"]
    for other in recs[1:]:
        assert other.table.model_id.tolist() == recs[0].table.model_id.tolist()
        np.testing.assert_allclose(other.table.score, recs[0].table.score, atol=1e-4)


def test_run_without_its_exports_falls_back_with_one_line(run, images, tmp_path):
    old = _view(run, tmp_path, skip=("04_dataset_tokens/image_tower/",))
    r = _cli("--run", str(old), "--images", str(images), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("ptmrec recommend:")]
    assert len(lines) == 1, lines
    assert all(w in lines[0] for w in ("no ONNX export", "no usable traced image tower", "with open_clip instead"))
    assert json.loads((tmp_path / "out" / "ranking.json").read_text())["encoder"] == "open_clip"


def test_six_classes_all_survive_the_token_cut(run, tmp_path, smoke_runs, monkeypatch):
    """6 classes x tokens.per_class tokens, a ranker that keeps 12: 2 per class (the first 12 would be 2 classes)."""
    monkeypatch.setenv("PTMREC_RUNS", str(smoke_runs))
    pools, _ = load_tasks(run / "00_zoo_and_tasks" / "tasks")
    pool = next(p for p in pools.values() if len(p.classes) >= 6 and min(np.bincount(p.labels)[:6]) >= 4)
    root = tmp_path / "six"
    for c in range(6):
        (root / f"c{c}").mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(pool.labels == c)[:8]):
            Image.fromarray(pool.images[i]).save(root / f"c{c}" / f"{k}.png")

    view = _view(run, tmp_path, edit=_ranker_config(max_dataset_tokens=12))
    rec = recommend(view, root)
    assert rec.info["n_tokens_embedded"] > 12 and rec.info["n_tokens"] == 12
    assert rec.info["tokens_per_class"] == {f"c{c}": 2 for c in range(6)}
    assert len(rec.table) == len(rec.ranked) and rec.table.score.is_monotonic_decreasing


# ----------------------------------------------------------------------------- the report


def test_report_writes_html_and_png_with_budget_and_fit(run, images, tmp_path, smoke_runs, monkeypatch):
    monkeypatch.setenv("PTMREC_RUNS", str(smoke_runs))
    limit = float(recommend(run, images).table.latency_p50_ms.median())
    r = _cli("--run", str(run), "--images", str(images), "--max-latency-ms", str(limit), "--report",
             "--out", str(tmp_path), env_runs=smoke_runs)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (tmp_path / "ranking.html").read_text()
    zoo = pd.read_csv(run / "00_zoo_and_tasks/zoo/index.csv")
    assert all(m in page for m in zoo.model_id) and "ranking.png" in page
    assert "latency p50 &lt;= " in page and "models fit" in page and "fits budget" in page and "peak memory (MB)" in page
    with Image.open(tmp_path / "ranking.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    info = json.loads((tmp_path / "ranking.json").read_text())
    assert len(info["all_models"]) == len(zoo) and 0 < info["n_within_budget"] < len(zoo)


def test_recommendation_displays_as_a_table_with_probe_columns(run, images, tmp_path, smoke_runs, monkeypatch):
    """_repr_html_ for JupyterLab; ``probed``/``probe_seconds`` (the coming --probe K) are shown when present."""
    monkeypatch.setenv("PTMREC_RUNS", str(smoke_runs))
    rec = recommend(run, images, top=2, probe=0)
    shown = rec._repr_html_()
    assert shown.count("<tr") == rec.info["n_models"] + 1 and "probed" not in shown and "score" in shown
    rec.ranked = rec.ranked.assign(probed=rec.ranked["rank"] <= 2, probe_seconds=np.where(rec.ranked["rank"] <= 2, 1.5, np.nan))
    assert "probed" in rec._repr_html_() and "1.50" in rec._repr_html_()
    files = rec.save(tmp_path, report=True)
    assert {f.name for f in files} >= {"ranking.html", "ranking.png", "ranking.csv", "ranking.json"}
    assert "except those marked probed" in (tmp_path / "ranking.html").read_text()


def test_probe_runs_the_priors_favourites_and_ranks_again_with_their_evidence(run, images, smoke_runs, monkeypatch):
    monkeypatch.setenv("PTMREC_RUNS", str(smoke_runs))
    cfg = check_run(run)
    prior = recommend(run, images, probe=0)
    assert "probed" not in prior.ranked.columns and prior.info["probe_k"] == 0
    rec = recommend(run, images, probe=2)
    assert rec.info["probe_k"] == 2 and sorted(rec.info["probed_models"]) == sorted(prior.ranked.model_id[:2])
    assert rec.ranked.probed.sum() == 2 and (rec.ranked.probe_seconds[rec.ranked.probed] > 0).all()
    assert rec.info["probe_estimators"] == cfg["evidence"] and rec.info["seconds"]["probe"] > 0
    trust = load_ranker(run / "06_ranker" / "ranker")[0].inputs.trust.numpy()  # the run's inner-validated table
    n = len(cfg["model_ids"])
    assert rec.info["token_weight"] == pytest.approx(float(np.interp(2 / n, trust[:, 0], trust[:, 1])))
    assert rec.info["neighbours"] == cfg["neighbours"]  # stage 06's inner-validated (weight, temperature)
    moved = prior.ranked.set_index("model_id").score - rec.ranked.set_index("model_id").score
    assert np.abs(moved).max() > 1e-6  # the evidence reached the ranker
    assert recommend(run, images).info["probe_k"] == 0  # fast by default: no zoo model runs
    assert recommend(run, images, probe=None).info["probe_k"] == min(cfg["probe_k"], len(cfg["model_ids"]))
    assert "probed 2 models" in _cli("--run", str(run), "--images", str(images), "--probe", "2", "--out",
                                     str(images.parent / "p2"), env_runs=smoke_runs).stdout
    alone = _cli("--run", str(run), "--images", str(images), "--probe", "--out", str(images.parent / "pk"), env_runs=smoke_runs)
    assert f"probed {min(cfg['probe_k'], len(cfg['model_ids']))} models" in alone.stdout, alone.stderr[-2000:]


def test_probe_beyond_the_zoo_probes_all_and_a_broken_model_is_skipped(run, images, tmp_path, smoke_runs):
    """--probe 100 on an 8-model zoo: every model, said so; one model's weights missing: reported, ranked anyway."""
    zoo = pd.read_csv(run / "00_zoo_and_tasks/zoo/index.csv")
    broken = zoo.model_id[0]
    view = _view(run, tmp_path, skip=(f"00_zoo_and_tasks/zoo/{zoo.path[0]}/model.safetensors",))
    r = _cli("--run", str(view), "--images", str(images), "--probe", "100", "--out", str(tmp_path / "out"),
             env_runs=view.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"more than the zoo's {len(zoo)} models: all were probed" in r.stdout
    assert f"probing {broken} failed" in r.stderr and "Traceback" not in r.stderr
    info = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert set(info["probed_models"]) == set(zoo.model_id) - {broken} and list(info["probe_failures"]) == [broken]
    ranked = pd.DataFrame(info["all_models"])
    assert len(ranked) == len(zoo) and not ranked.set_index("model_id").probed[broken]


def test_probe_needs_two_images_per_class(run, images, tmp_path):
    folder = tmp_path / "few"
    shutil.copytree(images, folder)
    lonely = sorted(p for p in folder.iterdir() if p.is_dir())[1]
    for f in sorted(lonely.glob("*.png"))[1:]:
        f.unlink()
    _one_line_error(_cli("--run", str(run), "--images", str(folder), "--probe", "2"), f"class {lonely.name} has 1",
                    "--probe 0")


# ----------------------------------------------------------------------------- bad input: one line, exit 2


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptmrec recommend: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_bad_images_folders_are_one_line_errors(run, images, tmp_path):
    _one_line_error(_cli("--run", str(run), "--images", str(images), "--probe", "-1"), "--probe -1", "0 or more")
    _one_line_error(_cli("--run", str(run), "--images", str(tmp_path / "nope")), str(tmp_path / "nope"), "no such folder",
                    "give --images a folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli("--run", str(run), "--images", str(tmp_path / "empty")), str(tmp_path / "empty"), "empty",
                    "<class name>")
    png = next(images.rglob("*.png"))
    _one_line_error(_cli("--run", str(run), "--images", str(png)), str(png), "a file, not a folder", "give --images")
    (tmp_path / "flat").mkdir()
    shutil.copy(png, tmp_path / "flat" / "a.png")
    _one_line_error(_cli("--run", str(run), "--images", str(tmp_path / "flat")), "no class subfolders")


def test_bad_run_folders_are_one_line_errors(run, images, tmp_path):
    _one_line_error(_cli("--run", str(tmp_path / "none"), "--images", str(images)), str(tmp_path / "none"),
                    "no such run folder", "./run_all.sh")
    png = next(images.rglob("*.png"))
    _one_line_error(_cli("--run", str(png), "--images", str(images)), str(png), "a file, not a run folder")

    old = _view(run, tmp_path, edit=_ranker_config(format=0))
    _one_line_error(_cli("--run", str(old), "--images", str(images)), str(old / "06_ranker/ranker/config.json"),
                    "another version of ptmrec", "re-run stage 06_ranker")
    r = _cli("--run", str(old), "--images", str(images), "--debug")  # the stack trace on demand
    assert r.returncode != 0 and "Traceback" in r.stderr and "RecommendError" in r.stderr


def test_run_params_of_another_version_are_one_line_errors(run, images, tmp_path):
    def unknown_key(view):
        p = view / "04_dataset_tokens/params.resolved.yaml"
        text = p.read_text()
        p.unlink()
        p.write_text(text + "\nfuture_section: {x: 1}\n")

    old = _view(run, tmp_path, edit=unknown_key)
    _one_line_error(_cli("--run", str(old), "--images", str(images)), "params.resolved.yaml",
                    "another version of ptmrec")


# ----------------------------------------------------------------------------- progress in a papermill log


def test_plain_progress_prints_readable_lines(monkeypatch, capsys):
    """What, how many, how long left, on lines of their own; nothing for a short loop."""
    from ptmrec import progress as PR

    monkeypatch.setenv("PTMREC_PLAIN_PROGRESS", "1")

    def extract_things(n):
        return list(PR.progress(range(n)))

    assert extract_things(5) == list(range(5)) and capsys.readouterr().out == ""  # under FIRST_LINE: silent
    monkeypatch.setattr(PR, "FIRST_LINE", 0.0)
    monkeypatch.setattr(PR, "PLAIN_INTERVAL", 0.0)
    assert extract_things(4) == list(range(4))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("extract things: 1/4 (25%), 0 s so far, about ") and lines[0].endswith(" left")
    assert lines[-1] == "extract things: 4/4 done in 0 s" and len(lines) == 4 and "\r" not in "".join(lines)
    list(PR.progress(iter(range(2)), desc="profiling"))
    assert capsys.readouterr().out.splitlines()[0] == "profiling: 1 done, 0 s so far"
    assert (PR.duration(42), PR.duration(185), PR.duration(3720)) == ("42 s", "3 min 05 s", "1 h 02 min")
