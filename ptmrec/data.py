"""Datasets, target tasks and class-balanced sampling.

Every dataset is split deterministically into two roles with disjoint images:

- ``"source"``: images the zoo models are pretrained on;
- ``"target"``: images target tasks are drawn from.

``load_pool(name, role, size)`` returns the labelled images of one dataset in one role as a
``Pool`` (RGB uint8 ``[N, S, S, 3]``). Offline datasets are registered in ``DATASETS``
(``list_datasets()``); ``DataParams.image_folders`` and ``DataParams.hf_datasets`` add more
by name; ``ptmrec.offline`` holds the offline loaders. ``sample_tasks`` draws target tasks (class subsets x domains) from target pools,
``save_tasks`` / ``load_tasks`` store them for later stages.

    >>> pool = load_pool("fmnist", "target", size=64, per_class=100)
    >>> tasks = sample_tasks({"fmnist": pool}, {"fmnist": 3}, TasksParams(), seed=0)
    >>> x, y = task_arrays(pool, tasks[0], "train")
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from torch.utils.data import Sampler

from .params import DataParams, TasksParams
from .paths import write_npz, write_text
from .pools import (DATASETS, INFO_KEYS, ROLES, DataMissingError, Pool, cache_folder, cap_per_class,  # noqa: F401
                    class_balanced_sample, is_source, load_image_folder, seeded_rng, stable_int, to_rgb)

log = logging.getLogger(__name__)



def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered offline datasets (fnmatch ``pattern``), sorted."""
    from . import icons, offline, photos  # noqa: F401  (importing the loader modules registers their datasets)

    return DATASETS.list(pattern)


def dataset_info(name: str) -> dict[str, object]:
    """Where a registered dataset comes from: package, licence, domain, styles, commercial."""
    list_datasets()
    info = DATASETS.info.get(name, {})  # a folder or hub dataset of the parameter set has none
    return {k: info.get(k) for k in INFO_KEYS}


def dataset_table(pools: dict[str, Pool]) -> Any:
    """One row per pool: dataset, role-independent info (package, licence, domain, styles) and its counts."""
    import pandas as pd

    rows = []
    for name, pool in pools.items():
        counts = np.bincount(pool.labels, minlength=len(pool.classes))
        rows.append(dict(dataset=name, **dataset_info(name), n_classes=len(pool.classes), n_images=len(pool.labels),
                         min_per_class=int(counts.min()) if len(counts) else 0,
                         style_names="|".join(pool.style_names()), skipped_files=len(pool.skipped)))
    return pd.DataFrame(rows)


def load_pool(
    name: str, role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Images of dataset ``name`` in ``role`` at ``size`` px, at most ``per_class`` per class (seeded).

    ``name`` is a key of ``data.image_folders``, of ``data.hf_datasets`` or a registered dataset,
    looked up in that order (the parameter set wins over the built-in names).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    data = data or DataParams()
    if name in data.image_folders:
        return load_image_folder(data.image_folders[name], size, role=role, per_class=per_class, seed=seed,
                                 cache_dir=cache_folder(data), name=name)
    if name in data.hf_datasets:
        return _load_hf(name, data.hf_datasets[name], role, size, per_class, seed, data)
    if name not in list_datasets():
        raise KeyError(f"unknown dataset {name!r}; registered: {', '.join(list_datasets())} "
                       "(add others under data.image_folders or data.hf_datasets)")
    return DATASETS[name](role=role, size=size, per_class=per_class, seed=seed, data=data)


# ----------------------------------------------------------------------------- Hugging Face datasets

def _load_hf(name: str, hf_id: str, role: str, size: int, per_class: int | None, seed: int, data: DataParams) -> Pool:
    """A Hugging Face image-classification dataset; roles by a hash of the item index."""
    try:
        import datasets
    except ImportError:
        raise DataMissingError(f"dataset {name!r} ({hf_id}) needs the PyPI package datasets: "
                               "pip install 'ptmrec[cluster]' (or pip install datasets)") from None
    ds = datasets.load_dataset(hf_id, split=data.hf_split)
    for key in (data.hf_image_key, data.hf_label_key):
        if key not in ds.features:
            raise KeyError(f"{hf_id}: no column {key!r} (columns: {', '.join(ds.features)}); "
                           "set data.hf_image_key / data.hf_label_key")
    raw = list(ds[data.hf_label_key])  # labels only: images are decoded for the kept items alone
    names = getattr(ds.features[data.hf_label_key], "names", None)  # a ClassLabel column: ints with names
    if names:
        labels = np.array(raw, np.int64)
    else:  # plain values (strings or ints): classes are the sorted distinct values
        values = sorted(set(raw))
        names, lookup = [str(v) for v in values], {v: i for i, v in enumerate(values)}
        labels = np.array([lookup[v] for v in raw], np.int64)
    idx = np.flatnonzero([is_source(f"{hf_id}/{i}") == (role == "source") for i in range(len(labels))])
    idx = idx[cap_per_class(labels[idx], per_class, seed)]
    images = [to_rgb(im, size) for im in ds.select(idx.tolist())[data.hf_image_key]]
    return Pool(name, np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8), labels[idx], list(names))


