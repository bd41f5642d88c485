"""``ptmrec recommend``: rank a run's zoo for a folder of labelled images it has never seen.

    >>> rec = recommend("runs/default", "my_images/", top=5, max_latency_ms=20, device="cpu")
    >>> rec.table            # rank, model_id, score, latency/memory when profiled (the models within budget)
    >>> rec.ranked           # every model, best first, with ``within_budget``
    >>> rec                  # in JupyterLab: a formatted table (``_repr_html_``)
    >>> rec.save("out/", report=True)   # ranking.csv + ranking.json (+ ranking.html + ranking.png)

The images (one subfolder per class) are embedded by the run's own encoder (stage 04) into
dataset tokens, cut class-balanced to the ranker's ``max_dataset_tokens``; the run's ranker
(stage 06) scores every model of the zoo from its model token (stage 03), and, when the run
has a hardware profile of the device (stage 08), models outside the latency/memory budget are
set aside (the nearest ones are shown when none fits). By default no model of the zoo is run on
the images: that is what makes it fast. With ``probe=k`` (``--probe K``; ``--probe`` alone, or
``probe=None``, takes the run's inner-validated ``probe_k``) the k favourites of that
first ranking are run on the images, scored by the ranker's evidence estimators (LogME, NCE, ...), and
the ranker ranks again with that evidence; the table then says which models were probed and what each
cost (``probed``, ``probe_seconds``).

A fast cold start: stage 04 exports the encoder's image tower (``encoders.save_image_tower``: traced
for torch and as ONNX) and stage 06 the ranker with the zoo's model tokens folded in (``ranker.save_ranker``,
ONNX); a tokens-only recommendation on the CPU runs both with onnxruntime and never imports torch
(``ptmrec.serve``; torch's import alone took about 2 s of a 3.5 s cold call). Probing (``--probe``), another
device or a run without the exports (an older run) use torch: the traced tower, else the encoder built through
open_clip, with one line on stderr saying why. Nothing heavy is imported at module level: the input checks
run first.

The tables are designed to grow: a boolean ``probed`` column and ``probe_seconds`` (models run on
the images, ``--probe K``) are shown by ``to_html``/the report whenever a table holds them.
"""
from __future__ import annotations

import html
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the cold path imports these only where used
    import pandas as pd
    import torch

TOWER_DIR = "04_dataset_tokens/image_tower"  # where stage 04 saves the traced image tower
PROBE_COLUMNS = ("probed", "probe_seconds")  # optional columns of a recommendation that ran models on the images
IMAGES_HINT = "give --images a folder with one subfolder of images per class (<folder>/<class name>/<image files>)"


class RecommendError(RuntimeError):
    """The run folder or the images cannot give a recommendation; the message (one line) says what to do."""


# ----------------------------------------------------------------------------- the result


@dataclass
class Recommendation:
    table: pd.DataFrame  # the models within budget, best first (``rank`` 1..n); ``--top`` keeps the first
    nearest: pd.DataFrame  # when nothing fits: the models closest to the budget
    info: dict[str, Any] = field(default_factory=dict)  # inputs, budget, seconds per step, skipped files
    ranked: pd.DataFrame | None = None  # every model, best first: rank, ..., within_budget (bool)

    def all_models(self) -> pd.DataFrame:
        """Every model best first with ``within_budget`` (``ranked``, or ``table`` for one built without it)."""
        return self.ranked if self.ranked is not None else self.table.assign(within_budget=True)

    def save(self, out_dir: str | Path, report: bool = False) -> list[Path]:
        """ranking.csv (+ nearest.csv when nothing fits) and ranking.json, written atomically;
        with ``report`` also ranking.html and ranking.png (``write_report``)."""
        from .paths import write_csv, write_json

        out = Path(out_dir)
        write_csv(out / "ranking.csv", self.table)
        files = [out / "ranking.csv", out / "ranking.json"]
        if len(self.nearest):
            write_csv(out / "nearest.csv", self.nearest)
            files.append(out / "nearest.csv")
        write_json(out / "ranking.json", {**self.info, "ranking": self.table.to_dict(orient="records"),
                                          "nearest": self.nearest.to_dict(orient="records"),
                                          "all_models": self.all_models().to_dict(orient="records")})
        if report:
            files += write_report(self, out)
        return files

    def to_html(self) -> str:
        """The ranked models as an HTML table, models over budget greyed, with the budget line above it."""
        return f"<p>{html.escape(budget_line(self))}</p>\n{html_table(self.all_models(), self.info)}"

    def _repr_html_(self) -> str:  # JupyterLab shows a Recommendation as this table
        return self.to_html()


