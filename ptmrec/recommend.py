"""``ptmrec recommend``: rank a run's zoo for a folder of labelled images it has never seen.

    >>> rec = recommend("runs/default", "my_images/", top=5, max_latency_ms=20, device="cpu")
    >>> rec.table            # rank, model_id, score, latency/memory when profiled
    >>> rec.save("out/")     # ranking.csv + ranking.json

The images (one subfolder per class) are embedded by the run's own encoder (stage 04) into
dataset tokens, the run's ranker (stage 06) scores every model of the zoo from its model
token (stage 03), and, when the run has a hardware profile of the device (stage 08), models
outside the latency/memory budget are set aside (the nearest ones are shown when none fits).
No model of the zoo is run on the images: that is what makes it fast.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .ranker import FORMAT

class RecommendError(RuntimeError):
    """The run folder or the images cannot give a recommendation; the message says what is missing."""


@dataclass
class Recommendation:
    table: pd.DataFrame  # the models within budget, best first
    nearest: pd.DataFrame  # when nothing fits: the models closest to the budget
    info: dict[str, Any] = field(default_factory=dict)  # inputs, budget, seconds per step, skipped files

    def save(self, out_dir: str | Path) -> list[Path]:
        """ranking.csv (+ nearest.csv when nothing fits) and ranking.json, written atomically."""
        from .paths import write_csv, write_json

        out = Path(out_dir)
        write_csv(out / "ranking.csv", self.table)
        files = [out / "ranking.csv", out / "ranking.json"]
        if len(self.nearest):
            write_csv(out / "nearest.csv", self.nearest)
            files.append(out / "nearest.csv")
        write_json(out / "ranking.json", {**self.info, "ranking": self.table.to_dict(orient="records"),
                                          "nearest": self.nearest.to_dict(orient="records")})
        return files


NEEDS = {  # file -> the stage that writes it
    "00_zoo_and_tasks/zoo/index.csv": "00_zoo_and_tasks",
    "04_dataset_tokens/params.resolved.yaml": "04_dataset_tokens",
    "06_ranker/ranker/config.json": "06_ranker",
    "06_ranker/ranker/model.safetensors": "06_ranker",
}


def check_run(run: Path) -> dict[str, Any]:
    """The run's ranker config, after checking every file a recommendation reads is there."""
    from .paths import read_json

    run = Path(run)
    if not run.is_dir():
        raise RecommendError(f"{run}: no such run folder (expected runs/<set>/ of a finished ./run_all.sh)")
    for rel, stage in NEEDS.items():
        if not (run / rel).is_file():
            raise RecommendError(f"{run / rel}: missing; stage {stage} has not run in this run folder "
                                 f"(./run_all.sh params/<set>.yaml --from {stage})")
    cfg = read_json(run / "06_ranker/ranker/config.json")
    if cfg.get("format") != FORMAT:
        raise RecommendError(f"{run / '06_ranker/ranker/config.json'}: written by another version of ptmrec "
                             f"(format {cfg.get('format')}, this version reads {FORMAT}); re-run stage 06_ranker")
    return cfg


def _run_params(run: Path):
    import yaml

    from . import params as params_mod

    path = Path(run) / "04_dataset_tokens" / "params.resolved.yaml"
    raw = yaml.safe_load(path.read_text())
    return params_mod.from_dict({k: v for k, v in raw.items() if k not in ("source",)}, origin=str(path))


def _hardware(run: Path, device: str, ranked: pd.DataFrame, max_latency_ms: float | None,
              max_memory_mb: float | None, latency: str) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """(fits, nearest, profiled): joins the measured profile of ``device`` and applies the budget."""
    from . import budgets, hardware

    budget = max_latency_ms is not None or max_memory_mb is not None
    try:
        profile = hardware.load_profile(run, device)
    except (FileNotFoundError, ValueError, KeyError) as e:
        if budget:
            raise RecommendError(f"a latency/memory budget needs measured profiles: {e}") from None
        return ranked, ranked.iloc[:0], False
    fits, nearest = budgets.apply_budget(ranked, profile, max_latency_ms, max_memory_mb, latency=latency)
    return fits, nearest, True


