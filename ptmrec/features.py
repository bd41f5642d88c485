"""The feature store: one forward pass per model and image, read by everything that needs features.

For each model, the pooled features (and, where the model has one, its source head's logits) of
every image that any target task uses are computed once and saved as float16 in
``<store>/<model_id>.npz`` (atomic, one file per model, so a killed or sharded run resumes like
the ground truth's parts). The ground truth's linear probe and the estimators of stage 05 (whose
scores are the ranker's evidence) read this store instead of running the model again.

Images are grouped into *image sets*, one forward pass each:

* a task in the ``plain`` domain shows pool images as they are, so every plain task of a dataset
  shares one set, keyed by the dataset: the sorted union of their pool indices;
* a task in a synthetic domain (inverted, rotated, ...) shows its own pixels, so each of its
  splits is a set of its own, keyed ``<task_id>.<split>``.

The seconds of each set's forward pass are saved beside it; ``forward_seconds`` charges each
(model, task, split) its images' share, once, to every method that needs them.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .data import SPLITS, split_index, task_arrays
from .paths import resume, write_npz

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: larger features would be stored as inf
STORE = "features"  # the store's folder in stage 01's output (a resumable work folder, pipeline.work_dir)


def run_store(run: Path) -> Path:
    """The feature store of the run folder ``run`` (what stage 01 filled)."""
    return Path(run) / "01_groundtruth" / STORE


def set_key(task, split: str) -> str:
    """The image set that holds ``split`` of ``task``: its dataset when plain, else ``<task_id>.<split>``."""
    return task.dataset if task.domain == "plain" else f"{task.task_id}.{split}"


def image_sets(pools: dict, tasks: list) -> dict[str, tuple[np.ndarray, Callable[[], np.ndarray]]]:
    """key -> (pool indices int64 [n] (sorted for a dataset set), images() -> uint8 [n, S, S, 3])."""
    plain: dict[str, list[np.ndarray]] = {}
    sets: dict[str, tuple[np.ndarray, Callable[[], np.ndarray]]] = {}
    for t in tasks:
        for split in SPLITS:
            idx = split_index(t, split)
            if len(idx) == 0:
                continue
            if t.domain == "plain":
                plain.setdefault(t.dataset, []).append(idx)
            else:
                sets[set_key(t, split)] = (idx, lambda t=t, s=split: task_arrays(pools[t.dataset], t, s)[0])
    for name, parts in plain.items():
        idx = np.unique(np.concatenate(parts))
        sets[name] = (idx, lambda name=name, idx=idx: pools[name].images[idx])
    return dict(sorted(sets.items()))


def forward(model, image_size: int, images: np.ndarray, batch_size: int,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray | None, float]:
    """One forward pass of uint8 images [N, S, S, 3]: features float32 [N, D], source logits [N, C_s] (None without
    a head: the head applied to the pooled features, no second pass), seconds."""
    import torch

    from .zoo import embed_images

    t0 = time.perf_counter()
    feats = embed_images(model, images, image_size, batch_size, device)  # [N, D]
    head = getattr(model, "head", None)
    logits = None
    if isinstance(head, torch.nn.Module):
        with torch.inference_mode():  # the head on the pooled features = the model's own logits
            logits = head.to(device)(torch.from_numpy(feats).to(device)).float().cpu().numpy()  # [N, C_s]
    return feats, logits, time.perf_counter() - t0


def compute_store(model_ref: str | Path, sets: dict, batch_size: int, device: str = "cpu") -> dict[str, np.ndarray]:
    """One model's forward pass over every image set: the arrays of its store file.

    Keys: ``model_id``; per set ``<key>|idx`` int64 [n], ``<key>|features`` float16 [n, D],
    ``<key>|logits`` float16 [n, C_s] (only for a model with a source head), ``<key>|seconds`` float64 [].
    """
    from .zoo import load_model

    model, cfg = load_model(model_ref, device)
    out: dict[str, np.ndarray] = {"model_id": np.array(cfg["model_id"])}
    for key, (idx, images) in sets.items():
        # decoding and domain shift (images()) are not the model's cost: outside the timed pass
        f, logits, out[f"{key}|seconds"] = forward(model, cfg["image_size"], images(), batch_size, device)
        for name, a in (("features", f), ("logits", logits)):
            if a is None:
                continue
            if np.abs(a).max(initial=0.0) > FLOAT16_MAX:
                raise ValueError(f"model {cfg['model_id']}: {name} of image set {key} exceed float16's range "
                                 f"(max |x| = {np.abs(a).max():.3g}); the store cannot hold them")
            out[f"{key}|{name}"] = a.astype(np.float16)
        out[f"{key}|idx"] = np.asarray(idx, np.int64)
    return out


def _read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class Store:
    """One model's stored forward pass: features and logits of any task split, and what they cost."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.model_id = str(arrays["model_id"])

    def _rows(self, task, split: str) -> tuple[str, np.ndarray]:
        key, want = set_key(task, split), split_index(task, split)
        if len(want) == 0:  # an empty split (no fresh test images): no rows of any set
            return next(k[:-4] for k in self.arrays if k.endswith("|idx")), np.zeros(0, np.int64)
        if f"{key}|idx" not in self.arrays:
            raise KeyError(f"model {self.model_id}: the feature store has no image set {key} (task {task.task_id}); "
                           "it was computed for other tasks: rerun stage 01")
        have = self.arrays[f"{key}|idx"]
        if task.domain != "plain":
            return key, np.arange(len(want))
        rows = np.searchsorted(have, want)
        if len(want) and (rows.max() >= len(have) or not np.array_equal(have[rows], want)):
            raise KeyError(f"model {self.model_id}: image set {key} lacks images of task {task.task_id}: rerun stage 01")
        return key, rows

    def features(self, task, split: str) -> np.ndarray:
        """float32 [n, D]: the pooled features of ``split`` of ``task``, in the split's order."""
        key, rows = self._rows(task, split)
        return self.arrays[f"{key}|features"][rows].astype(np.float32)

    def logits(self, task, split: str) -> np.ndarray | None:
        """float32 [n, C_s]: the source head's logits, or None for a model without one."""
        key, rows = self._rows(task, split)
        z = self.arrays.get(f"{key}|logits")
        return None if z is None else z[rows].astype(np.float32)

    def seconds(self, task, split: str) -> float:
        """The forward seconds charged to ``split`` of ``task``: its images' share of its set's pass."""
        key, rows = self._rows(task, split)
        n = len(self.arrays[f"{key}|idx"])
        return float(self.arrays[f"{key}|seconds"]) * len(rows) / max(n, 1)


