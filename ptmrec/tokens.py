"""Dataset tokens (stage 04): what the image encoder makes of a task.

A task's tokens are the embeddings of a class-balanced sample of its images, one per image or one per
class (the normalised class mean, a prototype as in Snell et al. 2017), stored as sharded NPZ:

    <stage>/tokens-000.npz      tokens [T, D] float32, task_ids [T], labels [T] (class in task), splits [T]
    <stage>/tokens_index.csv    one row per task: its shard, token and image counts
    <stage>/source_tokens.npz   tokens [T, D], source_ids [T], labels [T]

    >>> tokens = load_dataset_tokens(stage_dir)          # task_id -> [M, D]
    >>> tokens, labels, classes, skipped = folder_tokens("my_images/", encoder, per_class=16)
    >>> keep = subsample_tokens(labels, 64)              # the class-balanced cut every consumer uses
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import pandas as pd

from .params import TokensParams
from .paths import write_csv, write_npz
from .registry import Registry

if TYPE_CHECKING:  # torch stays out of the import: ``ptmrec recommend`` embeds a folder without it
    from .encoders import ClipImageEncoder

log = logging.getLogger(__name__)

KINDS = Registry("dataset token kind")  # tokens.kind -> fn(tokens [n, D], labels [n]) -> (tokens [m, D], labels [m])
SOURCE_PROMPT = "a photo of a {}."  # ImageNet source tokens: one text embedding per class


@KINDS.register("images")
def _per_image(tokens: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One token per image, as embedded."""
    return tokens, labels


