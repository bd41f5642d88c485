"""Time one recommendation, cold (a fresh ``ptmrec recommend`` process) and warm (in-session), against the
fastest forward-pass baseline on the same zoo and images.

    .venv/bin/python benchmarks/recommend.py --run runs/default [--images 500] [--repeats 3] [--no-baseline]

Works on any finished run folder (``--run``; the positional form ``benchmarks/recommend.py RUN`` too).
Writes a folder of real labelled target images (PNG, one subfolder per class, from the run's
own target pools), then times:

- the cold CLI call: ``python -m ptmrec.cli recommend --run R --images F --probe 0`` (tokens only, the default) in a
  fresh process, wall clock, ``--repeats`` times (median), three ways: with the run's ONNX exports (stages 04
  and 06: onnxruntime, no torch; issue 17: at most 3 s for the default zoo), on a view of the run without
  them (the traced tower and the torch ranker), and on a view without the image tower folder (the encoder
  built through open_clip); then once with ``--probe`` alone (the run's inner-validated ``probe_k`` models
  run on the images, torch);
- ``recommend()`` in-process: the first call of the session and ``--repeats`` warm calls (median), tokens only;
- the cheapest forward-pass baseline: one forward pass of every zoo model over the same
  images (features, what every transferability estimator needs) plus the fastest scorer of
  the run's stage 05 on those features (skipped with ``--no-baseline``).

The baseline is also timed on as many images as recommend() embeds (a class-balanced sample
of tokens.per_class per class): the like-for-like comparison when both see the same images.

Goal (issue 6): a recommendation for a 50-model zoo and 500 images in at most 5 s, and at
least 20x faster than the fastest forward-pass baseline. The embedded zoo has fewer than 50
models; the JSON gives the measured figures, the forward-pass cost scaled to 50 models
(linear in the number of models) and the ranker's forward pass timed on 50 model tokens (the
zoo's tokens repeated), so the 50-model recommendation is measured, not assumed.
Writes benchmarks/results/recommend.json (``--json`` elsewhere). Timings on a shared machine are
noisy: the load average before and after is recorded beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def write_folder(run: Path, n_images: int, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """n_images real target images of the run's largest-class pool, as PNG class folders."""
    from ptmrec.data import load_tasks
    from ptmrec.pools import class_balanced_sample

    pools, _ = load_tasks(run / "00_zoo_and_tasks" / "tasks")
    pool = max(pools.values(), key=lambda p: min(p.class_counts().values()) * min(len(p.classes), 5))
    classes = np.arange(min(len(pool.classes), 5))
    keep = np.flatnonzero(np.isin(pool.labels, classes))
    idx = keep[class_balanced_sample(pool.labels[keep], n_images // len(classes), seed)]
    folder = Path(tempfile.mkdtemp(prefix="ptmrec-images-"))
    for k, i in enumerate(idx):
        d = folder / f"class_{pool.labels[i]}"
        d.mkdir(exist_ok=True)
        Image.fromarray(pool.images[i]).save(d / f"{k:04d}.png")
    return folder, pool.images[idx], pool.labels[idx]


def forward_baseline(run: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """Seconds of one feature forward pass per zoo model, plus the fastest stage-05 scorer on them."""
    from ptmrec import transferability as T
    from ptmrec.features import forward
    from ptmrec.zoo import load_model

    zoo = pd.read_csv(run / "00_zoo_and_tasks" / "zoo" / "index.csv")
    timing = pd.read_csv(run / "05_baselines" / "timing.csv").set_index("scorer")
    fastest = timing.drop(index=["(forward pass)"], errors="ignore").median_seconds.idxmin()
    fwd, score = 0.0, 0.0
    for row in zoo.itertuples():
        model, cfg = load_model(run / "00_zoo_and_tasks" / "zoo" / row.path)
        feats, logits, secs = forward(model, cfg["image_size"], images, 256, "cpu")
        fwd += secs
        score += T.score(fastest, feats, labels, logits)[1]
    return dict(models=len(zoo), forward_seconds=fwd, fastest_scorer=fastest, scorer_seconds=score,
                total_seconds=fwd + score)


def rank_seconds(run: Path, tokens: np.ndarray, n_models: int, repeats: int = 20) -> float:
    """Median seconds of the ranker's forward pass over ``n_models`` model tokens (the zoo's, cycled)."""
    import torch

    from ptmrec.ranker import load_ranker
    from ptmrec.recommend import check_run, ranker_inputs

    cfg = check_run(run)
    model, _ = load_ranker(run / "06_ranker" / "ranker")
    mt, dt = ranker_inputs(run, cfg, tokens)  # [1, N, D_m], [1, M, D_d]
    pick = torch.from_numpy(np.resize(np.arange(mt.shape[1]), n_models))  # the zoo's models, cycled
    mt, idx = mt[:, pick], pick[None]  # [1, n_models, D_m]; idx: the learned-id ablation's rows
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(mt, dt, None, idx)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cold_cli(run: Path, folder: Path, repeats: int, probe: list[str] = ("--probe", "0")) -> dict:
    """Wall seconds of ``ptmrec recommend`` in fresh processes (each one imports everything it needs), and the
    way it embedded (``encoder`` of ranking.json: onnx, traced or open_clip)."""
    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "ptmrec.cli", "recommend", "--run", str(run), "--images", str(folder),
                                "--out", out, *probe], capture_output=True, text=True, cwd=REPO)
            times.append(time.perf_counter() - t0)
            if r.returncode not in (0, 1):
                raise RuntimeError(f"ptmrec recommend failed ({r.returncode}): {r.stderr[-2000:]}")
        how = json.loads((Path(out) / "ranking.json").read_text())["encoder"]
    return dict(median_seconds=round(float(np.median(times)), 3), seconds=[round(t, 3) for t in times], encoder=how)


def view_without(run: Path, skip: tuple[str, ...]) -> Path:
    """A view of ``run`` without the files under ``skip`` (links to every other file, and to the run's cache
    of built encoders): what a run made before those exports looks like to ``ptmrec recommend``."""
    view = Path(tempfile.mkdtemp(prefix="ptmrec-run-")) / run.name
    if (run.parent / "_cache").is_dir():  # the built encoder of the run's cache, as for the run itself
        (view.parent / "_cache").symlink_to((run.parent / "_cache").resolve())
    for f in run.rglob("*"):
        rel = f.relative_to(run)
        if f.is_file() and not rel.as_posix().startswith(skip):
            (view / rel).parent.mkdir(parents=True, exist_ok=True)
            (view / rel).symlink_to(f.resolve())
    return view


def in_session(run: Path, folder: Path, repeats: int) -> tuple[dict, object]:
    """The first ``recommend()`` of this process and the median of ``repeats`` warm calls after it."""
    from ptmrec.recommend import recommend

    t0 = time.perf_counter()
    first = recommend(run, folder, probe=0)
    first_s = time.perf_counter() - t0
    warm, rec = [], first
    for _ in range(repeats):
        t0 = time.perf_counter()
        rec = recommend(run, folder, probe=0)
        warm.append(time.perf_counter() - t0)
    return dict(first_call_seconds=round(first_s, 3), warm_seconds=[round(t, 3) for t in warm],
                warm_median_seconds=round(float(np.median(warm)), 3), warm_steps=rec.info["seconds"],
                encoder=rec.info["encoder"]), rec


def baseline_figures(run: Path, images: np.ndarray, labels: np.ndarray, rec, warm_s: float) -> dict:
    """The forward-pass baseline on all images and on recommend()'s sample, and the 50-model figures."""
    from ptmrec.recommend import _run_params, image_encoder
    from ptmrec.tokens import folder_tokens

    base = forward_baseline(run, images, labels)
    per_model = base["total_seconds"] / base["models"]
    n = rec.info["n_images"]  # the same baseline on as many images as recommend() embeds
    sub = np.concatenate([np.flatnonzero(labels == c)[: n // len(np.unique(labels))] for c in np.unique(labels)])
    base_sample = forward_baseline(run, images[sub], labels[sub])
    P = _run_params(run)
    tokens = folder_tokens(Path(rec.info["images"]), image_encoder(run, P)[0], P.tokens.per_class, P.tokens.kind, 0)[0]
    rank_n, rank_50 = rank_seconds(run, tokens, base["models"]), rank_seconds(run, tokens, 50)
    # a 50-model recommendation: the measured warm call with its ranking step timed at 50 models
    warm_50 = warm_s - rec.info["seconds"]["rank"] + max(rec.info["seconds"]["rank"], rank_50)
    return dict(baseline=base, speedup_warm=round(base["total_seconds"] / warm_s, 1),
                baseline_on_embedded_sample=base_sample,
                speedup_warm_same_images=round(base_sample["total_seconds"] / warm_s, 1),
                baseline_seconds_at_50_models=round(per_model * 50, 2),
                rank_forward_seconds=round(rank_n, 4), rank_forward_seconds_at_50_models=round(rank_50, 4),
                recommend_warm_seconds_at_50_models=round(warm_50, 3),
                speedup_warm_at_50_models=round(per_model * 50 / warm_50, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_pos", nargs="?", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help="a finished run folder, e.g. runs/default or /tmp/runs/smoke")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3, help="cold processes and warm calls, each (median)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the forward-pass baseline (every zoo model)")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "recommend.json")
    a = ap.parse_args()
    run = (a.run or a.run_pos or ap.error("give --run RUN")).resolve()
    load_before = os.getloadavg()[0]
    folder, images, labels = write_folder(run, a.images)
    from ptmrec.recommend import TOWER_DIR

    torch_view = view_without(run, (f"{TOWER_DIR}/image_tower.onnx", "06_ranker/ranker/ranker.onnx"))
    old_view = view_without(run, (TOWER_DIR + "/",))
    try:
        cold = cold_cli(run, folder, a.repeats)  # the ONNX exports: no torch
        cold_torch = cold_cli(torch_view, folder, a.repeats)  # the traced tower and the torch ranker
        cold_old = cold_cli(old_view, folder, a.repeats)  # the encoder built through open_clip
        cold_probe = cold_cli(run, folder, 1, probe=("--probe",))  # the run's inner-validated probe_k
    finally:
        for v in (torch_view, old_view):
            shutil.rmtree(v.parent, ignore_errors=True)
    session, rec = in_session(run, folder, a.repeats)
    result = dict(
        run=str(run), n_images=int(len(images)), n_classes=len(rec.info["classes"]), n_models=rec.info["n_models"],
        # recommend() embeds a class-balanced sample (tokens.per_class per class), as the ranker was trained
        n_images_embedded=rec.info["n_images"], n_dataset_tokens=rec.info["n_tokens"],
        recommend_cold_cli=cold, recommend_cold_cli_torch=cold_torch, recommend_cold_cli_open_clip=cold_old,
        recommend_cold_cli_default_probe=dict(cold_probe, probe_k=json.loads(
            (run / "06_ranker/ranker/config.json").read_text()).get("probe_k", 0)),
        recommend_cold_seconds=cold["median_seconds"], recommend_warm_seconds=session["warm_median_seconds"],
        recommend_in_session=session, top3=rec.table.model_id.head(3).tolist())
    if not a.no_baseline:
        result.update(baseline_figures(run, images, labels, rec, session["warm_median_seconds"]))
    result.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  load_before=load_before, load_after=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M"))
    shutil.rmtree(folder, ignore_errors=True)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