# ----------------------------------------------------------------------------- checks (no heavy imports)


NEEDS = {  # file -> the stage that writes it
    "00_zoo_and_tasks/zoo/index.csv": "00_zoo_and_tasks",
    "04_dataset_tokens/params.resolved.yaml": "04_dataset_tokens",
    "06_ranker/ranker/config.json": "06_ranker",
    "06_ranker/ranker/model.safetensors": "06_ranker",
}


def check_images(images: str | Path) -> Path:
    """``images`` after checking that it is a folder holding class subfolders (RecommendError otherwise)."""
    p = Path(images).expanduser()
    if not p.exists():
        raise RecommendError(f"{p}: no such folder; {IMAGES_HINT}")
    if not p.is_dir():
        raise RecommendError(f"{p}: a file, not a folder; {IMAGES_HINT}")
    entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    if not entries:
        raise RecommendError(f"{p}: the folder is empty; put the images in {p}/<class name>/<image files>, "
                             "one subfolder per class")
    if not any(e.is_dir() for e in entries):
        raise RecommendError(f"{p}: holds files but no class subfolders; move the images into {p}/<class name>/, "
                             "one subfolder per class")
    return p


def check_run(run: str | Path) -> dict[str, Any]:
    """The run's ranker config, after checking every file a recommendation reads is there."""
    from .paths import read_json
    from .serve import RANKER_FORMAT as FORMAT

    run = Path(run)
    if run.is_file():
        raise RecommendError(f"{run}: a file, not a run folder; give --run the folder runs/<set>/ of a finished "
                             "./run_all.sh")
    if not run.is_dir():
        raise RecommendError(f"{run}: no such run folder; give --run the folder runs/<set>/ of a finished ./run_all.sh")
    for rel, stage in NEEDS.items():
        if not (run / rel).is_file():
            raise RecommendError(f"{run / rel}: missing; stage {stage} has not run in this run folder "
                                 f"(./run_all.sh params/<set>.yaml --from {stage})")
    try:
        cfg = read_json(run / "06_ranker/ranker/config.json")
    except ValueError as e:
        raise RecommendError(f"{run / '06_ranker/ranker/config.json'}: unreadable ({e}); re-run stage 06_ranker "
                             "(./run_all.sh params/<set>.yaml --from 06_ranker)") from None
    if cfg.get("format") != FORMAT:
        raise RecommendError(f"{run / '06_ranker/ranker/config.json'}: written by another version of ptmrec "
                             f"(format {cfg.get('format')}, this version reads {FORMAT}); re-run stage 06_ranker "
                             "with this version (./run_all.sh params/<set>.yaml --from 06_ranker)")
    return cfg


def _run_params(run: Path):
    """The run's resolved parameters (stage 04's copy); RecommendError when this version cannot read them."""
    import yaml

    from . import params as params_mod

    path = Path(run) / "04_dataset_tokens" / "params.resolved.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
        return params_mod.from_dict({k: v for k, v in raw.items() if k not in ("source",)}, origin=str(path))
    except (params_mod.ParamsError, yaml.YAMLError, AttributeError) as e:
        why = " ".join(str(e).split())
        raise RecommendError(f"{path}: written by another version of ptmrec ({why}); re-run the run with this "
                             "version (./run_all.sh params/<set>.yaml)") from None


# ----------------------------------------------------------------------------- the steps


def run_encoder(run: Path, P: Any, device: str = "cpu") -> Any:
    """The run's stage-04 encoder, from the cache of the runs folder the run lies in (or data.cache_dir)."""
    from . import encoders
    from .pools import cache_folder

    return encoders.build_encoder(P.encoder, device, cache_folder(P.data, Path(run).resolve().parent))


