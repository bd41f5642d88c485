"""The vector-art datasets of ptmrec.icons: roles, classes, styles, determinism, and bad input."""
import gzip
import hashlib
import json
import logging
import sys

import numpy as np
import pytest

from ptmrec import icons
from ptmrec.params import DataParams
from ptmrec.paths import REPO
from ptmrec.pools import DATASETS, DataMissingError

SIZE = 24
PER_CLASS = {"cards": 2}  # else 4: a few cards come from many decks, each parsed (seconds) before rendering


def _categories(package: str) -> set[str]:
    meta = json.loads((icons.node_modules() / package / "metadata.json").read_text())
    return set(meta["categories"])


# dataset -> (documented classes, documented styles); computed lazily (some need the installed data)
EXPECTED = {
    "emoji": (lambda: set(icons.EMOJI_CATEGORIES), lambda: set(icons.EMOJI_VENDORS)),
    "mdi-icons": (lambda: _categories("@iconify-json/mdi"), lambda: {"filled", "outline"}),
    "health-icons": (lambda: _categories("@iconify-json/healthicons"), lambda: set(icons.HEALTH_SUFFIXES.values())),
    "material-symbols": (lambda: _categories("@iconify-json/material-symbols"), lambda: icons.SYMBOL_STYLES),
    "icon-themes": (lambda: set(icons.THEME_CONTEXTS.values()), lambda: set(icons.ICON_THEMES)),
    "cards": (lambda: set(icons.CARD_RANKS), lambda: set(icons.card_decks())),
}


def _load(name, role, data, **kw):
    try:
        return DATASETS.get(name)(role, SIZE, data=data, **kw)
    except DataMissingError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return DataParams(cache_dir=str(tmp_path_factory.mktemp("icons-cache")))


def test_registered():
    from ptmrec.data import list_datasets  # imports torch: only here

    assert set(EXPECTED) <= set(list_datasets())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pools(name, data, monkeypatch):
    """Both roles at a small size: shapes, documented classes and styles, not blank, no shared picture,
    deterministic per seed. The pixel fingerprints of every picture (same_pictures: a minute of renders
    for all datasets) are left out here; test_same_picture_from_two_names_is_one_role tests them."""
    monkeypatch.setattr(icons, "same_pictures", lambda arts, cache: (arts, {a.item: a.item for a in arts}))
    per_class = PER_CLASS.get(name, 4)
    pools = {role: _load(name, role, data, per_class=per_class, seed=0) for role in ("source", "target")}
    classes, styles = (f() for f in EXPECTED[name])
    for role, p in pools.items():
        assert p.images.shape == (per_class * len(p.classes), SIZE, SIZE, 3) and p.images.dtype == np.uint8, role
        assert len(p.classes) >= 2 and set(p.classes) <= classes, (role, p.classes)
        assert set(p.class_counts().values()) == {per_class}, role
        assert p.styles is not None and set(p.style_names()) <= styles, (role, p.style_names())
        flat = p.images.reshape(len(p.images), -1)
        assert (flat.min(1) < 250).all() and (flat.std(1) > 2).all(), f"{role}: blank images"
    if name in ("emoji", "cards"):  # every category / rank has enough images in both roles
        assert set(pools["source"].classes) == set(pools["target"].classes) == classes
    hashes = [{hashlib.sha1(im.tobytes()).hexdigest() for im in p.images} for p in pools.values()]
    assert not hashes[0] & hashes[1], "a picture is in both roles"
    again = _load(name, "target", data, per_class=per_class, seed=0)
    assert np.array_equal(again.images, pools["target"].images) and np.array_equal(again.styles, pools["target"].styles)
    other = _load(name, "target", data, per_class=per_class, seed=1)
    assert not np.array_equal(other.images, pools["target"].images), "the seed changes nothing"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_role_split_by_item(name, tmp_path, monkeypatch):
    """Every picture of a dataset (rendering replaced by a stub): no source item and no picture (art key)
    is in both roles; cards are split by suit; enough target images for tasks."""
    seen = {}

    def stub(art, size):  # a distinct picture per art (no merges by same_pictures)
        if size == SIZE:  # not the FINGERPRINT_PX renders of both roles
            seen.setdefault(role, []).append(art)
        return np.resize(np.frombuffer(bytes.fromhex(art.key), np.uint8), (size, size, 3))

    monkeypatch.setattr(icons, "render_art", stub)
    counts = {}
    for role in ("source", "target"):
        counts[role] = _load(name, role, DataParams(cache_dir=str(tmp_path)), per_class=10**6).class_counts()
    source, target = seen["source"], seen["target"]
    assert not {a.item for a in source} & {a.item for a in target}
    assert not {a.key for a in source} & {a.key for a in target}
    assert len({a.key for a in source + target}) == len(source) + len(target)
    if name == "emoji":  # one emoji, several vendors, one role
        assert max(len({a.style for a in source if a.item == code}) for code in {a.item for a in source}) >= 4
    if name == "cards":
        assert {a.item.split("/")[0] for a in source} == set(icons.SOURCE_SUITS)
        assert {a.item.split("/")[0] for a in target} == set(icons.CARD_SUITS) - set(icons.SOURCE_SUITS)
    assert min(min(c.values()) for c in counts.values()) >= icons.MIN_CLASS
    assert sum(n >= 70 for n in counts["target"].values()) >= 3, counts["target"]  # tasks: ~40 train + 30 test


