"""Tests of ptmrec.nets and ptmrec.zoo on small synthetic pools (no dependence on ptmrec.data)."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle

import numpy as np
import pytest
import torch

from ptmrec import zoo
from ptmrec.nets import FAMILIES, list_families, register_family
from ptmrec.params import ZooParams


@dataclasses.dataclass
class Pool:  # the fields of ptmrec.data.Pool that the zoo reads
    name: str
    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int64 [N]
    classes: list[str]


def synth_pool(name: str, k: int = 3, per_class: int = 16, size: int = 24, seed: int = 0) -> Pool:
    """Noise images with a class-coloured bright square at a class-dependent place."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per_class)
    images = rng.integers(0, 60, (len(labels), size, size, 3)).astype(np.uint8)
    for i, c in enumerate(labels):
        r = (5 * c) % (size - 6)
        images[i, r:r + 6, r:r + 6, c % 3] = 250
    return Pool(name, images, labels.astype(np.int64), [f"{name}{j}" for j in range(k)])


SCRATCH = {"simplecnn", "resnet", "mobilenet", "vit", "mlpmixer"}  # the tiny families trained from scratch


def arch(family: str) -> dict:
    return dict(variant="lite0", num_classes=5, image_size=64) if family == "efficientnet_lite" else \
        dict(width=8, num_classes=5, image_size=32)  # the pretrained backbone families ignore width


def config(model: torch.nn.Module, family: str, a: dict) -> dict:
    return dict(model_id=f"{family}-test", family=family, arch=a, source_task="synth",
                classes=[str(i) for i in range(a["num_classes"])], image_size=a["image_size"])


def test_registry_lists_all_families():
    assert {"simplecnn", "resnet", "mobilenet", "vit", "mlpmixer", "efficientnet_lite"} <= set(list_families())
    with pytest.raises(ValueError, match="already registered"):
        register_family("resnet")(lambda **kw: None)


@pytest.mark.parametrize("family", [f for f in list_families() if FAMILIES[f].__module__ != "ptmrec.backbones"])
def test_family_shapes_and_round_trip(family, tmp_path):  # the pretrained backbones: tests/test_backbones.py
    a = arch(family)
    torch.manual_seed(0)
    model = FAMILIES[family](**a).eval()
    x = torch.randn(2, 3, a["image_size"], a["image_size"])
    with torch.no_grad():
        f, y = model.forward_features(x), model(x)
    assert f.shape == (2, model.num_features) and y.shape == (2, 5)
    assert isinstance(model.head, torch.nn.Linear) and model.head.in_features == model.num_features
    if family in SCRATCH:
        assert 20_000 <= zoo.num_params(FAMILIES[family](width=16, num_classes=10)) <= 500_000

    zoo.save_model(tmp_path / "m", model, config(model, family, a))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folder left behind
    loaded, cfg = zoo.load_model(tmp_path / "m")
    assert cfg["num_features"] == model.num_features and cfg["ptmrec_format"] == 1
    assert cfg["num_params"] == zoo.num_params(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    emb = zoo.embed_images(loaded, images, a["image_size"], batch_size=2)
    assert emb.dtype == np.float32 and emb.shape == (3, model.num_features)
    with torch.no_grad():
        ref = model.forward_features(zoo.to_input(images, a["image_size"])).numpy()
    np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-4)
    assert zoo.logits_images(loaded, images, a["image_size"]).shape == (3, 5)


def test_lite_imagenet_classifies_the_cat():
    import skimage.data

    model = zoo.load_lite_imagenet("lite0")
    logits = zoo.logits_images(model, skimage.data.chelsea()[None], 224)  # [1, 1000]
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) in range(281, 286)  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert "cat" in zoo.imagenet_classes()[int(logits.argmax())]