def image_encoder(run: Path, P: Any, device: str = "cpu", traced: bool = True,
                  notes: list[str] | None = None) -> tuple[Any, str]:
    """(encoder, how): the traced tower stage 04 saved in the run (``how`` "traced"), else the full encoder
    built through open_clip (``how`` "open_clip"), with why appended to ``notes`` (else printed on stderr)."""
    from . import encoders

    if traced:
        try:
            return encoders.load_image_tower(Path(run) / TOWER_DIR, device, P.encoder.batch_size), "traced"
        except (FileNotFoundError, ValueError) as e:
            why = f"no usable traced image tower ({' '.join(str(e).split())})"
            if notes is None:
                print(f"ptmrec recommend: {why}; building the encoder through open_clip instead", file=sys.stderr)
            else:
                notes.append(why)
    return run_encoder(run, P, device), "open_clip"


def onnx_pair(run: Path, P: Any, notes: list[str]) -> tuple[Any, Any] | None:
    """(``serve.OnnxTower``, ``serve.OnnxRanker``) of the run, to embed and rank without torch; None, with why
    appended to ``notes``, when the run has no usable export (an older run) or onnxruntime is missing."""
    from . import serve

    try:
        return (serve.OnnxTower(Path(run) / TOWER_DIR, batch_size=P.encoder.batch_size),
                serve.OnnxRanker(Path(run) / "06_ranker" / "ranker"))
    except (FileNotFoundError, ValueError, ImportError) as e:
        notes.append(f"no ONNX export to run ({' '.join(str(e).split())})")
        return None


