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
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler

from ptmrec.params import DataParams, TasksParams
from ptmrec.paths import cache_root, write_npz, write_text

log = logging.getLogger(__name__)

ROLES = ("source", "target")
MAX_PIXELS = 25_000_000  # larger images are skipped: a few clip-art PNGs are 168M+ px and take seconds each
PARALLEL_MIN = 64  # decode this many files or more in parallel threads
FINGERPRINT_PX = 32  # image folders and clip art are split into roles by a hash of their pixels at this size


class DataMissingError(RuntimeError):
    """An offline dataset (or the package providing it) is not installed."""


@dataclass
class Pool:
    """Labelled images of one dataset in one role, in memory."""

    name: str  # dataset name, e.g. "fmnist"
    images: np.ndarray  # uint8 [N, S, S, 3]: grey replicated to 3 channels, RGBA composited on white
    labels: np.ndarray  # int64 [N], indices into classes
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) for unreadable inputs

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"pool {self.name}: images must be uint8 [N,S,S,3], got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"pool {self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def class_counts(self) -> dict[str, int]:
        """Images per class name."""
        return dict(zip(self.classes, np.bincount(self.labels, minlength=len(self.classes)).tolist()))


# ----------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., Pool]] = {}  # name -> loader(role, size, per_class, seed, data) -> Pool


def register_dataset(name: str) -> Callable[[Callable[..., Pool]], Callable[..., Pool]]:
    """Decorator: register ``loader(role, size, per_class, seed, data) -> Pool`` under ``name``."""

    def wrap(loader: Callable[..., Pool]) -> Callable[..., Pool]:
        DATASETS[name] = loader
        return loader

    return wrap


def list_datasets() -> list[str]:
    """Names of the registered offline datasets."""
    from . import offline  # noqa: F401  (registers the offline datasets)

    return sorted(DATASETS)


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
                                 cache_dir=_cache_dir(data), name=name)
    if name in data.hf_datasets:
        return _load_hf(name, data.hf_datasets[name], role, size, per_class, seed, data)
    if name not in list_datasets():
        raise KeyError(f"unknown dataset {name!r}; registered: {', '.join(list_datasets())} "
                       "(add others under data.image_folders or data.hf_datasets)")
    return DATASETS[name](role=role, size=size, per_class=per_class, seed=seed, data=data)


# ----------------------------------------------------------------------------- small helpers

def _stable_int(text: str) -> int:
    """A 63-bit hash of ``text`` that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def _is_source(key: str) -> bool:
    """Deterministic role of an item with hash key ``key``: about half are source."""
    return _stable_int(key) % 2 == 0


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded by ints and strings (strings hashed stably)."""
    return np.random.default_rng([k if isinstance(k, int) else _stable_int(k) for k in keys])


def class_balanced_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted int64 indices with ``min(per_class, count)`` random items of every class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)).astype(np.int64) if picks else np.zeros(0, np.int64)


def _cap(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of the items kept under the per-class cap (all when ``per_class`` is None)."""
    return np.arange(len(labels)) if per_class is None else class_balanced_sample(labels, per_class, seed)


def _grey_pool(name: str, grey: np.ndarray, labels: np.ndarray, classes: list[str], size: int,
               per_class: int | None, seed: int) -> Pool:
    """Pool from grey uint8 ``[N, h, w]`` images: cap per class, resize to ``size``, replicate to RGB."""
    keep = _cap(labels, per_class, seed)
    return Pool(name, _resize_grey(grey[keep], size), labels[keep].astype(np.int64), list(classes))


def _resize_grey(grey: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, h, w] -> uint8 [N, size, size, 3] (bilinear, antialiased when shrinking)."""
    from PIL import Image

    if grey.shape[1:] != (size, size):
        out = np.empty((len(grey), size, size), np.uint8)
        for i, g in enumerate(grey):
            out[i] = np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR))
        grey = out
    return np.repeat(grey[..., None], 3, axis=-1)