# ----------------------------------------------------------------------------- domains

DOMAINS: tuple[str, ...] = ("plain", "inverted", "rotated", "blurred", "tinted", "lowcontrast", "noisy", "pixelated")


def apply_domain(images: np.ndarray, domain: str, seed: int = 0) -> np.ndarray:
    """uint8 [N, S, S, 3] -> the same shape and dtype in ``domain`` (deterministic in ``seed``).

    The domain's parameters (angle, tint, ...) are drawn once per call, so all images of a task
    share them: a domain is one consistent shift, not per-image augmentation.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid: {', '.join(DOMAINS)}")
    if domain == "plain" or len(images) == 0:
        return images
    rng = np.random.default_rng(seed)
    size = images.shape[1]
    if domain == "inverted":
        return 255 - images
    if domain == "rotated":
        return _rotate(images, rng.choice([-1, 1]) * rng.uniform(30, 150))
    if domain == "pixelated":
        return _pixelate(images, max(4, size // 6))
    x = images.astype(np.float32)  # [N, S, S, 3]
    if domain == "blurred":
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(x, sigma=(0, size / 32, size / 32, 0))  # ~2 px at 64 px
    elif domain == "tinted":
        tint = rng.uniform(0.2, 1.0, 3)
        x = x * (tint / tint.max())  # [3]: one colour cast for the whole task
    elif domain == "lowcontrast":
        mean = x.mean(axis=(1, 2, 3), keepdims=True)  # [N, 1, 1, 1]
        x = mean + 0.3 * (x - mean)
    elif domain == "noisy":
        x = x + rng.normal(0, 25, x.shape)
    return x.round().clip(0, 255).astype(np.uint8)


def _rotate(images: np.ndarray, angle: float) -> np.ndarray:
    """Rotate every image by ``angle`` degrees, filling corners with the image's median border colour."""
    from PIL import Image

    out = np.empty_like(images)
    for i, img in enumerate(images):
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])  # [4S, 3]
        fill = tuple(int(v) for v in np.median(border, axis=0))
        out[i] = np.asarray(Image.fromarray(img).rotate(angle, Image.Resampling.BILINEAR, fillcolor=fill))
    return out


def _pixelate(images: np.ndarray, small: int) -> np.ndarray:
    """Box-downsample to ``small`` px, then nearest-upsample back."""
    from PIL import Image

    size = images.shape[1]
    out = np.empty_like(images)
    for i, img in enumerate(images):
        low = Image.fromarray(img).resize((small, small), Image.Resampling.BOX)
        out[i] = np.asarray(low.resize((size, size), Image.Resampling.NEAREST))
    return out