def run_encoder(run: Path, P: Any, device: str = "cpu") -> Any:
    """The run's stage-04 encoder, from the cache of the runs folder the run lies in (or data.cache_dir)."""
    from . import encoders
    from .pools import cache_folder

    return encoders.build_encoder(P.encoder, device, cache_folder(P.data, Path(run).resolve().parent))


def ranker_inputs(run: Path, cfg: dict[str, Any], tokens: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(model tokens [1, N, D_m] in the ranker's model order, dataset tokens [1, M, D_d] cut to max_dataset_tokens)."""
    from .ranker import model_token_table

    ids, table = model_token_table(run, cfg["model_tokens"])
    order = [ids.index(m) for m in cfg["model_ids"]]
    mt = torch.from_numpy(table[order])[None]
    dt = torch.from_numpy(np.asarray(tokens, np.float32)[: cfg["max_dataset_tokens"]])[None]
    return mt, dt


def recommend(run: str | Path, images: str | Path, top: int | None = None, max_latency_ms: float | None = None,
              max_memory_mb: float | None = None, device: str = "cpu", seed: int = 0) -> Recommendation:
    """Rank the zoo of ``run`` for the labelled image folder ``images`` (see the module docstring)."""
    from .ranker import load_ranker
    from .tokens import folder_tokens

    run, images = Path(run), Path(images)
    cfg = check_run(run)
    if device != "cpu":
        from .hardware import check_device

        check_device(device)
    P = _run_params(run)
    times = {}
    t0 = time.perf_counter()
    encoder = run_encoder(run, P, device)
    times["load_encoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens, labels, classes, skipped = folder_tokens(images, encoder, P.tokens.per_class, P.tokens.kind, seed)
    times["dataset_tokens"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model, _ = load_ranker(run / "06_ranker" / "ranker")
    mt, dt = ranker_inputs(run, cfg, tokens)  # [1, N, D_m], [1, M, D_d]
    with torch.no_grad():
        scores = model(mt, dt, None, torch.arange(mt.shape[1])[None])[0].numpy()  # [N]
    times["rank"] = time.perf_counter() - t0
    zoo = pd.read_csv(run / "00_zoo_and_tasks/zoo/index.csv").set_index("model_id")
    ranked = pd.DataFrame({"model_id": cfg["model_ids"], "score": scores}).sort_values("score", ascending=False)
    cols = [c for c in ("family", "source_task") if c in zoo.columns]
    ranked = ranked.join(zoo[cols], on="model_id").reset_index(drop=True)
    latency = f"latency_{P.hardware.latency_stat}_ms"  # the statistic budgets are held to (hardware.latency_stat)
    fits, nearest, profiled = _hardware(run, device, ranked, max_latency_ms, max_memory_mb, latency)
    fits = fits.reset_index(drop=True)
    fits.insert(0, "rank", np.arange(1, len(fits) + 1))
    if top:
        fits = fits.head(top)
    info = dict(run=str(run), images=str(images), classes=classes, n_images=int(len(labels)), n_tokens=int(len(tokens)),
                skipped_files=[list(s) for s in skipped], device=device, profiled=profiled,
                max_latency_ms=max_latency_ms, max_memory_mb=max_memory_mb, n_models=len(ranked),
                n_within_budget=int(len(fits)) if not top else None, seconds=times,
                seconds_total=sum(times.values()), ptmrec_format=FORMAT)
    return Recommendation(fits, nearest, info)


def format_table(rec: Recommendation) -> str:
    """The ranked table as text, with a line that says when nothing fits the budget."""
    out = [rec.table.to_string(index=False, float_format=lambda v: f"{v:.3f}")] if len(rec.table) else []
    if len(rec.nearest):
        out.append("No model fits the budget. Nearest models:")
        out.append(rec.nearest.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    s = rec.info["seconds"]
    out.append(f"{rec.info['n_images']} images, {len(rec.info['classes'])} classes; "
               f"tokens {s['dataset_tokens']:.2f} s, ranking {s['rank']:.3f} s (encoder load {s['load_encoder']:.2f} s)")
    if rec.info["skipped_files"]:
        out.append(f"skipped {len(rec.info['skipped_files'])} unreadable files, e.g. {rec.info['skipped_files'][0]}")
    return "\n".join(out)
