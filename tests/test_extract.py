"""ptmrec.extract on tiny models of every family, built and saved in tmp folders (no pipeline run)."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from ptmrec import extract as E
from ptmrec import zoo
from ptmrec.nets import FAMILIES, list_families
from ptmrec.params import ExtractParams

L = 8192


def _save(folder, family: str, seed: int = 0):
    arch = dict(variant="lite0", num_classes=3, image_size=32) if family == "efficientnet_lite" else \
        dict(width=8, num_classes=3, image_size=16)
    torch.manual_seed(seed)
    model = FAMILIES[family](**arch)
    cfg = dict(model_id=folder.name, family=family, arch=arch, source_task="synthetic", classes=["a", "b", "c"],
               image_size=arch["image_size"])
    zoo.save_model(folder, model, cfg)
    return model


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """One model per family (width 8, 3 classes), plus a second seed of simplecnn; (folder, {id: model})."""
    root = tmp_path_factory.mktemp("zoo")
    models = {f: _save(root / f, f) for f in list_families()}
    models["simplecnn-b"] = _save(root / "simplecnn-b", "simplecnn", seed=1)
    return root, models


def _index(root, ids):
    return pd.DataFrame({"model_id": ids, "path": ids, "loader": "folder"})


def test_registry():
    assert {"stats", "flat"} <= set(E.list_extractors())

    @E.register_extractor("zeros_for_test")
    def zeros(w, length):
        return np.zeros(length, np.float32)

    try:
        assert "zeros_for_test" in E.list_extractors()
        with pytest.raises(ValueError, match="already registered"):
            E.register_extractor("zeros_for_test")(lambda w, n: None)
    finally:
        del E.EXTRACTORS["zeros_for_test"]
    with pytest.raises(KeyError, match="stats"):
        E.get_extractor("nope")


@pytest.mark.parametrize("extractor", ["stats", "flat"])
def test_fixed_length_every_family(tiny_zoo, extractor):
    root, models = tiny_zoo
    vecs = {}
    for f in models:
        for length in (L, 1000):
            v = E.extract_file(root / f / "model.safetensors", extractor, length)
            assert v.shape == (length,) and v.dtype == np.float32 and np.isfinite(v).all(), f
        vecs[f] = v
    # different models give different vectors
    assert len({v.tobytes() for v in vecs.values()}) == len(vecs)


def test_deterministic_and_module_equals_file(tiny_zoo):
    root, models = tiny_zoo
    for f in ("resnet", "vit", "efficientnet_lite"):
        path = root / f / "model.safetensors"
        for ex in ("stats", "flat"):
            a, b = E.extract_file(path, ex), E.extract_file(path, ex)
            assert np.array_equal(a, b)
            assert np.array_equal(a, E.extract_state_dict(models[f].state_dict(), ex))


def test_natural_order_and_non_float_left_out(tiny_zoo):
    root, _ = tiny_zoo
    w = E.read_weights(root / "efficientnet_lite" / "model.safetensors")
    assert w.skipped > 0  # num_batches_tracked
    assert all("num_batches_tracked" not in n for n in w.names)
    assert sorted(["b.10.w", "b.2.w", "a.1"], key=E.natural_key) == ["a.1", "b.2.w", "b.10.w"]


def test_half_precision_file(tmp_path, tiny_zoo):
    _, models = tiny_zoo
    for dtype in (torch.float16, torch.bfloat16):
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in models["resnet"].state_dict().items()}
        save_file(sd, str(tmp_path / "m.safetensors"))
        assert np.array_equal(E.extract_file(tmp_path / "m.safetensors"), E.extract_state_dict(sd))


def test_flat_by_hand_in_natural_order():
    sd = {"b.10": torch.arange(4.0) + 20, "a.1": torch.arange(4.0), "b.2": torch.arange(4.0) + 10}
    # order a.1, b.2, b.10 (natural, not lexicographic); 12 entries at floor((i + 0.5) * 12 / 6) = 1, 3, 5, ...
    assert E.extract_state_dict(sd, "flat", 6).tolist() == [1, 3, 11, 13, 21, 23]


def test_stats_global_features_by_hand():
    sd = {"w": torch.tensor([[1.0, -1.0], [2.0, -2.0]]), "b": torch.tensor([3.0, 0.0, 0.0]), "n": torch.tensor(3)}
    v = E.extract_state_dict(sd, "stats", 8192)
    # 7 floats: one 2x2 matrix, one vector, one integer tensor left out; mean 3/7, rms sqrt(19/7), mean |w| 9/7
    expected = [np.log(7), np.log(2), np.log(2), np.log(2), 4 / 7, 3 / 7, np.sqrt(19 / 7), 9 / 7]
    np.testing.assert_allclose(v[8184:], expected, rtol=1e-6)


def test_any_module_state_dict():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    v = E.extract_state_dict(layer.state_dict(), "stats", 512)
    assert v.shape == (512,) and np.isfinite(v).all()
    with pytest.raises(ValueError, match="length"):
        E.extract_state_dict(layer.state_dict(), "stats", 16)


def test_resample_depth():
    for T in (1, 10, 100, 500):
        feats = np.stack([np.full(T, 3.0), np.linspace(0, 1, T)], 1)  # [T, 2]
        out = E.resample_depth(feats, 186)
        assert out.shape == (2, 186)
        assert np.allclose(out[0], 3.0)
        assert np.all(np.diff(out[1]) >= -1e-12)  # depth order kept
        if T > 1:
            assert out[1, 0] < 0.01 and out[1, -1] > 0.99
    assert np.array_equal(E.resample_depth(np.zeros((0, 3)), 5), np.zeros((3, 5)))


def test_bad_models_skipped(tmp_path, tiny_zoo):
    root, _ = tiny_zoo
    good = root / "simplecnn" / "model.safetensors"
    for name in ("good", "no_weights", "empty_tensor", "nan_tensor", "truncated", "ints_only"):
        (tmp_path / name).mkdir()
    shutil.copy(good, tmp_path / "good" / "model.safetensors")
    save_file({"w": torch.zeros(0, 3), "b": torch.ones(3)}, str(tmp_path / "empty_tensor" / "model.safetensors"))
    save_file({"w": torch.tensor([[1.0, float("nan")], [0.0, 1.0]])}, str(tmp_path / "nan_tensor" / "model.safetensors"))
    data = good.read_bytes()
    (tmp_path / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    save_file({"n": torch.tensor(3)}, str(tmp_path / "ints_only" / "model.safetensors"))
    ids = ["good", "no_weights", "empty_tensor", "nan_tensor", "truncated", "ints_only"]
    out = tmp_path / "vectors"
    got, skipped = E.extract_zoo(_index(tmp_path, ids), tmp_path, ExtractParams(), out, progress=False)
    assert got == ["good"]
    reasons = dict(skipped)
    assert "missing weights" in reasons["no_weights"]
    assert "zero-sized tensor w" in reasons["empty_tensor"]
    assert "tensor w has NaN or inf" in reasons["nan_tensor"]
    assert "truncated" in reasons["truncated"]
    assert "no floating-point tensors" in reasons["ints_only"]
    csv = pd.read_csv(out / "skipped.csv")
    assert list(csv.columns) == ["model_id", "reason"] and len(csv) == 5


def test_sharded_round_trip(tmp_path, tiny_zoo):
    root, models = tiny_zoo
    ids = sorted(models)
    out = tmp_path / "vectors"
    (out).mkdir()
    np.savez(out / "vectors-00009.npz", ids=np.array(["stale"]), vectors=np.zeros((1, 64), np.float32))
    got, skipped = E.extract_zoo(_index(root, ids), root, ExtractParams(length=1000, shard_size=2), out,
                                 progress=False)
    assert got == ids and skipped == []
    assert len(list(out.glob("vectors-*.npz"))) == (len(ids) + 1) // 2
    rid, V = E.load_vectors(out)
    assert list(rid) == ids and V.shape == (len(ids), 1000) and V.dtype == np.float32
    assert np.array_equal(V[ids.index("vit")], E.extract_file(root / "vit" / "model.safetensors", "stats", 1000))
    with pytest.raises(FileNotFoundError, match="no vectors"):
        E.load_vectors(tmp_path / "nothing")


def test_parts_resume_without_reading_weights_again(tmp_path, tiny_zoo):
    """A sharded stage 02: extract_parts writes each model's vector or skip reason once; extract_zoo then
    gathers them even when the weights are gone, and the result equals a direct extraction."""
    root, _ = tiny_zoo
    for name in ("simplecnn", "vit"):
        shutil.copytree(root / name, tmp_path / "zoo" / name)
    (tmp_path / "zoo" / "broken").mkdir()
    index = _index(tmp_path / "zoo", ["simplecnn", "vit", "broken"])
    direct, _ = E.extract_zoo(index, tmp_path / "zoo", ExtractParams(length=500), tmp_path / "direct", progress=False)
    assert E.extract_parts(index, tmp_path / "zoo", 500, tmp_path / "parts", ["stats"]) == 3
    assert E.extract_parts(index, tmp_path / "zoo", 500, tmp_path / "parts", ["stats"]) == 0  # all there: nothing read
    shutil.rmtree(tmp_path / "zoo")
    got, skipped = E.extract_zoo(index, tmp_path / "zoo", ExtractParams(length=500), tmp_path / "gathered",
                                 progress=False, parts=tmp_path / "parts" / "stats")
    assert got == direct == ["simplecnn", "vit"]
    assert [m for m, _ in skipped] == ["broken"] and "missing weights" in skipped[0][1]
    assert np.array_equal(E.load_vectors(tmp_path / "gathered")[1], E.load_vectors(tmp_path / "direct")[1])


def test_time_extraction_reports_rates_of_what_it_times(tiny_zoo, monkeypatch):
    """Extraction made to take 60 ms and loading 5 ms per model: at most 16.7 and 200 models per second
    (sleeps only overshoot), ratio about 1/12."""
    import time

    import safetensors.torch

    root, _ = tiny_zoo
    monkeypatch.setattr(E, "extract_file", lambda p, ex, n: time.sleep(0.06))
    monkeypatch.setattr(safetensors.torch, "load_file", lambda p: time.sleep(0.005))
    paths = [root / f / "model.safetensors" for f in ("resnet", "vit")]
    r = E.time_extraction(paths, repeats=2)
    assert r["models"] == 2
    assert 5 <= r["extract_models_per_s"] <= 16.7 and 25 <= r["load_models_per_s"] <= 200
    assert r["ratio"] == pytest.approx(r["extract_models_per_s"] / r["load_models_per_s"], abs=2e-3)
    assert r["ratio"] < 0.4


def test_time_extraction_runs_the_real_extractor(tiny_zoo):
    root, _ = tiny_zoo
    r = E.time_extraction([root / "resnet" / "model.safetensors"], repeats=1)
    assert r["models"] == 1 and r["ratio"] == pytest.approx(r["extract_models_per_s"] / r["load_models_per_s"],
                                                           rel=0.02, abs=1e-3)