@KINDS.register("prototypes")
def prototypes(tokens: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class prototypes: tokens [n, D] and labels [n] -> ([k, D] normalised class means, [k] labels, sorted)."""
    classes = np.unique(labels)
    means = np.stack([tokens[labels == c].mean(0) for c in classes]) if len(classes) else tokens[:0]
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32), classes


def _tokens_of(encoder: ClipImageEncoder, pixels: np.ndarray, labels: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind not in KINDS:
        raise ValueError(f"tokens.kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS.get(kind)(encoder.encode(pixels), labels)


def _task_sample(pool: Any, task: Any, tp: TokensParams, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """(images [n, S, S, 3], labels [n], splits [n], shortfalls): ``tp.per_class`` images of every class drawn from
    the task's ``tp.splits``; a class with fewer gives all it has and is listed in shortfalls."""
    from .data import task_arrays
    from .pools import class_balanced_sample, stable_int

    parts = [(*task_arrays(pool, task, s), s) for s in tp.splits]
    x = np.concatenate([a for a, _, _ in parts])
    y = np.concatenate([b for _, b, _ in parts])
    split = np.concatenate([np.full(len(b), s) for _, b, s in parts])
    idx = class_balanced_sample(y, tp.per_class, (seed + stable_int(task.task_id)) % 2**32)
    counts = np.bincount(y[idx], minlength=len(task.classes))
    short = [dict(task_id=task.task_id, cls=task.classes[c], have=int(counts[c]), wanted=tp.per_class)
             for c in range(len(task.classes)) if counts[c] < tp.per_class]
    return x[idx], y[idx], split[idx], short


def extract_dataset_tokens(pools: dict, tasks: list, encoder: ClipImageEncoder, tp: TokensParams, out_dir: str | Path,
                           seed: int = 0, progress: Callable[[Iterable], Iterable] = iter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Embed a class-balanced sample of every task and write ``tokens-NNN.npz`` shards (``tp.shard_size`` tasks each).

    Returns (index: one row per task with its shard and token count, shortfalls: classes with fewer images
    than ``tp.per_class``). Every shard is complete before it is written (atomically); shards of an earlier
    run beyond the new count are removed.
    """
    if tp.kind not in KINDS:
        raise ValueError(f"tokens.kind must be one of {', '.join(KINDS)}, got {tp.kind!r}")
    bad = set(tp.splits) - {"train", "test"}
    if bad or not tp.splits:
        raise ValueError(f"tokens.splits must be a non-empty subset of [train, test], got {tp.splits}")
    out_dir = Path(out_dir)
    rows, short, shard = [], [], []
    n_shards = 0

    def flush() -> None:
        nonlocal shard, n_shards
        if shard:
            write_npz(out_dir / f"tokens-{n_shards:03d}.npz", tokens=np.concatenate([s[0] for s in shard]),
                      task_ids=np.concatenate([s[1] for s in shard]), labels=np.concatenate([s[2] for s in shard]),
                      splits=np.concatenate([s[3] for s in shard]))
            n_shards, shard = n_shards + 1, []

    for task in progress(tasks):
        x, y, split, miss = _task_sample(pools[task.dataset], task, tp, seed)
        tokens, labels = _tokens_of(encoder, x, y, tp.kind)
        splits = split if tp.kind == "images" else np.array(["+".join(sorted(set(split[y == c]))) for c in labels])
        shard.append((tokens, np.full(len(tokens), task.task_id), labels.astype(np.int64), splits.astype(str)))
        rows.append(dict(task_id=task.task_id, dataset=task.dataset, shard=f"tokens-{n_shards:03d}.npz",
                         n_tokens=len(tokens), n_images=len(x), n_classes=len(task.classes), short_classes=len(miss)))
        short += miss
        if len(shard) == tp.shard_size:
            flush()
    flush()
    for stale in out_dir.glob("tokens-*.npz"):
        if int(stale.stem.split("-")[1]) >= n_shards:
            stale.unlink()
    index = pd.DataFrame(rows)
    write_csv(out_dir / "tokens_index.csv", index)
    shortfalls = pd.DataFrame(short, columns=["task_id", "cls", "have", "wanted"])
    if len(shortfalls):  # a few examples: the returned table (stage 04's shortfalls.csv) has them all
        first = "; ".join(f"{r.task_id}/{r.cls}: {r.have}" for r in shortfalls.head(3).itertuples())
        more = f"; {len(shortfalls) - 3} more in the shortfalls table" if len(shortfalls) > 3 else ""
        log.warning("%d class(es) have fewer than %d images: all of theirs taken (%s%s)", len(shortfalls),
                    tp.per_class, first, more)
    return index, shortfalls


def read_token_shards(stage_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """task_id -> {"tokens" [M, D], "labels" [M], "splits" [M]} from the ``tokens-*.npz`` shards of ``stage_dir``."""
    files = sorted(Path(stage_dir).glob("tokens-*.npz"))
    if not files:
        raise FileNotFoundError(f"no tokens-*.npz in {stage_dir}: run stage 04 (dataset tokens) first")
    out: dict[str, dict[str, np.ndarray]] = {}
    for f in files:
        try:
            with np.load(f) as z:
                arrays = {k: z[k] for k in ("tokens", "task_ids", "labels", "splits")}
        except Exception as e:
            raise ValueError(f"{f}: not a readable token shard ({type(e).__name__}: {e}); re-run stage 04") from None
        n = len(arrays["tokens"])
        if arrays["tokens"].ndim != 2 or any(len(a) != n for a in arrays.values()):
            raise ValueError(f"{f}: tokens, task_ids, labels and splits differ in length")
        for tid in dict.fromkeys(arrays["task_ids"].tolist()):
            if tid in out:
                raise ValueError(f"{f}: task {tid} is also in an earlier shard")
            m = arrays["task_ids"] == tid
            out[tid] = {"tokens": arrays["tokens"][m].astype(np.float32), "labels": arrays["labels"][m].astype(np.int64),
                        "splits": arrays["splits"][m]}
    return out


def load_dataset_tokens(stage_dir: str | Path) -> dict[str, np.ndarray]:
    """task_id -> dataset tokens [M, D] (float32, unit norm) of a stage 04 folder."""
    return {tid: v["tokens"] for tid, v in read_token_shards(stage_dir).items()}


class DatasetTokenDataset:
    """The dataset tokens of a stage 04 folder: item i = dict(task_id, tokens FloatTensor [M, D], labels LongTensor [M]).

    ``task_ids`` keeps (and orders) a subset, e.g. the training tasks of a fold.
    """

    def __init__(self, stage_dir: str | Path, task_ids: list[str] | None = None):
        import torch  # a map-style dataset (len and getitem) is all a DataLoader needs: no torch at import

        shards = read_token_shards(stage_dir)
        missing = sorted(set(task_ids or []) - set(shards))
        if missing:
            raise KeyError(f"{stage_dir}: no dataset tokens for task(s) {', '.join(missing)}")
        self.task_ids = list(task_ids) if task_ids is not None else list(shards)
        self._items = [(torch.from_numpy(shards[t]["tokens"]), torch.from_numpy(shards[t]["labels"])) for t in self.task_ids]

    def __len__(self) -> int:
        return len(self.task_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        tokens, labels = self._items[i]
        return dict(task_id=self.task_ids[i], tokens=tokens, labels=labels)


def subsample_tokens(labels: np.ndarray, max_tokens: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices of at most ``max_tokens`` dataset tokens, class-balanced: int64 [min(M, max_tokens)], sorted.

    ``labels`` [M] is each token's class. Every class keeps ``max_tokens // k`` tokens (the remainder goes
    to the first classes; a class with fewer keeps all it has and leaves its share to the others), taken
    evenly spaced within the class, or at random with ``rng`` (training augmentation). The one rule for
    training, evaluation and ``ptmrec recommend``: no class is ever dropped while it fits.
    """
    labels = np.asarray(labels)
    if len(labels) <= max_tokens:
        return np.arange(len(labels), dtype=np.int64)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]  # [k] index arrays
    quota = np.zeros(len(members), np.int64)
    left = max_tokens
    while left > 0:  # water-filling: one token per class per round, only to classes that have more
        open_ = [i for i, m in enumerate(members) if quota[i] < len(m)]
        for i in open_[:left]:
            quota[i] += 1
        left -= min(left, len(open_))
    keep = []
    for m, q in zip(members, quota):
        pick = rng.choice(len(m), q, replace=False) if rng is not None else np.linspace(0, len(m) - 1, q).round()
        keep.append(m[np.asarray(pick, np.int64)])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def folder_tokens(folder: str | Path, encoder: ClipImageEncoder, per_class: int, kind: str = "images",
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, str]]]:
    """Dataset tokens of a labelled image folder ``folder/<class>/<images>`` (what ``ptmrec recommend --images`` reads).

    Returns (tokens [M, D], labels [M], classes, skipped (file, reason)). Unreadable files are skipped and
    listed; grey, palette and RGBA images become RGB; a class with fewer than ``per_class`` images gives all
    it has. Raises, naming the folder: no class folders, a single class, a class without a readable image.
    """
    from .pools import load_image_folder

    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    class_dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"image folder {root} has no class subfolders: expected {root}/<class name>/<image files>")
    if len(class_dirs) == 1:
        raise ValueError(f"image folder {root} has one class only ({class_dirs[0]}): a dataset needs two or more")
    pool = load_image_folder(root, encoder.image_size, role=None, per_class=per_class, seed=seed)
    counts = pool.class_counts()
    empty = [c for c in class_dirs if counts.get(c, 0) == 0]
    if empty:
        why = "; ".join(f"{f} ({r})" for f, r in pool.skipped if Path(f).relative_to(root).parts[0] in empty)
        raise ValueError(f"image folder {root}: class folder(s) {', '.join(empty)} hold no readable image"
                         + (f" (unreadable: {why})" if why else ""))
    tokens, labels = _tokens_of(encoder, pool.images, pool.labels, kind)
    return tokens, labels, list(pool.classes), list(pool.skipped)