def _cache_dir(data: DataParams, runs: Path | None = None) -> Path:
    """data.cache_dir, else paths.cache_root(runs) ($PTMREC_CACHE or <runs>/_cache)."""
    return Path(data.cache_dir) if data.cache_dir else cache_root(runs)


# ----------------------------------------------------------------------------- image files (folders, clip art)

def _to_rgb(im, size: int) -> np.ndarray:
    """A PIL image of any mode -> uint8 [size, size, 3]: transparency on white, aspect kept, padded white."""
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "F"):  # 16-bit / float grey: rescale to 8 bit
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((255 * (a - a.min()) / max(np.ptp(a), 1e-9)).astype(np.uint8))
    im = im.convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(white, im).convert("RGB")
    im.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return np.asarray(canvas)


def _decode_file(path: str, size: int) -> np.ndarray | str:
    """uint8 [size, size, 3] from an image file, or the reason it could not be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                return f"too large ({im.width}x{im.height} px > {MAX_PIXELS} px)"
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale (no-op for other formats)
            return _to_rgb(im, size)
    except Exception as e:  # corrupt, truncated, not an image: reported, never fatal
        return f"{type(e).__name__}: {e}"


def _decode_many(paths: list[str], size: int) -> list[np.ndarray | str]:
    """Decode files on all cores: Pillow releases the GIL while it inflates and resizes, so threads
    suffice (and, unlike processes, need no ``__main__`` guard in the caller's script)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from ptmrec.progress import progress

    many = len(paths) >= PARALLEL_MIN
    with warnings.catch_warnings(), ThreadPoolExecutor(min(os.cpu_count() or 1, 8) if many else 1) as ex:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # one context for all threads: not thread-safe
        done = ex.map(_decode_file, paths, [size] * len(paths))  # huge files come back as "too large", not decoded
        return list(progress(done, desc=f"decoding {len(paths)} images at {size} px", total=len(paths)) if many else done)


def _decode_cached(paths: list[str], keys: list[str], size: int, cache: Path | None) -> dict[str, np.ndarray | str]:
    """Decoded image (or failure reason) per content key; new decodes are added to the ``cache`` .npz."""
    known: dict[str, np.ndarray | str] = {}
    if cache is not None and cache.is_file():
        try:
            with np.load(cache) as z:
                known.update(zip(z["keys"].tolist(), z["images"]))
                known.update(zip(z["bad_keys"].tolist(), z["bad_reasons"].tolist()))
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s)", cache, e)
            known = {}
    todo = sorted({k: p for k, p in zip(keys, paths) if k not in known}.items())
    if todo:
        known.update(zip([k for k, _ in todo], _decode_many([p for _, p in todo], size)))
        if cache is not None:
            good = {k: v for k, v in known.items() if not isinstance(v, str)}
            bad = {k: v for k, v in known.items() if isinstance(v, str)}
            write_npz(cache, keys=np.array(list(good), dtype=str),
                      images=np.stack(list(good.values())) if good else np.zeros((0, size, size, 3), np.uint8),
                      bad_keys=np.array(list(bad), dtype=str), bad_reasons=np.array(list(bad.values()), dtype=str))
    return {k: known[k] for k in keys}


_SHA1_MEMO: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha1: files are read once per process


