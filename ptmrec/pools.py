"""Pools of labelled images, the dataset registry, and the image-file helpers every loader shares.

A ``Pool`` holds the images of one dataset in one role (``"source"``: what the zoo is pretrained on,
``"target"``: what target tasks are drawn from; the roles never share an image), RGB uint8
``[N, S, S, 3]``, with labels, class names and, where the data has them, each image's natural style
(vendor, theme, deck, photo / cartoon). Loaders register with ``register_dataset(name, **info)``;
``info`` records where the data comes from (``package``, ``licence``, ``domain``, ``styles``,
``commercial``) for the dataset table of stage 00. The loader modules (``offline``, ``icons``,
``photos``) import this module; ``ptmrec.data`` imports them.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .params import DataParams
from .paths import cache_root, write_npz
from .registry import Registry

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
    styles: np.ndarray | None = None  # str [N]: each image's natural style (vendor, theme, deck, ...); None = one

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"pool {self.name}: images must be uint8 [N,S,S,3], got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"pool {self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if self.styles is not None:
            self.styles = np.asarray(self.styles, dtype=str)
            if len(self.styles) != len(self.images):
                raise ValueError(f"pool {self.name}: {len(self.images)} images but {len(self.styles)} styles")

    def style_names(self) -> list[str]:
        """The distinct styles, sorted ([] when the pool has none)."""
        return [] if self.styles is None else sorted(set(self.styles.tolist()))

    def class_counts(self) -> dict[str, int]:
        """Images per class name."""
        return dict(zip(self.classes, np.bincount(self.labels, minlength=len(self.classes)).tolist()))


# ----------------------------------------------------------------------------- registry

DATASETS = Registry("dataset")  # name -> loader(role, size, per_class, seed, data) -> Pool
INFO_KEYS = ("package", "licence", "domain", "styles", "commercial")


def register_dataset(name: str, **info: object) -> Callable[[Callable[..., Pool]], Callable[..., Pool]]:
    """Decorator: register ``loader(role, size, per_class, seed, data) -> Pool`` under ``name``.

    ``info``: ``package`` (what installs the data, e.g. "Debian dataset-fashion-mnist"), ``licence``,
    ``domain`` (the visual domain: "handwriting", "emoji", ...), ``styles`` (what the pool's styles are,
    e.g. "vendor"; "" when it has none) and ``commercial`` (False: non-commercial licence, never in a
    default world).
    """
    unknown = set(info) - set(INFO_KEYS)
    if unknown:
        raise ValueError(f"register_dataset('{name}'): unknown info {sorted(unknown)}; valid: {', '.join(INFO_KEYS)}")
    return DATASETS.register(name, **{"styles": "", "commercial": True, **info})


# ----------------------------------------------------------------------------- small helpers

def stable_int(text: str) -> int:
    """A 63-bit hash of ``text`` that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def is_source(key: str) -> bool:
    """Deterministic role of an item with hash key ``key``: about half are source."""
    return stable_int(key) % 2 == 0


def seeded_rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded by ints and strings (strings hashed stably)."""
    return np.random.default_rng([k if isinstance(k, int) else stable_int(k) for k in keys])


def class_balanced_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted int64 indices with ``min(per_class, count)`` random items of every class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)).astype(np.int64) if picks else np.zeros(0, np.int64)


def cap_per_class(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of the items kept under the per-class cap (all when ``per_class`` is None)."""
    return np.arange(len(labels)) if per_class is None else class_balanced_sample(labels, per_class, seed)


def grey_pool(name: str, grey: np.ndarray, labels: np.ndarray, classes: list[str], size: int,
               per_class: int | None, seed: int) -> Pool:
    """Pool from grey uint8 ``[N, h, w]`` images: cap per class, resize to ``size``, replicate to RGB."""
    keep = cap_per_class(labels, per_class, seed)
    return Pool(name, resize_grey(grey[keep], size), labels[keep].astype(np.int64), list(classes))


def resize_grey(grey: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, h, w] -> uint8 [N, size, size, 3] (bilinear, antialiased when shrinking)."""
    from PIL import Image

    if grey.shape[1:] != (size, size):
        out = np.empty((len(grey), size, size), np.uint8)
        for i, g in enumerate(grey):
            out[i] = np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR))
        grey = out
    return np.repeat(grey[..., None], 3, axis=-1)


def cache_folder(data: DataParams, runs: Path | None = None) -> Path:
    """data.cache_dir, else paths.cache_root(runs) ($PTMREC_CACHE or <runs>/_cache)."""
    return Path(data.cache_dir) if data.cache_dir else cache_root(runs)


# ----------------------------------------------------------------------------- image files (folders, clip art)

def to_rgb(im, size: int) -> np.ndarray:
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


def decode_file(path: str, size: int) -> np.ndarray | str:
    """uint8 [size, size, 3] from an image file, or the reason it could not be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                return f"too large ({im.width}x{im.height} px > {MAX_PIXELS} px)"
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale (no-op for other formats)
            return to_rgb(im, size)
    except Exception as e:  # corrupt, truncated, not an image: reported, never fatal
        return f"{type(e).__name__}: {e}"