def dataset_similarity(tokens_by_task: dict[str, np.ndarray], center: bool = True) -> pd.DataFrame:
    """Task x task cosine similarity of the tasks' mean tokens (symmetric, unit diagonal).

    ``center`` subtracts the mean over tasks first: embeddings of one encoder share a narrow cone
    (Liang et al. 2022, "Mind the Gap"), which would put every pair near 1. tokens: task_id -> [M, D].
    """
    ids = list(tokens_by_task)
    means = np.stack([np.asarray(tokens_by_task[t], np.float64).mean(0) for t in ids])  # [n, D]
    if center and len(ids) > 2:
        means = means - means.mean(0, keepdims=True)
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    sim = np.clip(means @ means.T, -1, 1)
    np.fill_diagonal(sim, 1.0)
    return pd.DataFrame(sim, index=ids, columns=ids)


# ----------------------------------------------------------------------------- source tokens


def extract_source_tokens(pools: dict, source_ids: list[str], encoder: ClipImageEncoder, tp: TokensParams,
                          out_dir: str | Path, seed: int = 0) -> pd.DataFrame:
    """Tokens of the zoo's source tasks into ``source_tokens.npz`` (tokens [T, D], source_ids [T], labels [T]).

    A source with a pool is embedded like a task (class-balanced sample, ``tp.kind``); "imagenet" (no images
    offline) gets the text embeddings of its 1000 class names (``SOURCE_PROMPT``), one per class; any other
    source is listed as skipped. Returns one row per source: source_id, n_tokens, from (images|text|skipped).
    """
    from .pools import class_balanced_sample
    from .zoo import imagenet_classes

    toks, ids, labs, rows = [], [], [], []
    for sid in source_ids:
        if sid in pools:
            pool = pools[sid]
            idx = class_balanced_sample(pool.labels, tp.per_class, seed)
            t, lab = _tokens_of(encoder, pool.images[idx], pool.labels[idx], tp.kind)
            how = "images"
        elif sid == "imagenet":
            names = [c.split(",")[0].strip() for c in imagenet_classes()]
            t, lab, how = encoder.encode_text([SOURCE_PROMPT.format(n) for n in names]), np.arange(len(names)), "text"
        else:
            rows.append(dict(source_id=sid, n_tokens=0, source="skipped: no images or class names"))
            continue
        toks.append(t)
        ids.append(np.full(len(t), sid))
        labs.append(np.asarray(lab, np.int64))
        rows.append(dict(source_id=sid, n_tokens=len(t), source=how))
    write_npz(Path(out_dir) / "source_tokens.npz",
              tokens=np.concatenate(toks) if toks else np.zeros((0, encoder.dim), np.float32),
              source_ids=np.concatenate(ids) if ids else np.zeros(0, str),
              labels=np.concatenate(labs) if labs else np.zeros(0, np.int64))
    return pd.DataFrame(rows)