def _scan_folder(root: Path) -> list[tuple[str, str]]:
    """(relative path, sha1 of the bytes) of every non-hidden file under ``root``, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            path = os.path.join(dirpath, fn)
            if fn.startswith(".") or not os.path.isfile(path):
                continue
            st = os.stat(path)
            key = (path, st.st_size, st.st_mtime_ns)
            if key not in _SHA1_MEMO:
                with open(path, "rb") as f:
                    _SHA1_MEMO[key] = hashlib.sha1(f.read()).hexdigest()
            out.append((os.path.relpath(path, root), _SHA1_MEMO[key]))
    return sorted(out)


def _role_files(root: Path, role: str, cache: Path | None) -> list[tuple[str, str]]:
    """Files ``(relpath, sha1)`` of ``role``, split by a hash of their pixels so that no picture is in both roles.

    Every file is decoded once at FINGERPRINT_PX (cached: seconds per thousand files). Files with the same
    pixels (the same picture saved twice, or filed under two categories) are kept once, at the most specific
    path. Unreadable files are split by their bytes; loading reports them.
    """
    files = _scan_folder(root)
    decoded = _decode_cached([str(root / rel) for rel, _ in files], [sha for _, sha in files], FINGERPRINT_PX, cache)
    by_pixels: dict[str, tuple[str, str]] = {}
    kept = []
    for rel, sha in files:
        img = decoded[sha]
        if isinstance(img, str):
            kept.append((rel, sha, sha))
            continue
        fp = hashlib.sha1(img.tobytes()).hexdigest()
        old = by_pixels.get(fp)
        if old is None or rel.count(os.sep) > old[0].count(os.sep):  # the deeper path wins, else the first
            by_pixels[fp] = (rel, sha)
    kept += [(rel, sha, fp) for fp, (rel, sha) in by_pixels.items()]
    return sorted((rel, sha) for rel, sha, key in kept if _is_source(key) == (role == "source"))


def _files_pool(name: str, root: Path, files: list[tuple[str, str]], label_of: Callable[[str], str | None],
                size: int, per_class: int | None, seed: int, cache: Path | None, min_files: int = 1) -> Pool:
    """Pool from image files ``(relpath, sha1)`` under ``root``, labelled by ``label_of(relpath)``.

    Classes with fewer than ``min_files`` files are dropped. Per class, files are taken in a seeded
    random order until ``per_class`` decode; unreadable ones are skipped and reported.
    """
    by_class: dict[str, list[tuple[str, str]]] = {}
    for rel, sha in files:
        label = label_of(rel)
        if label is not None:
            by_class.setdefault(label, []).append((rel, sha))
    classes = sorted(c for c, fs in by_class.items() if len(fs) >= min_files)
    rng = np.random.default_rng(seed)
    queues = [[by_class[c][i] for i in rng.permutation(len(by_class[c]))] for c in classes]
    got: list[list[tuple[str, np.ndarray]]] = [[] for _ in classes]
    skipped: list[tuple[str, str]] = []
    while True:  # decode what is still missing; replace failures with the next files of their class
        wanted = [(c, q.pop(0)) for c, q in enumerate(queues)
                  for _ in range(min(len(q), (per_class or len(q)) - len(got[c])))]
        if not wanted:
            break
        decoded = _decode_cached([str(root / rel) for _, (rel, _) in wanted], [sha for _, (_, sha) in wanted], size, cache)
        for c, (rel, sha) in wanted:
            img = decoded[sha]
            if isinstance(img, str):
                skipped.append((str(root / rel), img))
            else:
                got[c].append((rel, img))
    if skipped:
        log.warning("%s: skipped %d unreadable file(s): %s", name, len(skipped),
                    "; ".join(f"{f} ({why})" for f, why in skipped))
    items = sorted((rel, c, img) for c, g in enumerate(got) for rel, img in g)  # file order, independent of decode order
    images = np.stack([img for _, _, img in items]) if items else np.zeros((0, size, size, 3), np.uint8)
    return Pool(name, images, np.array([c for _, c, _ in items], np.int64), classes, sorted(skipped))


def load_image_folder(folder: str | Path, size: int, role: str | None = None, per_class: int | None = None,
                      seed: int = 0, cache_dir: str | Path | None = None, name: str | None = None) -> Pool:
    """Images under ``folder/<class>/...`` (files in deeper folders count for their top class).

    ``role`` None keeps every image, else about half by a hash of the pixels (see ``_role_files``).
    Grey, palette and RGBA images become RGB; unreadable files are skipped, listed in ``Pool.skipped``
    and logged. ``cache_dir`` keeps decoded images between runs.
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        raise ValueError(f"image folder {root} has no class subfolders: expected {root}/<class name>/<image files>")
    name = name or root.name

    def cache(px: int) -> Path | None:
        return Path(cache_dir) / f"folder-{name}-{_stable_int(str(root)) % 16**8:08x}-{px}px.npz" if cache_dir else None

    files = _scan_folder(root) if role is None else _role_files(root, role, cache(FINGERPRINT_PX))

    def top_folder(rel: str) -> str | None:
        parts = Path(rel).parts
        return parts[0] if len(parts) > 1 else None

    return _files_pool(name, root, files, top_folder, size, per_class, seed, cache(size))

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
    idx = np.flatnonzero([_is_source(f"{hf_id}/{i}") == (role == "source") for i in range(len(labels))])
    idx = idx[_cap(labels[idx], per_class, seed)]
    images = [_to_rgb(im, size) for im in ds.select(idx.tolist())[data.hf_image_key]]
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
    """A target task: some classes of one pool, in one domain, with disjoint class-balanced splits."""

    task_id: str  # unique and readable, e.g. "fmnist-inverted-3c-a1b2c3"
    dataset: str  # pool name (for leave-datasets-out folds)
    domain: str
    classes: list[str]  # class names, in label order 0..k-1
    pool_classes: list[int]  # indices into the pool's classes, in label order
    train_idx: np.ndarray  # int64 [k * train_per_class], indices into the pool images
    test_idx: np.ndarray  # int64 [k * test_per_class]