def test_lite_weights_map_onto_timm():
    src = torch.load(zoo.lite_weights_path("lite0"), map_location="cpu", weights_only=True)
    dst = zoo.FAMILIES["efficientnet_lite"](num_classes=1000, variant="lite0").state_dict()
    assert len(src) == len(dst) == 296
    assert all(a.shape == b.shape for a, b in zip(src.values(), dst.values()))


def test_finetune_lite_fresh_head_frozen_stem():
    pool = synth_pool("p", k=3, per_class=6, size=32)
    model = zoo.load_lite_imagenet("lite0")
    stem, late = model.body.conv_stem.weight.clone(), model.body.blocks[6][0].conv_pw.weight.clone()
    m = zoo.finetune_lite(model, pool.images, pool.labels, 3, steps=2, image_size=32, seed=0, batch_size=4)
    assert model.head.out_features == 3 and m["steps"] == 2 and 0 <= m["source_accuracy"] <= 1
    assert torch.equal(model.body.conv_stem.weight, stem)  # frozen
    assert not torch.equal(model.body.blocks[6][0].conv_pw.weight, late)  # trained


def test_training_is_deterministic():
    pool = synth_pool("p", k=3, per_class=20)

    def train(seed):
        torch.manual_seed(seed)
        model = FAMILIES["resnet"](width=8, num_classes=3, image_size=32)
        metrics = zoo.train_source_model(model, pool.images, pool.labels, epochs=2, batch_size=16, lr=3e-3,
                                         seed=seed, image_size=32)
        return model.state_dict(), metrics

    (a, ma), (b, mb), (c, _) = train(0), train(0), train(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ma["source_accuracy"] == mb["source_accuracy"] and ma["final_loss"] == mb["final_loss"]
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert ma["n_val"] == 6 and ma["n_train"] == 54 and ma["steps"] == 2 * (54 // 16)


def _save_two(tmp_path):
    for fam in ("simplecnn", "resnet"):
        a = arch(fam)
        zoo.save_model(tmp_path / fam, FAMILIES[fam](**a), config(None, fam, a))
    return tmp_path / "resnet" / "model.safetensors"


def test_truncated_weights_raise_and_scan_skips(tmp_path):
    weights = _save_two(tmp_path)
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(zoo.ZooError, match="model.safetensors") as e:
        zoo.load_model(tmp_path / "resnet")
    assert str(weights) in str(e.value) and "truncated" in str(e.value)
    (tmp_path / "empty").mkdir()
    index, skipped = zoo.scan_zoo(tmp_path)
    assert list(index.model_id) == ["simplecnn-test"]
    assert [s[0] for s in skipped] == ["empty", "resnet"]
    assert "config.json" in skipped[0][1] and "truncated" in skipped[1][1]


def test_bad_configs_name_the_file_and_problem(tmp_path):
    _save_two(tmp_path)
    with pytest.raises(zoo.ZooError, match="missing config.json"):
        zoo.load_model(tmp_path / "nothing")
    cfg_path = tmp_path / "resnet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(dict(cfg, family="alexnet")))
    with pytest.raises(zoo.ZooError, match="unknown family 'alexnet'; valid: .*efficientnet_lite, .*mlpmixer"):
        zoo.load_model(tmp_path / "resnet")
    cfg_path.write_text(json.dumps(dict(cfg, arch=dict(cfg["arch"], width=16))))
    with pytest.raises(zoo.ZooError, match="shape mismatch") as e:
        zoo.load_model(tmp_path / "resnet")
    assert str(tmp_path / "resnet" / "model.safetensors") in str(e.value)


def test_load_never_unpickles(tmp_path, monkeypatch):
    _save_two(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:  # a pickle that would create ``marker`` if anything unpickled it
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("pytorch_model.bin", "model.pt", "model.pkl"):
        (tmp_path / "resnet" / name).write_bytes(pickle.dumps(Evil()))

    def refuse(*a, **k):
        raise AssertionError("load_model unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model, cfg = zoo.load_model(tmp_path / "resnet")
    assert cfg["family"] == "resnet" and not marker.exists()


def test_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    a = arch("simplecnn")
    zoo.save_model(tmp_path / "m", FAMILIES["simplecnn"](**a), config(None, "simplecnn", a))
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def killed(*args, **kw):
        raise KeyboardInterrupt  # the run dies while writing the weights

    monkeypatch.setattr(safetensors.torch, "save_file", killed)
    for target in ("m", "new"):
        with pytest.raises(KeyboardInterrupt):
            zoo.save_model(tmp_path / target, FAMILIES["simplecnn"](**a), config(None, "simplecnn", a))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no half folder, the old one intact
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before


def test_build_zoo_writes_index_and_resumes(tmp_path):
    pools = {"s1": synth_pool("s1", k=2, per_class=12), "s2": synth_pool("s2", k=3, per_class=10, seed=1)}
    zp = ZooParams(families=["simplecnn", "mlpmixer"], sources=["s1", "s2"], widths=[8], epochs=1, batch_size=8,
                   lite_variants=[], lite_finetune={}, backbones=[], finetune={})
    seen = []
    df = zoo.build_zoo(zp, pools, tmp_path, seed=0, progress=lambda it: (seen.append(1) or x for x in it))
    assert len(seen) == 4 and sorted(df.attrs["built"]) == sorted(df.model_id)
    assert list(df.columns) == zoo.INDEX_COLUMNS
    assert list(df.model_id) == ["simplecnn-w8-s1", "mlpmixer-w8-s1", "simplecnn-w8-s2", "mlpmixer-w8-s2"]
    import pandas as pd

    on_disk = pd.read_csv(tmp_path / "index.csv")
    assert list(on_disk.model_id) == list(df.model_id) and (on_disk.loader == "folder").all()
    assert on_disk.source_accuracy.between(0, 1).all() and (on_disk.width == 8).all()
    model, cfg = zoo.load_model(tmp_path / df.path[2])
    assert cfg["classes"] == pools["s2"].classes and model.head.out_features == 3

    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/model.safetensors")}
    again = zoo.build_zoo(zp, pools, tmp_path, seed=0)
    assert again.attrs["built"] == [] and len(again.attrs["reused"]) == 4
    assert mtimes == {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/model.safetensors")}
    pd.testing.assert_frame_equal(again, df)

    # a killed or corrupted model is rebuilt, and only that one
    with open(tmp_path / "mlpmixer-w8-s1" / "model.safetensors", "r+b") as f:
        f.truncate(100)
    third = zoo.build_zoo(zp, pools, tmp_path, seed=0)
    assert third.attrs["built"] == ["mlpmixer-w8-s1"]
    assert third.source_accuracy.tolist() == df.source_accuracy.tolist()  # same seed, same model


def test_build_zoo_checks_before_work(tmp_path):
    pools = {"s1": synth_pool("s1")}
    with pytest.raises(zoo.ZooError, match="unknown family 'alexnet'; valid: "):
        zoo.build_zoo(ZooParams(families=["alexnet"], sources=["s1"]), pools, tmp_path, seed=0)
    with pytest.raises(zoo.ZooError, match="no pool for source task 'fmnist'.*pools given: s1"):
        zoo.build_zoo(ZooParams(families=["resnet"], sources=["s1"], lite_variants=[]), pools, tmp_path, seed=0)
    assert not any(tmp_path.iterdir())


def test_hf_models_get_the_zoo_face(tmp_path):
    """The hub path, offline: a tiny random ViT saved in Hugging Face layout, loaded through ``hf:<path>``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {0: "a", 1: "b", 2: "c"}
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit", safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    model, c = zoo.load_model(f"hf:{tmp_path / 'vit'}")
    assert c["loader"] == "hf" and c["classes"] == ["a", "b", "c"] and c["image_size"] == 32
    assert c["num_features"] == model.num_features == 32
    images = np.random.default_rng(0).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    feats, logits = zoo.embed_images(model, images, 32), zoo.logits_images(model, images, 32)
    assert feats.shape == (4, 32) and logits.shape == (4, 3)
    head = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()
    np.testing.assert_allclose(feats @ head[0].T + head[1], logits, rtol=1e-4, atol=1e-4)  # head(features) = logits


def test_build_zoo_rebuilds_what_changed(tmp_path):
    pools = {"s1": synth_pool("s1", k=2, per_class=12)}
    zp = ZooParams(families=["resnet"], sources=["s1"], widths=[8], epochs=1, batch_size=8, lite_variants=[],
                   lite_finetune={}, backbones=[], finetune={})
    zoo.build_zoo(zp, pools, tmp_path, seed=0)
    assert zoo.build_zoo(zp, pools, tmp_path, seed=0).attrs["built"] == []
    assert zoo.build_zoo(dataclasses.replace(zp, epochs=2), pools, tmp_path, seed=0).attrs["built"] == ["resnet-w8-s1"]
    pools["s1"].images[0, 0, 0, 0] ^= 1  # one pixel of the source data changed
    assert zoo.build_zoo(dataclasses.replace(zp, epochs=2), pools, tmp_path, seed=0).attrs["built"] == ["resnet-w8-s1"]


def test_batch_indices_cover_each_epoch_once_and_drop_the_ragged_tail():
    from ptmrec.zoo import batch_indices

    it = batch_indices(10, 4, np.random.default_rng(0))
    epoch = [next(it) for _ in range(2)]  # 8 of 10: the ragged tail of 2 is dropped
    flat = np.concatenate(epoch)
    assert all(len(b) == 4 for b in epoch) and len(set(flat.tolist())) == 8
    nxt = next(it)  # a fresh permutation starts the next epoch
    assert len(set(nxt.tolist())) == 4


def test_zoo_shards_build_what_one_process_builds(tmp_path):
    """Stage 00's shard processes: two shards build every model once, bit for bit as one process does, and only
    the full build writes index.csv."""
    pools = {"s1": synth_pool("s1", k=2, per_class=12), "s2": synth_pool("s2", k=3, per_class=10, seed=1)}
    zp = ZooParams(families=["simplecnn", "mlpmixer"], sources=["s1", "s2"], widths=[8], epochs=1, batch_size=8,
                   lite_variants=[], lite_finetune={}, backbones=[], finetune={})
    whole = zoo.build_zoo(zp, pools, tmp_path / "one", seed=0)
    built = [zoo.build_zoo(zp, pools, tmp_path / "two", seed=0, shard=(i, 2)).attrs["built"] for i in range(2)]
    assert sorted(built[0] + built[1]) == sorted(whole.model_id) and not set(built[0]) & set(built[1])
    assert not (tmp_path / "two" / "index.csv").exists()
    merged = zoo.build_zoo(zp, pools, tmp_path / "two", seed=0)  # the notebook after its shards: nothing left to do
    assert merged.attrs["built"] == []
    from safetensors.torch import load_file

    for p in whole.path:
        a, b = (load_file(tmp_path / d / p / "model.safetensors") for d in ("one", "two"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), p


def test_backbones_embed_in_channels_last_as_in_the_default_layout_and_stay_contiguous():
    # the pretrained backbones run NHWC for speed: a layout mix-up would scramble the features, and weights left
    # in channels_last would change what stage 02 reads from them
    m = FAMILIES["efficientnet_lite"](variant="lite0", num_classes=3, image_size=32).eval()
    assert zoo.memory_format(m) == torch.channels_last
    assert zoo.memory_format(FAMILIES["resnet"](width=8, num_classes=3, image_size=32)) == torch.contiguous_format
    x = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    with torch.inference_mode():
        ref = m.forward_features(zoo.to_input(x, 32)).numpy()  # [6, D], default layout
    got = zoo.embed_images(m, x, 32)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert all(p.is_contiguous() for p in m.parameters())