# ----------------------------------------------------------------------------- target tasks

@dataclass
class Task:
    """A target task: some classes of one pool, in one domain and style, with disjoint class-balanced splits."""

    task_id: str  # unique and readable, e.g. "fmnist-inverted-3c-a1b2c3", "emoji-twemoji-4c-0f1e2d"
    dataset: str  # pool name (for leave-datasets-out folds)
    domain: str  # a synthetic shift of DOMAINS ("plain" = none)
    classes: list[str]  # class names, in label order 0..k-1
    pool_classes: list[int]  # indices into the pool's classes, in label order
    train_idx: np.ndarray  # int64 [k * train_per_class], indices into the pool images
    test_idx: np.ndarray  # int64 [k * test_per_class]
    style: str = ""  # the pool style every image is drawn from ("" = all styles mixed)
    fresh_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # a second test split (noise ceiling)


SPLITS = ("train", "test", "fresh")


def split_sizes(tasks: TasksParams, dataset: str) -> tuple[int, int]:
    """(train, test) images per class of ``dataset``'s tasks: ``tasks.sizes[dataset]`` or the defaults."""
    return tuple(tasks.sizes.get(dataset, [tasks.train_per_class, tasks.test_per_class]))  # type: ignore[return-value]


def sample_tasks(pools: dict[str, Pool], counts: dict[str, int], tasks: TasksParams, seed: int) -> list[Task]:
    """``counts[d]`` tasks from each pool ``d``: distinct (classes, style, domain), deterministic in ``seed``.

    A pool without styles: even-numbered tasks are plain, odd ones take a random synthetic domain. A
    pool with styles (vendors, themes, decks): even-numbered tasks draw every image from one random
    style, odd ones mix all styles (every other one also in a synthetic domain).
    """
    out = []
    for dataset, n in counts.items():
        if dataset not in pools:
            raise KeyError(f"no pool for dataset {dataset!r} (pools: {', '.join(pools)})")
        out += _sample_from_pool(pools[dataset], dataset, n, tasks, seeded_rng(seed, "tasks", dataset))
    return out


def _eligible(pool: Pool, members: np.ndarray, need: int) -> np.ndarray:
    """Pool classes with at least ``need`` images among ``members`` (indices into the pool)."""
    return np.flatnonzero(np.bincount(pool.labels[members], minlength=len(pool.classes)) >= need)


def _sample_from_pool(pool: Pool, dataset: str, n: int, tasks: TasksParams, rng: np.random.Generator) -> list[Task]:
    n_train, n_test = split_sizes(tasks, dataset)
    need = n_train + n_test
    everything = np.arange(len(pool.labels))
    eligible = _eligible(pool, everything, need)
    if len(eligible) < tasks.min_classes:
        counts = np.bincount(pool.labels, minlength=len(pool.classes))
        smallest = ", ".join(f"{pool.classes[c]}: {counts[c]}" for c in np.argsort(counts)[: tasks.min_classes + 2])
        raise ValueError(
            f"dataset {dataset}: a task needs {tasks.min_classes} classes with {need} images each "
            f"(train {n_train} + test {n_test} per class), but only {len(eligible)} of {len(pool.classes)} "
            f"classes have that many (images per class: {smallest}, ...)")
    styles = {s: np.flatnonzero(pool.styles == s) for s in pool.style_names()}
    styles = {s: m for s, m in styles.items() if len(_eligible(pool, m, need)) >= tasks.min_classes}
    seen: set[tuple] = set()
    out = []
    for j in range(n):
        for _ in range(1000):
            style = str(rng.choice(sorted(styles))) if styles and j % 2 == 0 else ""
            members = styles[style] if style else everything
            usable = _eligible(pool, members, need)
            k = int(rng.integers(tasks.min_classes, min(tasks.max_classes, len(usable)) + 1))
            chosen = tuple(sorted(rng.choice(usable, k, replace=False).tolist()))
            synthetic = j % 2 == 1 and (not styles or j % 4 == 3)
            domain = str(rng.choice(DOMAINS[1:])) if synthetic else "plain"
            if (chosen, style, domain) not in seen:
                break
        else:
            raise ValueError(f"dataset {dataset}: cannot draw {n} distinct tasks from {len(eligible)} usable classes")
        seen.add((chosen, style, domain))
        out.append(_make_task(pool, dataset, list(chosen), domain, style, members, (n_train, n_test), rng))
    return out