def decode_many(paths: list[str], size: int) -> list[np.ndarray | str]:
    """Decode files on all cores: Pillow releases the GIL while it inflates and resizes, so threads
    suffice (and, unlike processes, need no ``__main__`` guard in the caller's script)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from ptmrec.progress import progress

    many = len(paths) >= PARALLEL_MIN
    with warnings.catch_warnings(), ThreadPoolExecutor(min(os.cpu_count() or 1, 8) if many else 1) as ex:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # one context for all threads: not thread-safe
        done = ex.map(decode_file, paths, [size] * len(paths))  # huge files come back as "too large", not decoded
        return list(progress(done, desc=f"decoding {len(paths)} images at {size} px", total=len(paths)) if many else done)


def read_image_cache(cache: Path | None) -> dict[str, np.ndarray | str]:
    """Key -> image uint8 [S, S, 3] or the reason it could not be made, from an image cache .npz.

    Plain arrays only (``allow_pickle`` stays False: nothing is unpickled); a damaged cache is logged and
    rebuilt, never trusted.
    """
    known: dict[str, np.ndarray | str] = {}
    if cache is not None and cache.is_file():
        try:
            with np.load(cache) as z:
                known.update(zip(z["keys"].tolist(), z["images"]))
                known.update(zip(z["bad_keys"].tolist(), z["bad_reasons"].tolist()))
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s)", cache, e)
            known = {}
    return known


def write_image_cache(cache: Path, known: dict[str, np.ndarray | str], size: int) -> None:
    """Write ``known`` (key -> image [size, size, 3] or failure reason) as the image cache .npz, atomically."""
    good = {k: v for k, v in known.items() if not isinstance(v, str)}
    bad = {k: v for k, v in known.items() if isinstance(v, str)}
    write_npz(cache, keys=np.array(list(good), dtype=str),
              images=np.stack(list(good.values())) if good else np.zeros((0, size, size, 3), np.uint8),
              bad_keys=np.array(list(bad), dtype=str), bad_reasons=np.array(list(bad.values()), dtype=str))


def decode_cached(paths: list[str], keys: list[str], size: int, cache: Path | None) -> dict[str, np.ndarray | str]:
    """Decoded image (or failure reason) per content key; new decodes are added to the ``cache`` .npz."""
    known = read_image_cache(cache)
    todo = sorted({k: p for k, p in zip(keys, paths) if k not in known}.items())
    if todo:
        known.update(zip([k for k, _ in todo], decode_many([p for _, p in todo], size)))
        if cache is not None:
            write_image_cache(cache, known, size)
    return {k: known[k] for k in keys}


_SHA1_MEMO: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha1: files are read once per process


def scan_folder(root: Path) -> list[tuple[str, str]]:
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


def role_files(root: Path, role: str, cache: Path | None) -> list[tuple[str, str]]:
    """Files ``(relpath, sha1)`` of ``role``, split by a hash of their pixels so that no picture is in both roles.

    Every file is decoded once at FINGERPRINT_PX (cached: seconds per thousand files). Files with the same
    pixels (the same picture saved twice, or filed under two categories) are kept once, at the most specific
    path. Unreadable files are split by their bytes; loading reports them.
    """
    files = scan_folder(root)
    decoded = decode_cached([str(root / rel) for rel, _ in files], [sha for _, sha in files], FINGERPRINT_PX, cache)
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
    return sorted((rel, sha) for rel, sha, key in kept if is_source(key) == (role == "source"))


def files_pool(name: str, root: Path, files: list[tuple[str, str]], label_of: Callable[[str], str | None],
               size: int, per_class: int | None, seed: int, cache: Path | None, min_files: int = 1,
               style_of: Callable[[str], str] | None = None) -> Pool:
    """Pool from image files ``(relpath, sha1)`` under ``root``, labelled by ``label_of(relpath)``.

    Classes with fewer than ``min_files`` files are dropped. Per class, files are taken in a seeded
    random order until ``per_class`` decode; unreadable ones are skipped and reported. ``style_of``
    (optional) gives each file's natural style (``Pool.styles``).
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
        decoded = decode_cached([str(root / rel) for _, (rel, _) in wanted], [sha for _, (_, sha) in wanted], size, cache)
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
    styles = None if style_of is None else np.array([style_of(rel) for rel, _, _ in items], dtype=str)
    return Pool(name, images, np.array([c for _, c, _ in items], np.int64), classes, sorted(skipped), styles)


def load_image_folder(folder: str | Path, size: int, role: str | None = None, per_class: int | None = None,
                      seed: int = 0, cache_dir: str | Path | None = None, name: str | None = None) -> Pool:
    """Images under ``folder/<class>/...`` (files in deeper folders count for their top class).

    ``role`` None keeps every image, else about half by a hash of the pixels (see ``role_files``).
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
        return Path(cache_dir) / f"folder-{name}-{stable_int(str(root)) % 16**8:08x}-{px}px.npz" if cache_dir else None

    files = scan_folder(root) if role is None else role_files(root, role, cache(FINGERPRINT_PX))

    def top_folder(rel: str) -> str | None:
        parts = Path(rel).parts
        return parts[0] if len(parts) > 1 else None

    return files_pool(name, root, files, top_folder, size, per_class, seed, cache(size))