def test_package_json_lists_the_npm_packages():
    package = json.loads((REPO / "package.json").read_text())
    assert package["dependencies"] == icons.NPM_PACKAGES


@pytest.mark.parametrize("name, package", [("mdi-icons", "@iconify-json/mdi"), ("emoji", "emoji-datasource"),
                                           ("material-symbols", "@iconify-json/material-symbols")])
def test_missing_npm_package(name, package, tmp_path, monkeypatch):
    monkeypatch.setenv(icons.NODE_MODULES_ENV, str(tmp_path))
    with pytest.raises(DataMissingError) as err:
        DATASETS.get(name)("target", SIZE, per_class=2, data=DataParams(cache_dir=str(tmp_path)))
    msg = str(err.value)
    assert package in msg and "npm install --no-audit --no-fund" in msg and icons.NODE_MODULES_ENV in msg, msg


@pytest.mark.parametrize("attr, name, package", [("ICON_THEMES_DIR", "icon-themes", "adwaita-icon-theme"),
                                                 ("KDE_DECKS_DIR", "cards", "kdegames-card-data-kf5"),
                                                 ("GNOME_DECKS_DIR", "cards", "gnome-cards-data")])
def test_missing_debian_package(attr, name, package, tmp_path, monkeypatch):
    monkeypatch.setattr(icons, attr, tmp_path / "absent")
    if attr == "GNOME_DECKS_DIR":  # KDE decks present (or faked): the GNOME ones are what is missing
        monkeypatch.setattr(icons, "KDE_DECKS_DIR", tmp_path)
    with pytest.raises(DataMissingError) as err:
        DATASETS.get(name)("target", SIZE, per_class=2, data=DataParams(cache_dir=str(tmp_path)))
    assert f"apt-get install -y --no-install-recommends {package}" in str(err.value), str(err.value)


GOOD_SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><circle cx="5" cy="5" r="{r}" fill="#{c}"/></svg>'
BROKEN = {"truncated.svg": '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><circle cx="5"',
          "empty.svg": "", "nothing.svg": '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"></svg>',
          "garbage.png": "not a png"}


