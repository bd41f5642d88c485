"""ptmrec.data: offline datasets in two disjoint roles, domains, target tasks, class-balanced batches."""
import hashlib
import logging
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ptmrec import data as D
from ptmrec import pools as pools_mod
from ptmrec import offline as O
from ptmrec.params import DataParams, TasksParams

SIZE = 32
GENERATED = ["glyph-letters", "glyph-digits", "glyph-fonts", "glyphs", "textures"]


def image_hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(x.tobytes()).hexdigest() for x in images}


def check_pool(pool: D.Pool, size: int, per_class: int | None = None) -> None:
    assert pool.images.dtype == np.uint8 and pool.images.shape[1:] == (size, size, 3)
    assert pool.labels.dtype == np.int64 and pool.labels.shape == (len(pool.images),)
    assert len(pool.classes) >= 2 and set(np.unique(pool.labels)) == set(range(len(pool.classes)))
    if per_class is not None:
        assert max(pool.class_counts().values()) <= per_class


@pytest.fixture(scope="module")
def clipart_dir(tmp_path_factory) -> Path:
    """A real subset of openclipart (about 200 small PNGs), one picture filed twice, for a fast clip-art test."""
    if not O.CLIPART_DIR.is_dir():
        pytest.skip("openclipart-png is not installed")
    root = tmp_path_factory.mktemp("openclipart")
    for folder, n in [("animals", 60), ("animals/birds", 48), ("food", 60), ("food/fruit", 60)]:
        files = sorted(p for p in (O.CLIPART_DIR / folder).glob("*.png") if p.stat().st_size < 60_000)[:n]
        (root / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, root / folder / f.name)
    dup = next((root / "animals" / "birds").glob("*.png"))
    shutil.copy(dup, root / "food" / dup.name)  # the same picture in two categories
    return root


# ----------------------------------------------------------------------------- datasets and roles

def test_registry_lists_offline_datasets():
    assert {"fmnist", "mnist", "digits", "clipart", "clipart-top", "textures", *GENERATED} <= set(D.list_datasets())
    with pytest.raises(KeyError, match="registered: .*fmnist"):
        D.load_pool("no-such-set", "target", SIZE)
    with pytest.raises(ValueError, match="role"):
        D.load_pool("digits", "train", SIZE)


@pytest.mark.parametrize("name, size", [("fmnist", 28), ("mnist", 28), ("digits", 8)])
def test_digit_like_sets_have_disjoint_roles(name, size):
    # at the native size nothing is resampled, so equal hashes would mean the same image
    source, target = D.load_pool(name, "source", size), D.load_pool(name, "target", size)
    check_pool(source, size), check_pool(target, size)
    assert source.classes == target.classes
    assert not image_hashes(source.images) & image_hashes(target.images)


@pytest.mark.parametrize("name", ["fmnist", "mnist", "digits", *GENERATED])
def test_pools_are_capped_and_deterministic(name):
    for role in D.ROLES:
        a = D.load_pool(name, role, SIZE, per_class=6, seed=1)
        check_pool(a, SIZE, per_class=6)
        b = D.load_pool(name, role, SIZE, per_class=6, seed=1)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, D.load_pool(name, role, SIZE, per_class=6, seed=2).images)


def test_fmnist_class_names_and_caps():
    pool = D.load_pool("fmnist", "target", 64, per_class=50)
    assert pool.classes[0] == "T-shirt/top" and pool.classes[-1] == "Ankle boot"
    assert set(pool.class_counts().values()) == {50}


def test_glyph_roles_use_disjoint_typefaces():
    source, target = O.glyph_fonts("source"), O.glyph_fonts("target")
    assert not {f.path for f in source} & {f.path for f in target}
    assert not {f.typeface for f in source} & {f.typeface for f in target}
    # glyph-fonts classes are the role's typefaces, so they differ between roles too
    s, t = (D.load_pool("glyph-fonts", r, SIZE, per_class=2) for r in D.ROLES)
    assert set(s.classes) == {f.typeface for f in source} and not set(s.classes) & set(t.classes)
    assert "b" in D.load_pool("glyphs", "target", SIZE, per_class=2).classes