def _make_task(pool: Pool, dataset: str, chosen: list[int], domain: str, style: str, members: np.ndarray,
               sizes: tuple[int, int], rng: np.random.Generator) -> Task:
    """Draw disjoint train / test / fresh-test indices for the ``chosen`` pool classes among ``members``."""
    perms = [rng.permutation(members[pool.labels[members] == c]) for c in chosen]
    n_train, n_test = sizes
    take = lambda a, b: np.concatenate([p[a:b] for p in perms]).astype(np.int64)  # noqa: E731
    fresh = min(n_test, min(len(p) for p in perms) - n_train - n_test)  # class-balanced, as many as all classes have
    names = [pool.classes[c] for c in chosen]
    tag = hashlib.sha1("|".join([dataset, domain, style, *names]).encode()).hexdigest()[:6]
    label = style if style and domain == "plain" else "-".join(x for x in (style, domain) if x)
    return Task(f"{dataset}-{label}-{len(chosen)}c-{tag}", dataset, domain, names, chosen, take(0, n_train),
                take(n_train, n_train + n_test), style, take(n_train + n_test, n_train + n_test + fresh))


def task_arrays(pool: Pool, task: Task, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, S, S, 3] in the task's domain, labels int64 [n] in 0..k-1) of ``split``.

    ``split``: "train", "test", or "fresh" (a second test split, disjoint from both, for the noise ceiling).
    """
    idx = _split_index(pool, task, split)
    # one seed per task, the same for every split: the splits share the domain's parameters
    return apply_domain(pool.images[idx], task.domain, seed=stable_int(task.task_id) % 2**32), task_labels(pool, task, split)


def task_labels(pool: Pool, task: Task, split: str) -> np.ndarray:
    """The labels int64 [n] in 0..k-1 of ``split`` of ``task`` (what ``task_arrays`` returns, without the images)."""
    idx = _split_index(pool, task, split)
    remap = np.full(len(pool.classes), -1, np.int64)
    remap[task.pool_classes] = np.arange(len(task.pool_classes))
    return remap[pool.labels[idx]]


def _split_index(pool: Pool, task: Task, split: str) -> np.ndarray:
    if pool.name != task.dataset:
        raise ValueError(f"task {task.task_id} is drawn from {task.dataset}, not from pool {pool.name}")
    return split_index(task, split)


def split_index(task: Task, split: str) -> np.ndarray:
    """The pool indices int64 [n] of ``split`` ("train", "test" or "fresh") of ``task``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return {"train": task.train_idx, "test": task.test_idx, "fresh": task.fresh_idx}[split]


INDEX_COLUMNS = ["task_id", "dataset", "domain", "style", "n_classes", "classes", "n_train", "n_test", "n_fresh"]