def test_icon_theme_skips_broken_files(tmp_path, monkeypatch, caplog):
    """A fake theme: broken SVG/PNG files are skipped and reported, the good ones load."""
    theme = tmp_path / "icons" / "fake"
    (theme / "48x48" / "apps").mkdir(parents=True)
    (theme / "scalable" / "places").mkdir(parents=True)
    (theme / "index.theme").write_text("[Icon Theme]\nName=Fake\nDirectories=48x48/apps,scalable/places\n\n"
                                       "[48x48/apps]\nSize=48\nContext=Applications\nType=Fixed\n\n"
                                       "[scalable/places]\nSize=48\nContext=Places\nType=Scalable\n")
    for i in range(8):
        for d, c in (("48x48/apps", "40"), ("scalable/places", "c0")):
            (theme / d / f"icon{i}-{d[-4:]}.svg").write_text(GOOD_SVG.format(r=1 + i / 2, c=f"{30 * i:02x}{c}80"))
    (theme / "scalable/places/copy.svg").write_text((theme / "48x48/apps/icon0-apps.svg").read_text())  # kept once
    for fn, text in BROKEN.items():
        (theme / "48x48" / "apps" / fn).write_text(text)
    monkeypatch.setattr(icons, "ICON_THEMES_DIR", tmp_path / "icons")
    monkeypatch.setattr(icons, "ICON_THEMES", {"fake": "fake-icon-theme"})
    monkeypatch.setattr(icons, "MIN_CLASS", 1)
    data = DataParams(cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="ptmrec.icons"):
        pools = [icons.load_icon_themes(role, SIZE, data=data) for role in ("source", "target")]
    skipped = {f.split("/")[-1]: why for p in pools for f, why in p.skipped}
    assert set(skipped) == set(BROKEN), skipped
    assert skipped["nothing.svg"] == "renders blank" and "Error" in skipped["truncated.svg"]
    assert sum(len(p.images) for p in pools) == 16 and "truncated.svg" in caplog.text
    again = icons.load_icon_themes("source", SIZE, data=data)  # failures are cached and reported again
    assert again.skipped == pools[0].skipped and np.array_equal(again.images, pools[0].images)


def test_iconify_skips_broken_bodies(tmp_path, monkeypatch):
    """A fake iconify set with broken icon bodies: they are skipped and named, the rest loads."""
    names = {f"good{i}": f'<circle cx="5" cy="5" r="{1 + i / 3}" fill="#{20 * i:02x}2040"/>' for i in range(12)}
    names.update({"broken-xml": '<circle cx="5"', "broken-empty": "<g></g>"})
    folder = tmp_path / "@iconify-json" / "mdi"
    folder.mkdir(parents=True)
    (folder / "icons.json").write_text(json.dumps({"prefix": "mdi", "width": 10, "height": 10,
                                                   "icons": {n: {"body": b} for n, b in names.items()}}))
    (folder / "metadata.json").write_text(json.dumps({"categories": {"A": sorted(names)[::2], "B": sorted(names)[1::2]}}))
    monkeypatch.setenv(icons.NODE_MODULES_ENV, str(tmp_path))
    monkeypatch.setattr(icons, "MIN_CLASS", 1)
    data = DataParams(cache_dir=str(tmp_path / "cache"))
    pools = [icons.load_mdi_icons(role, SIZE, data=data) for role in ("source", "target")]
    skipped = {f: why for p in pools for f, why in p.skipped}
    assert set(skipped) == {"@iconify-json/mdi:broken-xml", "@iconify-json/mdi:broken-empty"}, skipped
    assert sum(len(p.images) for p in pools) == 12


def _deck(cards: dict[str, str]) -> str:
    """A deck SVG: one <g id> per card, 12 a row (most of them outside the page, as in some real decks)."""
    groups = "".join(f'<g id="{cid}" transform="translate({30 * (i % 12)} {40 * (i // 12)})"><rect x="2" y="2" width="20" height="30" '
                     f'fill="{color}"/></g>' for i, (cid, color) in enumerate(cards.items()))
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 300 40" width="300" height="40">{groups}</svg>'