def load_source_tokens(stage_dir: str | Path) -> dict[str, np.ndarray]:
    """source_id -> tokens [M, D] from ``source_tokens.npz`` of a stage 04 folder."""
    path = Path(stage_dir) / "source_tokens.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run stage 04 (dataset tokens) first")
    try:
        with np.load(path) as z:
            tokens, ids = z["tokens"].astype(np.float32), z["source_ids"]
    except Exception as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e}); re-run stage 04") from None
    return {sid: tokens[ids == sid] for sid in dict.fromkeys(ids.tolist())}


# ----------------------------------------------------------------------------- speed


def token_speed(pools: dict, tasks: list, encoder: ClipImageEncoder, tp: TokensParams, seed: int = 0,
                repeats: int = 3) -> dict[str, Any]:
    """Images per second of the whole token extraction vs the bare forward pass on the same batches.

    Extraction = ``extract_dataset_tokens`` end to end (task images in their domain, sampling, preprocessing,
    forward, normalisation, prototypes, shard writing) into a temporary folder. Forward = ``encoder.forward``
    alone over the very batches extraction feeds it, preprocessed beforehand. Both are timed ``repeats``
    times, interleaved, after one warm-up batch; the medians count.
    """
    import torch

    batches = []
    for task in tasks:  # the same samples, hence the same batches, as the extraction below
        x = _task_sample(pools[task.dataset], task, tp, seed)[0]
        batches += [encoder.preprocess(x[i:i + encoder.batch_size]) for i in range(0, len(x), encoder.batch_size)]
    n = sum(len(b) for b in batches)
    sync = torch.cuda.synchronize if encoder.device.type == "cuda" else (lambda: None)
    encoder.forward(batches[0])  # warm-up: kernel selection and caches
    ext, fwd = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t = time.perf_counter()
            extract_dataset_tokens(pools, tasks, encoder, tp, tmp, seed)
            ext.append(time.perf_counter() - t)
            t = time.perf_counter()
            for b in batches:
                encoder.forward(b)
            sync()
            fwd.append(time.perf_counter() - t)
    e, f = float(np.median(ext)), float(np.median(fwd))
    return dict(images=n, batches=len(batches), batch_size=encoder.batch_size, repeats=repeats,
                extraction_seconds=round(e, 3), forward_seconds=round(f, 3),
                extraction_images_per_s=round(n / e, 1), forward_images_per_s=round(n / f, 1), ratio=round(f / e, 3),
                threads=torch.get_num_threads(), device=str(encoder.device), encoder=repr(encoder))