def ranker_inputs(run: Path, cfg: dict[str, Any], tokens: np.ndarray,
                  labels: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(model tokens [1, N, D_m] in the ranker's model order, dataset tokens [1, M, D_d]).

    tokens [M0, D_d] with their classes ``labels`` [M0] are cut to the ranker's ``max_dataset_tokens``
    class-balanced (``tokens.subsample_tokens``, the rule training used); without labels, evenly spaced.
    """
    import torch

    from .ranker import model_token_table
    from .tokens import subsample_tokens

    ids, table = model_token_table(run, cfg["model_tokens"])
    order = [ids.index(m) for m in cfg["model_ids"]]
    mt = torch.from_numpy(table[order])[None]
    labels = np.zeros(len(tokens), np.int64) if labels is None else np.asarray(labels)
    keep = subsample_tokens(labels, int(cfg["max_dataset_tokens"]))  # [M]
    dt = torch.from_numpy(np.asarray(tokens, np.float32)[keep])[None]
    return mt, dt


def _scores(model: torch.nn.Module, mt: torch.Tensor, dt: torch.Tensor, evidence: np.ndarray | None = None,
            probed: np.ndarray | None = None) -> np.ndarray:
    """The ranker's score per model of ``mt`` [1, N, D_m] for dataset tokens ``dt`` [1, M, D_d]: float32 [N];
    with the raw estimator scores ``evidence`` [N, F] of the ``probed`` [N] models (standardised within this
    target, as in training)."""
    import torch

    from .ranker import standardize_evidence

    ev = pr = None
    if probed is not None and probed.any():
        ev = torch.from_numpy(standardize_evidence(evidence, probed))[None]  # [1, N, F]
        pr = torch.from_numpy(probed)[None]  # [1, N]
    with torch.no_grad():
        return model(mt, dt, None, torch.arange(mt.shape[1])[None], ev, pr)[0].numpy()


def probe_models(run: Path, P: Any, cfg: dict[str, Any], zoo: pd.DataFrame, images: Path, models: list[str],
                 device: str = "cpu", seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Run ``models`` of the ``zoo`` (index.csv by model_id) on the folder's images and score them with the
    ranker's evidence estimators:
    (raw scores [k, F] in ``cfg['evidence']`` order, NaN where an estimator fails; seconds per model [k]:
    load, forward pass and estimators; {model: why} for models that failed, whose rows stay NaN). The images
    are ``tasks.train_per_class`` per class at ``tasks.image_size``, as stage 05 scores a task's training
    split; a class with fewer than two images is a RecommendError naming it."""
    from .baselines import score_pair
    from .features import forward
    from .pools import load_image_folder
    from .zoo import load_model

    names = list(cfg.get("evidence") or [])
    pool = load_image_folder(images, P.tasks.image_size, role=None, per_class=P.tasks.train_per_class, seed=seed)
    few = {c: n for c, n in pool.class_counts().items() if n < 2}
    if few:
        raise RecommendError(f"{images}: --probe needs at least 2 readable images per class; "
                             + ", ".join(f"class {c} has {n}" for c, n in few.items()) + " (or use --probe 0)")
    raw, seconds, failed = np.full((len(models), len(names)), np.nan, np.float32), np.zeros(len(models)), {}
    for i, m in enumerate(models):
        t0 = time.perf_counter()
        try:
            model, mcfg = load_model(run / "00_zoo_and_tasks/zoo" / str(zoo.loc[m, "path"]), device)
            feats, logits, _ = forward(model, mcfg["image_size"], pool.images, P.baselines.batch_size, device)
        except Exception as e:  # noqa: BLE001 -- one broken model must not stop the recommendation
            failed[m] = " ".join(f"{type(e).__name__}: {e}".split())
            continue
        for r in score_pair(feats, pool.labels, logits, names):
            raw[i, names.index(r["scorer"])] = r["score"]
        seconds[i] = time.perf_counter() - t0
    return raw, seconds, failed


def _hardware(run: Path, device: str, ranked: pd.DataFrame, max_latency_ms: float | None,
              max_memory_mb: float | None, latency: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, bool]:
    """(fits, nearest, every model with its profile and ``within_budget``, profiled) for ``device``'s budget."""
    from . import budgets, hardware

    budget = max_latency_ms is not None or max_memory_mb is not None
    try:
        profile = hardware.load_profile(run, device)
    except (FileNotFoundError, ValueError, KeyError) as e:
        if budget:
            raise RecommendError(f"a latency/memory budget needs measured profiles: {' '.join(str(e).split())}") from None
        return ranked, ranked.iloc[:0], ranked.assign(within_budget=True), False
    fits, nearest = budgets.apply_budget(ranked, profile, max_latency_ms, max_memory_mb, latency=latency)
    prof = profile.set_axis(profile.index.astype(str))
    cols = [c for c in fits.columns if c in prof.columns and c not in ranked.columns]
    every = ranked.join(prof[cols], on="model_id")
    every["within_budget"] = every.model_id.isin(fits.model_id)
    return fits, nearest, every, True


def recommend(run: str | Path, images: str | Path, top: int | None = None, max_latency_ms: float | None = None,
              max_memory_mb: float | None = None, device: str = "cpu", seed: int = 0,
              traced: bool = True, probe: int | None = 0) -> Recommendation:
    """Rank the zoo of ``run`` for the labelled image folder ``images`` (see the module docstring).

    ``traced=False`` skips the run's exports (ONNX and traced) and builds the encoder through open_clip.
    ``probe``: run the top ``probe`` models of the first ranking on the images and rank again with their
    estimator scores as evidence (0, the default: tokens only; None: the run's inner-validated ``probe_k``).
    """
    run, images = Path(run), check_images(images)
    cfg = check_run(run)
    k = check_probe(cfg, probe)  # before any work: a bad --probe costs nothing
    P = _run_params(run)
    import pandas as pd

    from .tokens import folder_tokens

    if device != "cpu":
        from .hardware import check_device

        check_device(device)
    times = {}
    t0 = time.perf_counter()
    notes: list[str] = []  # why a faster path was not taken: one line on stderr
    served = onnx_pair(run, P, notes) if traced and not k and device == "cpu" else None  # torch-free when it can be
    encoder, how = (served[0], "onnx") if served else image_encoder(run, P, device, traced, notes)
    if notes:
        print(f"ptmrec recommend: {'; '.join(notes)}; embedding with {how} instead (a slower start; re-run stages "
              "04_dataset_tokens and 06_ranker with this version to export them)", file=sys.stderr)
    times["load_encoder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens, labels, classes, skipped = folder_tokens(images, encoder, P.tokens.per_class, P.tokens.kind, seed)
    times["dataset_tokens"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    keep = _kept(labels, cfg)  # class-balanced cut to max_dataset_tokens: every class keeps its share
    if served:
        scores = served[1].scores(tokens[keep])  # [N]
    else:
        from .ranker import load_ranker

        model, _ = load_ranker(run / "06_ranker" / "ranker")
        mt, dt = ranker_inputs(run, cfg, tokens[keep], labels[keep])  # [1, N, D_m], [1, M, D_d]
        scores = _scores(model, mt, dt)  # [N]
    times["rank"] = time.perf_counter() - t0
    zoo = pd.read_csv(run / "00_zoo_and_tasks/zoo/index.csv").set_index("model_id")
    probed, probe_secs, failed = np.zeros(len(scores), bool), np.zeros(len(scores)), {}
    if k:
        from .probing import choose_probes

        t0 = time.perf_counter()
        probed = choose_probes("top", k, scores)  # the prior's favourites
        chosen = [cfg["model_ids"][j] for j in np.flatnonzero(probed)]
        raw = np.full((len(scores), int(cfg["evidence_dim"])), np.nan, np.float32)
        raw[probed], probe_secs[probed], failed = probe_models(run, P, cfg, zoo, images, chosen, device, seed)
        probed &= ~np.isin(cfg["model_ids"], list(failed))  # a model that failed gives no evidence
        for m, why in failed.items():
            print(f"ptmrec recommend: probing {m} failed, ranked without its evidence: {why}", file=sys.stderr)
        scores = _scores(model, mt, dt, raw, probed)
        times["probe"] = time.perf_counter() - t0
    ranked = pd.DataFrame({"model_id": cfg["model_ids"], "score": scores})
    if k:
        ranked = ranked.assign(probed=probed, probe_seconds=probe_secs)
    ranked = ranked.sort_values("score", ascending=False, kind="stable")
    cols = [c for c in ("family", "source_task") if c in zoo.columns]
    ranked = ranked.join(zoo[cols], on="model_id").reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    latency = f"latency_{P.hardware.latency_stat}_ms"  # the statistic budgets are held to (hardware.latency_stat)
    fits, nearest, every, profiled = _hardware(run, device, ranked.drop(columns="rank"), max_latency_ms, max_memory_mb,
                                               latency)
    every.insert(0, "rank", ranked["rank"].values)
    fits = fits.reset_index(drop=True)
    fits.insert(0, "rank", np.arange(1, len(fits) + 1))
    if top:
        fits = fits.head(top)
    kept = np.bincount(labels[keep], minlength=len(classes))
    info = dict(run=str(run), images=str(images), classes=classes, n_images=len(labels),
                n_tokens=len(keep), n_tokens_embedded=len(tokens),
                tokens_per_class=dict(zip(classes, kept.tolist())), encoder=how,
                skipped_files=[list(s) for s in skipped], device=device, profiled=profiled, latency_column=latency,
                max_latency_ms=max_latency_ms, max_memory_mb=max_memory_mb, n_models=len(ranked),
                n_within_budget=int(every.within_budget.sum()), top=top, seconds=times,
                seconds_total=sum(times.values()), ranker_format=cfg.get("format"),
                probe_k=k, probe_requested=probe, probe_failures=failed,
                probed_models=[m for m, p in zip(cfg["model_ids"], probed) if p],
                probe_estimators=list(cfg.get("evidence") or []) if k else [],
                token_weight=_token_weight(model, probed) if k else None,
                neighbours=list(cfg.get("neighbours") or [0.0, 1.0]))
    return Recommendation(fits, nearest, info, every.reset_index(drop=True))


def _token_weight(model: torch.nn.Module, probed: np.ndarray) -> float:
    """How much the ranker's token head counted beside the evidence of the ``probed`` [N] models (its
    inner-validated trust at their share of the zoo; 1 = as trained, 0 = the evidence alone)."""
    import torch

    return float(model.inputs.head_weight(torch.from_numpy(probed)[None]))


def check_probe(cfg: dict[str, Any], probe: int | None) -> int:
    """The number of models to probe: ``probe``, or the run's inner-validated ``probe_k`` when None; capped
    at the zoo. A negative count, or probing with a ranker trained without evidence, is a RecommendError."""
    k = int(cfg.get("probe_k", 0)) if probe is None else probe
    if k < 0:
        raise RecommendError(f"--probe {k}: give the number of models to run on the images (0 or more)")
    if k and not int(cfg.get("evidence_dim", 0)):
        raise RecommendError("--probe needs a ranker trained with evidence (ranker.evidence in the parameter set); "
                             "this run's ranker has none: use --probe 0")
    return min(k, len(cfg["model_ids"]))


def _kept(labels: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """Indices of the tokens the ranker sees (the class-balanced cut of ``ranker_inputs``)."""
    from .tokens import subsample_tokens

    return subsample_tokens(np.asarray(labels), int(cfg["max_dataset_tokens"]))


# ----------------------------------------------------------------------------- text, HTML, PNG


def format_table(rec: Recommendation) -> str:
    """The ranked table as text, with a line that says when nothing fits the budget."""
    out = [rec.table.to_string(index=False, float_format=lambda v: f"{v:.3f}")] if len(rec.table) else []
    if len(rec.nearest):
        out.append("No model fits the budget. Nearest models:")
        out.append(rec.nearest.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    s = rec.info["seconds"]
    out.append(f"{rec.info['n_images']} images, {len(rec.info['classes'])} classes; "
               f"tokens {s['dataset_tokens']:.2f} s, ranking {s['rank']:.3f} s "
               f"(encoder load {s['load_encoder']:.2f} s, {rec.info.get('encoder', 'open_clip')})")
    weight, temperature = rec.info.get("neighbours") or (0.0, 1.0)
    if weight:
        out.append(f"the token head moved {weight:.3g} of the way to the dataset-neighbour prior (the training tasks "
                   f"whose images look like these, softmax temperature {temperature:.3g})")
    if rec.info.get("probe_k"):
        asked = rec.info.get("probe_requested")
        note = (f" (--probe {asked} is more than the zoo's {rec.info['n_models']} models: all were probed)"
                if asked is not None and asked > rec.info["n_models"] else "")
        out.append(f"probed {len(rec.info['probed_models'])} models on the images in {s['probe']:.2f} s{note} "
                   f"({', '.join(rec.info['probed_models'])}; estimators {', '.join(rec.info['probe_estimators'])}; "
                   f"token head weight {rec.info['token_weight']:.3g} beside their evidence)")
        if rec.info.get("probe_failures"):
            out.append(f"probing failed for {', '.join(rec.info['probe_failures'])} (see stderr); ranked without them")
    if rec.info["skipped_files"]:
        out.append(f"skipped {len(rec.info['skipped_files'])} unreadable files, e.g. {rec.info['skipped_files'][0]}")
    return "\n".join(out)


def budget_line(rec: Recommendation) -> str:
    """One sentence: the budget and how many models fit it (or why there is none)."""
    info = rec.info
    parts = []
    if info.get("max_latency_ms") is not None:
        parts.append(f"{info.get('latency_column', 'latency_p50_ms').removesuffix('_ms').replace('_', ' ')} "
                     f"<= {info['max_latency_ms']:g} ms")
    if info.get("max_memory_mb") is not None:
        parts.append(f"peak memory <= {info['max_memory_mb']:g} MB")
    n, total = info.get("n_within_budget", len(rec.table)), info.get("n_models", len(rec.table))
    if not info.get("profiled", False):
        return f"No hardware profile of {info.get('device', 'cpu')} in this run (stage 08): no budget applied, {total} models."
    if not parts:
        return f"No budget given; latency and memory measured on {info.get('device', 'cpu')} (stage 08); {total} models."
    return f"Budget on {info.get('device', 'cpu')}: {' and '.join(parts)}; {n} of {total} models fit."


LABELS = {"rank": "rank", "model_id": "model", "family": "family", "source_task": "source task", "score": "score",
          "latency_p50_ms": "latency p50 (ms)", "latency_p95_ms": "latency p95 (ms)",
          "latency_cpu_p50_ms": "CPU latency p50 (ms)", "peak_memory_mb": "peak memory (MB)",
          "within_budget": "fits budget", "probed": "probed", "probe_seconds": "probe (s)"}


def _cell(col: str, v: Any) -> str:
    if col in ("within_budget", "probed"):
        return "&#10003;" if bool(v) else "&ndash;"
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3f}" if col == "score" else f"{v:.2f}" if col == "probe_seconds" else f"{v:.3g}"
    return html.escape(str(v))


def html_table(df: pd.DataFrame, info: dict[str, Any] | None = None) -> str:
    """Every model as a table row: rank, model, family, source task, score, measured latency/memory, whether it
    fits the budget, and ``probed``/``probe_seconds`` when the table holds them; rows over budget greyed."""
    info = info or {}
    cols = [c for c in ("rank", "model_id", "family", "source_task", "score", info.get("latency_column", "latency_p50_ms"),
                        "peak_memory_mb", "within_budget", *PROBE_COLUMNS) if c in df.columns]
    head = "".join(f"<th>{LABELS.get(c, html.escape(c))}</th>" for c in cols)
    rows = []
    for r in df.to_dict(orient="records"):
        style = "" if r.get("within_budget", True) else ' style="color:#999"'
        rows.append(f"<tr{style}>" + "".join(f"<td>{_cell(c, r[c])}</td>" for c in cols) + "</tr>")
    return (f'<table class="ptmrec-ranking"><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody></table>")


def write_png(rec: Recommendation, path: Path) -> Path:
    """The ranking as a figure: predicted score per model (bars, grey when over budget, "P" when probed) and,
    when stage 08 profiled the device, score against measured latency and memory with the budget lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leaves a notebook's backend alone
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    df = rec.all_models().head(40)  # a readable bar chart; the table holds them all
    lat = rec.info.get("latency_column", "latency_p50_ms")
    panels = [c for c in (lat, "peak_memory_mb") if rec.info.get("profiled") and c in df.columns]
    fig = Figure(figsize=(4.5 + 3.6 * len(panels), max(2.5, 0.22 * len(df) + 1)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(panels), squeeze=False)[0]
    ok = df.within_budget.to_numpy(bool)
    y = np.arange(len(df))[::-1]
    ax = axes[0]
    ax.barh(y, df.score, color=np.where(ok, "#1f77b4", "#bbbbbb"))
    ax.set_yticks(y, [f"{r}. {m}" for r, m in zip(df["rank"], df.model_id)], fontsize=7)
    ax.set_xlabel("predicted score (higher: better transfer)")
    probed = "probed" in df.columns
    ax.set_title(f"ranking (grey: over budget{', P: probed' if probed else ''})", fontsize=9)
    if probed:
        for yy, s, p in zip(y, df.score, df.probed.fillna(False).astype(bool)):
            if p:
                ax.annotate("P", (s, yy), fontsize=7, fontweight="bold", va="center")
    limits = {lat: rec.info.get("max_latency_ms"), "peak_memory_mb": rec.info.get("max_memory_mb")}
    for ax, col in zip(axes[1:], panels):
        ax.scatter(df[col], df.score, c=np.where(ok, "#1f77b4", "#bbbbbb"), s=18)
        ax.set_xscale("log")  # latencies and memory span orders of magnitude across a zoo
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(LABELS.get(col, col))
        ax.set_ylabel("predicted score")
        if limits[col] is not None:
            ax.axvline(limits[col], color="#d62728", ls="--", lw=1, label=f"budget {limits[col]:g}")
            ax.legend(fontsize=7)
    fig.suptitle(budget_line(rec), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    return path


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ptmrec recommendation: {title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse;font-size:0.9em}}
td,th{{padding:0.2em 0.7em;border-bottom:1px solid #ddd;text-align:right}} td:nth-child(2),th:nth-child(2){{text-align:left}}
img{{max-width:100%}} .meta{{color:#555;font-size:0.9em}}</style></head>
<body><h1>Models for {title}</h1>
<p class="meta">{meta}</p>
<p><b>{budget}</b></p>
<img src="{png}" alt="ranking figure">
{table}
<p class="meta">Scores come from the run's ranker (stage 06) on dataset tokens of the images; latency and memory were
measured in stage 08; no model of the zoo ran on the images{probe}.</p>
</body></html>
"""


def write_report(rec: Recommendation, out_dir: str | Path) -> list[Path]:
    """ranking.html (the ranked models, the budget and which models fit, the figure) and ranking.png in ``out_dir``."""
    from .paths import atomic_path, write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "ranking.png") as tmp:
        write_png(rec, tmp)
    info = rec.info
    images = (f"images {info.get('images')} ({info.get('n_images')} images, {len(info.get('classes', []))} classes, "
              f"{info.get('n_tokens')} dataset tokens)")
    meta = [f"run {info.get('run')}", images, f"device {info.get('device')}", f"{info.get('seconds_total', 0):.2f} s"]
    probed = "probed" in rec.all_models().columns
    page = PAGE.format(title=html.escape(Path(str(info.get("images", "images"))).name),
                       meta=" &middot; ".join(html.escape(m) for m in meta), budget=html.escape(budget_line(rec)),
                       png="ranking.png", table=html_table(rec.all_models(), info),
                       probe=" except those marked probed" if probed else "")
    write_text(out / "ranking.html", page)
    return [out / "ranking.html", out / "ranking.png"]