def test_cards_render_one_element_and_skip_broken_decks(tmp_path, monkeypatch, caplog):
    """A fake KDE deck renders each card cropped to its box (card 13 lies outside the page); a deck that
    is no valid SVGZ and a missing card id are skipped and reported."""
    kde, gnome = tmp_path / "kde", tmp_path / "gnome"
    (kde / "svg-fake").mkdir(parents=True)
    gnome.mkdir()
    colors = {"heart": "#ff0000", "diamond": "#ff0000", "spade": "#0000ff", "club": "#0000ff"}
    cards = {f"{rid}_{suit}": colors[suit] for suit in icons.CARD_SUITS for rid in icons._RANK_IDS[:12]}
    (kde / "svg-fake" / "fake.svgz").write_bytes(gzip.compress(_deck(cards).encode()))
    (gnome / "broken.svgz").write_bytes(gzip.compress(b"<svg xmlns='http://www.w3.org/2000/svg'><g id=")[:-5])
    monkeypatch.setattr(icons, "KDE_DECKS_DIR", kde)
    monkeypatch.setattr(icons, "GNOME_DECKS_DIR", gnome)
    monkeypatch.setattr(icons, "MIN_CLASS", 1)
    data = DataParams(cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="ptmrec.icons"):
        pool = icons.load_cards("source", SIZE, data=data)
    assert set(pool.classes) == set(icons.CARD_RANKS[:12]) and len(pool.images) == 24  # king: no such id
    assert set(pool.style_names()) == {"kde-fake"}
    reds = pool.images[:, SIZE // 2, SIZE // 2]  # cropped to the card: its centre is the card's colour
    assert {tuple(c) for c in reds} == {(255, 0, 0), (0, 0, 255)}
    assert (pool.images[:, 1, SIZE // 2] == pool.images[:, SIZE // 2, SIZE // 2]).all()  # fills the height
    bad = {f for f, _ in pool.skipped}
    assert f"{kde}/svg-fake/fake.svgz#king_heart" in bad and f"{gnome}/broken.svgz#heart_1" in bad
    assert len(pool.skipped) == 2 + 26 and "broken.svgz" in caplog.text


def test_missing_renderer(tmp_path, monkeypatch):
    """Without resvg-py, loading says what to install (instead of skipping every picture)."""
    folder = tmp_path / "@iconify-json" / "mdi"
    folder.mkdir(parents=True)
    (folder / "icons.json").write_text(json.dumps({"width": 10, "height": 10, "icons": {"a": {"body": "<g/>"}}}))
    (folder / "metadata.json").write_text(json.dumps({"categories": {"A": ["a"]}}))
    monkeypatch.setenv(icons.NODE_MODULES_ENV, str(tmp_path))
    monkeypatch.setattr(icons, "MIN_CLASS", 1)
    monkeypatch.setitem(sys.modules, "resvg_py", None)
    with pytest.raises(DataMissingError, match="pip install resvg-py"):
        icons.load_mdi_icons("source" if icons.is_source("a") else "target", SIZE,
                             data=DataParams(cache_dir=str(tmp_path / "cache")))


def test_same_picture_from_two_names_is_one_role(tmp_path, monkeypatch):
    """Two icons whose SVG differs but whose pixels do not (as mdi's alpha-o-box and numeric-0-box) are
    one picture: kept once, and the items that share it share a role, with their other variants."""
    same = ['<rect x="1" y="1" width="8" height="8" fill="#123456"/>',
            '<rect  width="8" height="8" x="1" y="1" fill="#123456" />']  # other text, same pixels
    outline = '<rect x="1" y="1" width="8" height="8" fill="none" stroke="#{}"/>'
    names = {f"icon{i}": f'<circle cx="5" cy="5" r="{1 + i / 4}" fill="#{15 * i:02x}2040"/>' for i in range(16)}
    names.update({"first-shape": same[0], "second-shape": same[1], "first-shape-outline": outline.format("aa0000"),
                  "second-shape-outline": outline.format("00aa00")})
    doc = {"width": 10, "height": 10, "icons": {n: {"body": b} for n, b in names.items()}}
    folder = tmp_path / "@iconify-json" / "mdi"
    folder.mkdir(parents=True)
    (folder / "icons.json").write_text(json.dumps(doc))
    (folder / "metadata.json").write_text(json.dumps({"categories": {"A": sorted(names)}}))
    monkeypatch.setenv(icons.NODE_MODULES_ENV, str(tmp_path))
    monkeypatch.setattr(icons, "MIN_CLASS", 1)
    data = DataParams(cache_dir=str(tmp_path / "cache"))
    pools = [icons.load_mdi_icons(role, SIZE, data=data) for role in ("source", "target")]
    assert sum(len(p.images) for p in pools) == 19  # 16 circles, one of the two squares, two outlines
    hashes = [{hashlib.sha1(im.tobytes()).hexdigest() for im in p.images} for p in pools]
    assert not hashes[0] & hashes[1]
    assert icons.is_source("first-shape") != icons.is_source("second-shape")  # the hash alone would split them
    outlines = [hashlib.sha1(icons.render_svg(icons.iconify_svg(doc, f"{n}-shape-outline"), size=SIZE).tobytes())
                .hexdigest() for n in ("first", "second")]
    assert [o in hashes[0] for o in outlines] in ([True, True], [False, False])  # one role for both items