def sample_tasks(pools: dict[str, Pool], counts: dict[str, int], tasks: TasksParams, seed: int) -> list[Task]:
    """``counts[d]`` tasks from each pool ``d``: distinct (classes, domain) pairs, deterministic in ``seed``.

    Even-numbered tasks of a dataset are plain, odd ones take a random other domain.
    """
    out = []
    for dataset, n in counts.items():
        if dataset not in pools:
            raise KeyError(f"no pool for dataset {dataset!r} (pools: {', '.join(pools)})")
        out += _sample_from_pool(pools[dataset], dataset, n, tasks, _rng(seed, "tasks", dataset))
    return out


def _sample_from_pool(pool: Pool, dataset: str, n: int, tasks: TasksParams, rng: np.random.Generator) -> list[Task]:
    need = tasks.train_per_class + tasks.test_per_class
    counts = np.bincount(pool.labels, minlength=len(pool.classes))
    eligible = np.flatnonzero(counts >= need)
    if len(eligible) < tasks.min_classes:
        smallest = ", ".join(f"{pool.classes[c]}: {counts[c]}" for c in np.argsort(counts)[: tasks.min_classes + 2])
        raise ValueError(
            f"dataset {dataset}: a task needs {tasks.min_classes} classes with {need} images each "
            f"(train_per_class {tasks.train_per_class} + test_per_class {tasks.test_per_class}), but only "
            f"{len(eligible)} of {len(pool.classes)} classes have that many (images per class: {smallest}, ...)")
    k_max = min(tasks.max_classes, len(eligible))
    seen: set[tuple[tuple[int, ...], str]] = set()
    out = []
    for j in range(n):
        for _ in range(1000):
            k = int(rng.integers(tasks.min_classes, k_max + 1))
            chosen = tuple(sorted(rng.choice(eligible, k, replace=False).tolist()))
            domain = "plain" if j % 2 == 0 else str(rng.choice(DOMAINS[1:]))
            if (chosen, domain) not in seen:
                break
        else:
            raise ValueError(f"dataset {dataset}: cannot draw {n} distinct tasks from {len(eligible)} usable classes")
        seen.add((chosen, domain))
        out.append(_make_task(pool, dataset, list(chosen), domain, tasks, rng))
    return out