def store_path(folder: Path, model_id: str) -> Path:
    return Path(folder) / f"{model_id}.npz"


def model_store(folder: Path, model_id: str, model_ref: str | Path, pools: dict, tasks: list, batch_size: int,
                device: str = "cpu") -> Store:
    """The store of one model: read from ``folder``, else computed once and written there (atomically)."""
    compute = lambda: compute_store(model_ref, image_sets(pools, tasks), batch_size, device)  # noqa: E731
    return Store(resume(store_path(folder, model_id), compute, _read, lambda p, a: write_npz(p, **a)))


def load_store(folder: Path, model_id: str) -> Store:
    """A stored model; a missing file is an error that names it and the stage that writes it."""
    path = store_path(folder, model_id)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no stored features for model {model_id}; stage 01 (ground truth) writes them")
    return Store(_read(path))


def forward_seconds(folder: Path, model_ids: Iterable[str], tasks: list) -> pd.DataFrame:
    """One row per (model, task, split): images and forward seconds, as charged to every method."""
    rows = []
    for m in model_ids:
        s = load_store(folder, m)
        rows += [dict(model_id=m, task_id=t.task_id, split=sp, images=len(split_index(t, sp)), seconds=s.seconds(t, sp))
                 for t in tasks for sp in SPLITS if len(split_index(t, sp))]
    return pd.DataFrame(rows, columns=["model_id", "task_id", "split", "images", "seconds"])