def save_tasks(folder: Path, pools: dict[str, Pool], tasks: list[Task]) -> None:
    """Write ``pools/<dataset>.npz``, ``index.csv`` and ``splits.npz`` under ``folder`` (atomically)."""
    folder = Path(folder)
    for name in sorted({t.dataset for t in tasks}):
        p = pools[name]
        styles = {} if p.styles is None else {"styles": p.styles}
        write_npz(folder / "pools" / f"{name}.npz", images=p.images, labels=p.labels, classes=np.array(p.classes, dtype=str),
                  **styles)
    rows = []
    for t in tasks:
        if any("|" in c for c in t.classes):
            raise ValueError(f"task {t.task_id}: a class name contains '|', which index.csv uses as separator")
        rows.append([t.task_id, t.dataset, t.domain, t.style, len(t.classes), "|".join(t.classes), len(t.train_idx),
                     len(t.test_idx), len(t.fresh_idx)])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([INDEX_COLUMNS, *rows])
    write_text(folder / "index.csv", buf.getvalue())
    splits = {}
    for t in tasks:
        splits.update({f"{t.task_id}/train": t.train_idx, f"{t.task_id}/test": t.test_idx,
                       f"{t.task_id}/fresh": t.fresh_idx, f"{t.task_id}/pool_classes": np.array(t.pool_classes, np.int64)})
    write_npz(folder / "splits.npz", **splits)


def load_tasks(folder: Path) -> tuple[dict[str, Pool], list[Task]]:
    """Inverse of ``save_tasks``."""
    folder = Path(folder)
    rows = _read_index(folder / "index.csv")
    splits = _read_npz(folder / "splits.npz")
    pools = {}
    for name in sorted({r["dataset"] for r in rows}):
        z = _read_npz(folder / "pools" / f"{name}.npz")
        pools[name] = Pool(name, z["images"], z["labels"].astype(np.int64), z["classes"].tolist(), styles=z.get("styles"))
    tasks = []
    for r in rows:
        tid = r["task_id"]
        try:
            task = Task(tid, r["dataset"], r["domain"], r["classes"].split("|"), splits[f"{tid}/pool_classes"].tolist(),
                        splits[f"{tid}/train"], splits[f"{tid}/test"], r.get("style") or "",
                        splits.get(f"{tid}/fresh", np.zeros(0, np.int64)))  # older runs: no style, no fresh split
        except KeyError as e:
            raise ValueError(f"{folder / 'splits.npz'}: no split {e} for task {tid} of index.csv") from None
        if [pools[task.dataset].classes[c] for c in task.pool_classes] != task.classes:
            raise ValueError(f"{folder}: task {tid}: classes in index.csv do not match pools/{task.dataset}.npz")
        tasks.append(task)
    return pools, tasks


def _read_index(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run stage 00 (zoo and tasks) first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(INDEX_COLUMNS) - {"style", "n_fresh"} - set(rows[0]):  # the two are new: older runs lack them
        raise ValueError(f"{path}: not a task index (need columns {', '.join(INDEX_COLUMNS)})")
    return rows


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an .npz, read eagerly; a missing or damaged file is named in the error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run stage 00 (zoo and tasks) first")
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e}); re-run stage 00 with --force") from None


# ----------------------------------------------------------------------------- class-balanced batches

class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``n_per_class`` indices from each of ``n_classes`` random classes: ``DataLoader(batch_sampler=...)``.

    Within a batch a class's examples are drawn without replacement (with replacement only when
    the class is too small). Each pass (epoch) differs, and the sequence of passes is fixed by ``seed``.
    """

    def __init__(self, labels: np.ndarray | list[int], n_classes: int, n_per_class: int, n_batches: int | None = None,
                 seed: int = 0):
        labels = np.asarray(labels)
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if not 1 <= n_classes <= len(self.by_class):
            raise ValueError(f"n_classes={n_classes}, but the labels hold {len(self.by_class)} classes")
        if n_per_class < 1:
            raise ValueError(f"n_per_class must be positive, got {n_per_class}")
        self.n_classes, self.n_per_class, self.seed = n_classes, n_per_class, seed
        self.n_batches = n_batches or max(1, len(labels) // (n_classes * n_per_class))
        self.epoch = 0

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        for _ in range(self.n_batches):
            batch = []
            for c in rng.choice(len(self.by_class), self.n_classes, replace=False):
                members = self.by_class[c]
                batch += rng.choice(members, self.n_per_class, replace=len(members) < self.n_per_class).tolist()
            yield batch