def _make_task(pool: Pool, dataset: str, chosen: list[int], domain: str, tasks: TasksParams,
               rng: np.random.Generator) -> Task:
    """Draw disjoint train/test indices for the ``chosen`` pool classes."""
    perms = [rng.permutation(np.flatnonzero(pool.labels == c)) for c in chosen]
    n_train, n_test = tasks.train_per_class, tasks.test_per_class
    train = np.concatenate([p[:n_train] for p in perms]).astype(np.int64)
    test = np.concatenate([p[n_train: n_train + n_test] for p in perms]).astype(np.int64)
    names = [pool.classes[c] for c in chosen]
    tag = hashlib.sha1("|".join([dataset, domain, *names]).encode()).hexdigest()[:6]
    return Task(f"{dataset}-{domain}-{len(chosen)}c-{tag}", dataset, domain, names, chosen, train, test)


def task_arrays(pool: Pool, task: Task, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, S, S, 3] in the task's domain, labels int64 [n] in 0..k-1) of ``split``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if pool.name != task.dataset:
        raise ValueError(f"task {task.task_id} is drawn from {task.dataset}, not from pool {pool.name}")
    idx = task.train_idx if split == "train" else task.test_idx
    remap = np.full(len(pool.classes), -1, np.int64)
    remap[task.pool_classes] = np.arange(len(task.pool_classes))
    # one seed per task, the same for both splits: train and test share the domain's parameters
    return apply_domain(pool.images[idx], task.domain, seed=_stable_int(task.task_id) % 2**32), remap[pool.labels[idx]]


INDEX_COLUMNS = ["task_id", "dataset", "domain", "n_classes", "classes", "n_train", "n_test"]


def save_tasks(folder: Path, pools: dict[str, Pool], tasks: list[Task]) -> None:
    """Write ``pools/<dataset>.npz``, ``index.csv`` and ``splits.npz`` under ``folder`` (atomically)."""
    folder = Path(folder)
    for name in sorted({t.dataset for t in tasks}):
        p = pools[name]
        write_npz(folder / "pools" / f"{name}.npz", images=p.images, labels=p.labels, classes=np.array(p.classes, dtype=str))
    rows = []
    for t in tasks:
        if any("|" in c for c in t.classes):
            raise ValueError(f"task {t.task_id}: a class name contains '|', which index.csv uses as separator")
        rows.append([t.task_id, t.dataset, t.domain, len(t.classes), "|".join(t.classes), len(t.train_idx), len(t.test_idx)])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([INDEX_COLUMNS, *rows])
    write_text(folder / "index.csv", buf.getvalue())
    splits = {}
    for t in tasks:
        splits.update({f"{t.task_id}/train": t.train_idx, f"{t.task_id}/test": t.test_idx,
                       f"{t.task_id}/pool_classes": np.array(t.pool_classes, np.int64)})
    write_npz(folder / "splits.npz", **splits)


def load_tasks(folder: Path) -> tuple[dict[str, Pool], list[Task]]:
    """Inverse of ``save_tasks``."""
    folder = Path(folder)
    rows = _read_index(folder / "index.csv")
    splits = _read_npz(folder / "splits.npz")
    pools = {}
    for name in sorted({r["dataset"] for r in rows}):
        z = _read_npz(folder / "pools" / f"{name}.npz")
        pools[name] = Pool(name, z["images"], z["labels"].astype(np.int64), z["classes"].tolist())
    tasks = []
    for r in rows:
        tid = r["task_id"]
        try:
            task = Task(tid, r["dataset"], r["domain"], r["classes"].split("|"), splits[f"{tid}/pool_classes"].tolist(),
                        splits[f"{tid}/train"], splits[f"{tid}/test"])
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
    if not rows or set(INDEX_COLUMNS) - set(rows[0]):
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