def test_textures_roles_do_not_share_crops():
    s, t = (D.load_pool("textures", r, SIZE, per_class=20) for r in D.ROLES)
    assert s.classes == t.classes and len(s.classes) >= 10
    assert not image_hashes(s.images) & image_hashes(t.images)


def test_clipart_subset(clipart_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(O, "CLIPART_DIR", clipart_dir)
    monkeypatch.setattr(O, "MIN_FOLDER_CLASS", 5)
    params = DataParams(cache_dir=str(tmp_path / "cache"))
    pools = {(n, r): D.load_pool(n, r, SIZE, seed=0, data=params) for n in ("clipart", "clipart-top") for r in D.ROLES}
    for pool in pools.values():
        check_pool(pool, SIZE)
    assert set(pools["clipart-top", "source"].classes) == {"animals", "food"}
    assert set(pools["clipart", "source"].classes) <= {"animals", "animals/birds", "food", "food/fruit"}
    for n in ("clipart", "clipart-top"):  # no picture in both roles, the duplicated one included
        assert not image_hashes(pools[n, "source"].images) & image_hashes(pools[n, "target"].images)
    # every distinct picture once: duplicates (the copy made above, and some within openclipart) are dropped
    pictures = image_hashes(np.stack([pools_mod.decode_file(str(f), SIZE) for f in clipart_dir.rglob("*.png")]))
    assert sum(len(pools["clipart-top", r].images) for r in D.ROLES) == len(pictures) < 201
    assert (tmp_path / "cache" / f"openclipart-{SIZE}px.npz").is_file()
    again = D.load_pool("clipart", "target", SIZE, per_class=4, seed=0, data=params)  # from the cache
    check_pool(again, SIZE, per_class=4)


def test_missing_fmnist_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(O, "FMNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(D.DataMissingError, match="dataset-fashion-mnist"):
        D.load_pool("fmnist", "source", SIZE)


# ----------------------------------------------------------------------------- image folders, Hugging Face

def write_folder(root: Path) -> None:
    """Two classes of mixed image modes, one corrupt PNG and one text file."""
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(root / cls / f"rgb{i}.png")
            Image.fromarray(rng.integers(0, 255, (25, 25), np.uint8)).save(root / cls / f"grey{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (16, 16), np.uint8)).convert("P").save(root / cls / "palette.png")
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(root / "cats" / "clear.png")  # fully transparent
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "dogs" / "notes.txt").write_text("not an image")


def test_image_folder_skips_and_reports_bad_files(tmp_path, caplog):
    write_folder(tmp_path / "pets")
    with caplog.at_level(logging.WARNING, logger="ptmrec.data"):
        pool = pools_mod.load_image_folder(tmp_path / "pets", SIZE)
    check_pool(pool, SIZE)
    assert pool.classes == ["cats", "dogs"] and pool.class_counts() == {"cats": 14, "dogs": 13}
    assert sorted(Path(f).name for f, _ in pool.skipped) == ["broken.png", "notes.txt"]
    assert "broken.png" in caplog.text and "notes.txt" in caplog.text
    assert any((x == 255).all() for x in pool.images)  # the transparent image lies on white


def test_image_folder_roles_and_errors(tmp_path):
    write_folder(tmp_path / "pets")
    params = DataParams(image_folders={"pets": str(tmp_path / "pets")}, cache_dir=str(tmp_path / "cache"))
    s, t = (D.load_pool("pets", r, SIZE, data=params) for r in D.ROLES)
    assert len(s.images) + len(t.images) == 27 and not image_hashes(s.images) & image_hashes(t.images)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class subfolders"):
        pools_mod.load_image_folder(tmp_path / "flat", SIZE)
    with pytest.raises(FileNotFoundError, match="missing"):
        pools_mod.load_image_folder(tmp_path / "missing", SIZE)


class FakeHFDataset:
    """The few parts of a Hugging Face Dataset the loader uses."""

    def __init__(self, rows):
        self.rows = rows
        self.features = {"image": None, "label": types.SimpleNamespace(names=["red", "blue"])}

    def __getitem__(self, column):
        return [r[column] for r in self.rows]

    def select(self, idx):
        return FakeHFDataset([self.rows[i] for i in idx])


def test_hugging_face_loader(monkeypatch):
    rows = [{"image": Image.new("RGB", (12, 9), (200, 0, 0) if i % 2 == 0 else (0, 0, 200)), "label": i % 2}
            for i in range(80)]
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda hf_id, split: FakeHFDataset(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    params = DataParams(hf_datasets={"colours": "someone/colours"})
    s, t = (D.load_pool("colours", r, SIZE, per_class=10, data=params) for r in D.ROLES)
    for p in (s, t):
        check_pool(p, SIZE, per_class=10)
        assert p.classes == ["red", "blue"]
        assert (p.images[p.labels == 0][:, SIZE // 2, SIZE // 2] == [200, 0, 0]).all()
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(D.DataMissingError, match="pip install"):
        D.load_pool("colours", "target", SIZE, data=params)


# ----------------------------------------------------------------------------- domains

def test_domains_keep_shape_and_are_deterministic():
    x = D.load_pool("glyphs", "target", SIZE, per_class=2).images[:12]
    for domain in D.DOMAINS:
        y = D.apply_domain(x, domain, seed=3)
        assert y.shape == x.shape and y.dtype == np.uint8
        assert np.array_equal(y, D.apply_domain(x, domain, seed=3))
        assert (domain == "plain") == np.array_equal(y, x), domain
    assert np.array_equal(D.apply_domain(x, "inverted"), 255 - x)
    with pytest.raises(ValueError, match="valid"):
        D.apply_domain(x, "sepia")


# ----------------------------------------------------------------------------- tasks

@pytest.fixture(scope="module")
def pools():
    return {n: D.load_pool(n, "target", SIZE, per_class=60) for n in ("fmnist", "digits", "glyphs")}


def test_sample_tasks(pools):
    params = TasksParams(min_classes=2, max_classes=4, train_per_class=10, test_per_class=15, sizes={})
    counts = {"fmnist": 6, "digits": 3, "glyphs": 4}
    tasks = D.sample_tasks(pools, counts, params, seed=0)
    assert {d: sum(t.dataset == d for t in tasks) for d in counts} == counts
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert len({(t.dataset, tuple(t.pool_classes), t.domain) for t in tasks}) == len(tasks)
    assert {t.domain for t in tasks} - {"plain"} and sum(t.domain == "plain" for t in tasks) >= len(tasks) // 2
    for t in tasks:
        pool = pools[t.dataset]
        assert 2 <= len(t.classes) <= 4 and t.classes == [pool.classes[c] for c in t.pool_classes]
        assert not set(t.train_idx) & set(t.test_idx)
        for split, n in (("train", 10), ("test", 15)):
            x, y = D.task_arrays(pool, t, split)
            assert x.shape == (n * len(t.classes), SIZE, SIZE, 3) and x.dtype == np.uint8
            assert np.bincount(y).tolist() == [n] * len(t.classes)  # class-balanced, labels 0..k-1
    again = D.sample_tasks(pools, counts, params, seed=0)
    assert [t.task_id for t in again] == [t.task_id for t in tasks]
    assert all(np.array_equal(a.train_idx, b.train_idx) and np.array_equal(a.test_idx, b.test_idx)
               for a, b in zip(tasks, again))
    assert [t.task_id for t in D.sample_tasks(pools, counts, params, seed=1)] != [t.task_id for t in tasks]


def test_sample_tasks_names_a_pool_too_small(pools):
    params = TasksParams(train_per_class=50, test_per_class=30, sizes={})
    with pytest.raises(ValueError, match=r"digits: a task needs 2 classes with 80 images each.*0: 60"):
        D.sample_tasks(pools, {"digits": 1}, params, seed=0)


def test_save_and_load_tasks(pools, tmp_path):
    tasks = D.sample_tasks(pools, {"fmnist": 3, "glyphs": 2}, TasksParams(train_per_class=5, test_per_class=5, sizes={}), seed=0)
    D.save_tasks(tmp_path / "tasks", pools, tasks)
    assert sorted(p.name for p in (tmp_path / "tasks" / "pools").iterdir()) == ["fmnist.npz", "glyphs.npz"]
    header = (tmp_path / "tasks" / "index.csv").read_text().splitlines()[0]
    assert header == "task_id,dataset,domain,style,n_classes,classes,n_train,n_test,n_fresh"
    loaded_pools, loaded = D.load_tasks(tmp_path / "tasks")
    for a, b in zip(tasks, loaded):
        fields = ("task_id", "dataset", "domain", "style", "classes", "pool_classes")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
        for split in D.SPLITS:
            xa, ya = D.task_arrays(pools[a.dataset], a, split)
            xb, yb = D.task_arrays(loaded_pools[b.dataset], b, split)
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    (tmp_path / "tasks" / "pools" / "glyphs.npz").unlink()
    with pytest.raises(FileNotFoundError, match="glyphs.npz"):
        D.load_tasks(tmp_path / "tasks")
    (tmp_path / "tasks" / "splits.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="splits.npz"):
        D.load_tasks(tmp_path / "tasks")


# ----------------------------------------------------------------------------- class-balanced sampling

def test_class_balanced_sample():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = pools_mod.class_balanced_sample(labels, 5, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 5] and len(set(idx)) == len(idx)
    assert np.array_equal(idx, pools_mod.class_balanced_sample(labels, 5, seed=0))


def test_class_balanced_batch_sampler():
    import torch
    from torch.utils.data import DataLoader, Sampler, TensorDataset

    labels = np.repeat(np.arange(6), [30, 30, 30, 30, 30, 2])
    sampler = D.ClassBalancedBatchSampler(labels, n_classes=3, n_per_class=4, n_batches=20, seed=0)
    assert isinstance(sampler, Sampler) and len(sampler) == 20
    batches = list(sampler)
    for b in batches:
        counts = np.bincount(labels[b], minlength=6)
        assert sorted(counts[counts > 0].tolist()) == [4, 4, 4]
    assert batches != list(sampler)  # a new epoch draws new batches
    assert batches == list(D.ClassBalancedBatchSampler(labels, 3, 4, n_batches=20, seed=0))  # seeded
    loader = DataLoader(TensorDataset(torch.as_tensor(labels)), batch_sampler=sampler)
    assert all(len(y) == 12 for (y,) in loader)
    with pytest.raises(ValueError, match="7"):
        D.ClassBalancedBatchSampler(labels, n_classes=7, n_per_class=2)


def styled_pool(n_styles: int = 3, per: int = 30) -> D.Pool:
    """4 classes x n_styles styles x per images; pixel value = style index, so a task's style is visible."""
    labels, styles, images = [], [], []
    for c in range(4):
        for s in range(n_styles):
            labels += [c] * per
            styles += [f"vendor{s}"] * per
            images.append(np.full((per, 8, 8, 3), 40 * s, np.uint8))
    return D.Pool("emojiish", np.concatenate(images), np.array(labels), ["a", "b", "c", "d"], styles=np.array(styles))


def test_styled_tasks_keep_one_style_or_mix_them(tmp_path):
    pool = styled_pool()
    tasks = D.sample_tasks({"emojiish": pool}, {"emojiish": 6},
                           TasksParams(train_per_class=5, test_per_class=5, max_classes=3), seed=0)
    within = [t for t in tasks if t.style]
    mixed = [t for t in tasks if not t.style]
    assert len(within) == 3 and len(mixed) == 3
    for t in within:  # every image of every split is of the task's style
        idx = np.concatenate([t.train_idx, t.test_idx, t.fresh_idx])
        assert set(pool.styles[idx]) == {t.style} and t.style in t.task_id
    assert any(len(set(pool.styles[np.concatenate([t.train_idx, t.test_idx])])) > 1 for t in mixed)
    D.save_tasks(tmp_path, {"emojiish": pool}, tasks)
    loaded_pools, loaded = D.load_tasks(tmp_path)
    assert np.array_equal(loaded_pools["emojiish"].styles, pool.styles)
    assert [t.style for t in loaded] == [t.style for t in tasks]


def test_fresh_split_is_disjoint_and_class_balanced():
    pool = styled_pool(n_styles=1, per=18)  # 18 per class: 5 train + 5 test leave 8, of which 5 are taken fresh
    (task,) = D.sample_tasks({"emojiish": pool}, {"emojiish": 1}, TasksParams(train_per_class=5, test_per_class=5), 0)
    tr, te, fr = set(task.train_idx), set(task.test_idx), set(task.fresh_idx)
    assert len(fr) == 5 * len(task.classes) and not (fr & tr) and not (fr & te) and not (tr & te)
    _, y = D.task_arrays(pool, task, "fresh")
    assert np.bincount(y).tolist() == [5] * len(task.classes)
    small = styled_pool(n_styles=1, per=12)  # 2 left per class: a shorter fresh split, still balanced
    (task,) = D.sample_tasks({"emojiish": small}, {"emojiish": 1}, TasksParams(train_per_class=5, test_per_class=5), 0)
    assert np.bincount(D.task_arrays(small, task, "fresh")[1]).tolist() == [2] * len(task.classes)


def test_per_dataset_sizes_override_the_defaults():
    pool = styled_pool(n_styles=1, per=30)
    tp = TasksParams(train_per_class=5, test_per_class=5, sizes={"emojiish": [12, 4]})
    (task,) = D.sample_tasks({"emojiish": pool}, {"emojiish": 1}, tp, seed=0)
    assert len(task.train_idx) == 12 * len(task.classes) and len(task.test_idx) == 4 * len(task.classes)


def test_the_default_world_spans_sixteen_datasets_and_says_where_each_comes_from():
    """Every default target dataset names its package, licence and domain (the dataset table of stage 00 prints
    them), the world spans at least 16 datasets in 8 domains with 150 tasks, 6 per dataset, and no
    non-commercially licensed dataset is in it unless switched on."""
    tp = TasksParams()
    info = {n: D.dataset_info(n) for n in tp.datasets}
    missing = {n: [k for k in ("package", "licence", "domain") if not i[k]] for n, i in info.items()}
    assert not {n: m for n, m in missing.items() if m}, f"datasets without their provenance: {missing}"
    assert len(tp.datasets) >= 16 and len({i["domain"] for i in info.values()}) >= 8
    assert sum(tp.datasets.values()) >= 150 and min(tp.datasets.values()) >= 6
    assert all(i["commercial"] for i in info.values()) and D.dataset_info("solar-cells")["commercial"] is False
    assert set(tp.sizes) <= set(tp.datasets)  # a size for a dataset the world does not draw from is a typo


def test_font_order_does_not_depend_on_where_matplotlib_is_installed(tmp_path, monkeypatch):
    """matplotlib's copy of a font comes before the system's wherever the virtual environment lives: sorting every
    path together once put /work/.venv after /usr/share/fonts and /tmp/.venv before it (other glyphs on CI)."""
    import matplotlib

    for d in ("a-system", "z-venv/fonts/ttf"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "DejaVuSans.ttf").write_bytes(b"")
    monkeypatch.setattr(O, "FONT_DIRS", (tmp_path / "a-system",))
    monkeypatch.setattr(matplotlib, "get_data_path", lambda: str(tmp_path / "z-venv"))
    assert O._font_files(DataParams()) == [str(tmp_path / "z-venv/fonts/ttf/DejaVuSans.ttf"),
                                           str(tmp_path / "a-system/DejaVuSans.ttf")]


def test_one_duplicate_policy_for_every_registry():
    """The same definition again replaces itself (a cell run twice); another under a taken name fails, naming both."""
    from ptmrec import encoders, extract, nets, pipeline, report, train, transferability
    from ptmrec.registry import Registry

    reg = Registry("thing")

    def make():
        def thing():
            return 1
        return thing

    reg.register("a")(make())
    reg.register("a")(make())  # same module and qualified name: a re-run, replaced
    with pytest.raises(ValueError, match="thing 'a' is already registered by"):
        reg.register("a")(lambda: 2)
    assert reg.list("*") == ["a"] and reg.list("b*") == []
    with pytest.raises(KeyError, match="unknown thing 'b'; registered: a"):
        reg.get("b")
    from ptmrec import autoencoder, ranker  # noqa: F401  (importing a model's module registers its trainer)

    D.list_datasets()  # the loader modules register their datasets when first listed
    for r in (D.DATASETS, extract.EXTRACTORS, encoders.ENCODERS, nets.FAMILIES, transferability.SCORERS,
              train.TRAINERS, report.TABLES, pipeline.STAGES, pipeline.SHARDERS):
        assert isinstance(r, Registry) and len(r) > 0
    with pytest.raises(ValueError, match="already registered"):
        transferability.register_scorer("logme")(lambda f, y, logits=None: 0.0)
