"""ptmrec.encoders and ptmrec.tokens: open_clip encoders, the embedded CLIP-like model's towers, dataset tokens, similarity.

Most tests use a tiny open_clip config with random weights, so the real open_clip code path runs in seconds.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ptmrec import encoders as E
from ptmrec import tokens as TK
from ptmrec import offline as O
from ptmrec import serve as S
from ptmrec.data import Task
from ptmrec.pools import Pool
from ptmrec.params import EncoderParams, TokensParams

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_NAME = "ptmrec-test-tiny"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[E.ClipImageEncoder, Path]:
    """A tiny open_clip ViT with random weights, built through open_clip's registry and factory."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny")
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(folder / f"{TINY_NAME}.json")
    torch.manual_seed(0)
    enc = E.build_encoder(EncoderParams(name="open_clip", open_clip_model=TINY_NAME, batch_size=4), "cpu", folder)
    return enc, folder


def rgb(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def synthetic(n_classes: int = 3, per_class: int = 10, short: dict[int, int] | None = None, size: int = 24):
    """A pool whose classes differ in colour and two tasks on it; ``short`` caps some classes' train images."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(n_classes), per_class)
    images = np.clip(rng.normal(60 + 60 * labels[:, None, None, None], 20, (len(labels), size, size, 3)), 0, 255)
    pool = Pool("synth", images.astype(np.uint8), labels.astype(np.int64), [f"class{c}" for c in range(n_classes)])
    short = short or {}
    train = np.concatenate([np.flatnonzero(labels == c)[: short.get(c, per_class // 2)] for c in range(n_classes)])
    test = np.concatenate([np.flatnonzero(labels == c)[per_class // 2:] for c in range(n_classes)])
    tasks = [Task("synth-plain-a", "synth", "plain", pool.classes, list(range(n_classes)), train, test),
             Task("synth-inverted-b", "synth", "inverted", pool.classes[:2], [0, 1],
                  train[labels[train] < 2], test[labels[test] < 2])]
    return {"synth": pool}, tasks


# ----------------------------------------------------------------------------- encoders


def test_registry_lists_and_names_encoders(tmp_path):
    assert {"open_clip", "embedded"} <= set(E.list_encoders())
    with pytest.raises(KeyError, match="registered: embedded, open_clip"):
        E.build_encoder(EncoderParams(name="nope"), "cpu", tmp_path)
    with pytest.raises(ValueError, match="open_clip_model"):
        E.build_encoder(EncoderParams(name="open_clip"), "cpu", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        E.build_encoder(EncoderParams(name="open_clip", open_clip_model="RN50", checkpoint=str(tmp_path / "missing.safetensors")))
    with pytest.raises(ValueError, match="image_size 32 is too small"):
        E.build_encoder(EncoderParams(name="embedded", image_size=32), "cpu", tmp_path)

    @E.register_encoder("test-fake")
    def fake(params, device, cache_dir):
        return ("built", params.batch_size, device)

    try:
        assert "test-fake" in E.list_encoders()
        assert E.build_encoder(EncoderParams(name="test-fake", batch_size=7), "cpu", tmp_path) == ("built", 7, "cpu")
    finally:
        del E.ENCODERS["test-fake"]


def test_encode_is_unit_norm_and_batch_invariant(tiny):
    enc, _ = tiny
    assert enc.dim == 16 and enc.image_size == 32
    for size in (32, 20, 48):  # as is, upsampled, downsampled
        x = rgb(10, size)
        a = enc.encode(x)
        assert a.dtype == np.float32 and a.shape == (10, 16)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
        enc.batch_size = 64
        b = enc.encode(x)
        enc.batch_size = 4
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert enc.encode(rgb(0, 32)).shape == (0, 16)
    t = enc.encode_text(["a photo of a cat", "a dog", "x"])
    assert t.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(rgb(2, 32).astype(np.float32))


def test_preprocess_matches_open_clips_own_transform(tiny):
    import open_clip

    enc, _ = tiny
    _, _, val = open_clip.create_model_and_transforms(TINY_NAME)
    x = rgb(3, 32)
    want = torch.stack([val(Image.fromarray(img)) for img in x])
    np.testing.assert_allclose(enc.preprocess(x).numpy(), want.numpy(), atol=1e-5)


def test_checkpoint_round_trip_through_open_clip(tiny, tmp_path):
    from safetensors.torch import save_file

    enc, folder = tiny
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, path)
    torch.manual_seed(123)  # another random init: only the checkpoint can make the features equal
    again = E.build_encoder(EncoderParams(name="open_clip", open_clip_model=TINY_NAME, checkpoint=str(path)), "cpu", folder)
    x = rgb(5, 32, seed=3)
    np.testing.assert_allclose(again.encode(x), enc.encode(x), atol=1e-6)
    np.testing.assert_allclose(again.encode_text(["a cat"]), enc.encode_text(["a cat"]), atol=1e-6)
    assert E.unaligned(enc) is None  # only the embedded model has an unaligned baseline


def test_embedded_config_builds_with_the_real_towers(tmp_path):
    """The embedded model config: timm Lite0 + the MiniLM folder, Lite0's packaged weights mapped onto timm."""
    import open_clip
    from safetensors.torch import load_file

    from ptmrec.zoo import load_lite_imagenet

    cfg = E.embedded_model_config(EncoderParams())
    (tmp_path / "ptmrec-test-embedded.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "ptmrec-test-embedded.json")
    with E._quiet():
        model = open_clip.create_model("ptmrec-test-embedded")
        tokenizer = open_clip.get_tokenizer("ptmrec-test-embedded")
    assert type(model).__name__ == "CustomTextCLIP"
    assert str(model.visual.trunk.load_state_dict(load_lite_imagenet("lite0").body.state_dict(), strict=True)) == \
        "<All keys matched successfully>"
    minilm = load_file(E.minilm_folder() / "model.safetensors")
    key = next(k for k in minilm if k.endswith("word_embeddings.weight"))
    torch.testing.assert_close(model.text.transformer.embeddings.word_embeddings.weight, minilm[key])
    from open_clip.factory import set_model_preprocess_cfg

    set_model_preprocess_cfg(model, {**model.visual.preprocess_cfg, **E.EMBEDDED_PREPROCESS, "size": (64, 64)})
    enc = E.ClipImageEncoder(model, tokenizer, "embedded")
    assert enc.dim == 256 and enc.encode(rgb(2, 64)).shape == (2, 256)
    # trimming padding columns (the HF tower's fast path) changes nothing
    with torch.inference_mode():
        full = torch.nn.functional.normalize(model.encode_text(tokenizer(["a photo of a cat", "x"])), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_text(["a photo of a cat", "x"]), full, atol=1e-5)
    # the Lite0 trunk sees (u - 127) / 128, as the packaged weights expect
    np.testing.assert_allclose(enc.preprocess(np.full((1, 64, 64, 3), 255, np.uint8)).numpy(), 1.0, atol=1e-6)


def test_info_nce_and_retrieval_recall():
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert E.info_nce(z, z, torch.tensor(np.log(100.0))) < 0.1
    assert abs(E.info_nce(z, torch.nn.functional.normalize(torch.randn(8, 16), dim=-1), torch.tensor(0.0)) - np.log(8)) < 0.5
    r = E.retrieval_recall(z.numpy(), z.numpy(), ks=(1, 3))
    assert r == {"i2t@1": 1.0, "t2i@1": 1.0, "i2t@3": 1.0, "t2i@3": 1.0}
    zero = np.zeros((8, 16), np.float32)  # all tied: ties count as misses
    assert E.retrieval_recall(zero, zero, ks=(1,))["i2t@1"] == 0.0


def test_class_text_spells_names_out():
    assert E.class_text("clipart", "animals/mammals") == "mammals"
    assert E.class_text("fmnist", "T-shirt/top") == "T-shirt or top"
    assert E.class_text("mnist", "7") == "the number 7"
    assert E.class_text("glyphs", "k") == "the letter k"
    assert E.class_text("glyphs", "τ") == "the greek letter tau"
    assert E.class_text("textures", "hubble_deep_field") == "hubble deep field"


# ----------------------------------------------------------------------------- dataset tokens


def test_tokens_per_image_and_prototypes_round_trip(tiny, tmp_path):
    enc, _ = tiny
    pools, tasks = synthetic()
    index, short = TK.extract_dataset_tokens(pools, tasks, enc, TokensParams(per_class=4, shard_size=1), tmp_path / "img")
    assert list(index.n_tokens) == [12, 8] and len(short) == 0
    assert sorted(p.name for p in (tmp_path / "img").glob("tokens-*.npz")) == ["tokens-000.npz", "tokens-001.npz"]
    ds = TK.DatasetTokenDataset(tmp_path / "img")
    assert len(ds) == 2 and ds[0]["task_id"] == "synth-plain-a"
    assert ds[0]["tokens"].dtype == torch.float32 and ds[0]["tokens"].shape == (12, 16)
    assert ds[0]["labels"].dtype == torch.int64 and ds[0]["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert TK.DatasetTokenDataset(tmp_path / "img", ["synth-inverted-b"])[0]["tokens"].shape == (8, 16)
    with pytest.raises(KeyError, match="no-such-task"):
        TK.DatasetTokenDataset(tmp_path / "img", ["no-such-task"])
    shards = TK.read_token_shards(tmp_path / "img")
    assert set(shards["synth-plain-a"]["splits"]) == {"train"}

    TK.extract_dataset_tokens(pools, tasks, enc, TokensParams(per_class=4, kind="prototypes"), tmp_path / "proto")
    proto = TK.DatasetTokenDataset(tmp_path / "proto")[0]
    assert proto["tokens"].shape == (3, 16) and proto["labels"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(proto["tokens"].norm(dim=1).numpy(), 1, atol=1e-5)
    # a prototype is the normalised mean of its class's image tokens
    m = ds[0]["tokens"][:4].mean(0)
    np.testing.assert_allclose(proto["tokens"][0].numpy(), (m / m.norm()).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="tokens.kind"):
        TK.extract_dataset_tokens(pools, tasks, enc, TokensParams(kind="mean"), tmp_path / "bad")


def test_class_with_fewer_images_is_taken_whole_and_reported(tiny, tmp_path):
    enc, _ = tiny
    pools, tasks = synthetic(short={1: 2})
    index, short = TK.extract_dataset_tokens(pools, tasks[:1], enc, TokensParams(per_class=4), tmp_path)
    assert index.n_tokens.tolist() == [10] and index.short_classes.tolist() == [1]
    assert short.to_dict(orient="records") == [dict(task_id="synth-plain-a", cls="class1", have=2, wanted=4)]
    assert np.bincount(TK.read_token_shards(tmp_path)["synth-plain-a"]["labels"]).tolist() == [4, 2, 4]


def test_shards_rewrite_and_bad_shards_are_named(tiny, tmp_path):
    enc, _ = tiny
    pools, tasks = synthetic()
    TK.extract_dataset_tokens(pools, tasks, enc, TokensParams(per_class=3, shard_size=1), tmp_path)
    first = TK.load_dataset_tokens(tmp_path)
    TK.extract_dataset_tokens(pools, tasks, enc, TokensParams(per_class=3, shard_size=8), tmp_path)
    assert [p.name for p in tmp_path.glob("tokens-*.npz")] == ["tokens-000.npz"]  # the stale shard is gone
    again = TK.load_dataset_tokens(tmp_path)
    assert list(again) == list(first)
    for k in first:
        np.testing.assert_allclose(again[k], first[k], atol=1e-6)
    (tmp_path / "tokens-001.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="tokens-001.npz"):
        TK.load_dataset_tokens(tmp_path)
    (tmp_path / "tokens-001.npz").unlink()
    import shutil

    shutil.copy(tmp_path / "tokens-000.npz", tmp_path / "tokens-002.npz")
    with pytest.raises(ValueError, match="also in an earlier shard"):
        TK.load_dataset_tokens(tmp_path)
    with pytest.raises(FileNotFoundError, match="run stage 04"):
        TK.load_dataset_tokens(tmp_path / "empty")


def _png(path: Path, mode: str, size: int = 20, seed: int = 0) -> None:
    a = np.random.default_rng(seed).integers(0, 256, (size, size, 4), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a if mode == "RGBA" else a[..., :3]).convert(mode).save(path)


def test_folder_tokens_skip_unreadable_and_mix_modes(tiny, tmp_path):
    enc, _ = tiny
    for i, mode in enumerate(["RGB", "RGB", "L", "RGBA", "P"]):
        _png(tmp_path / "cats" / f"{i}.png", mode, seed=i)
    (tmp_path / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _png(tmp_path / "dogs" / "a.png", "L", seed=7)
    _png(tmp_path / "dogs" / "b.png", "RGBA", seed=8)
    tokens, labels, classes, skipped = TK.folder_tokens(tmp_path, enc, per_class=4, kind="images", seed=0)
    assert classes == ["cats", "dogs"]
    assert tokens.shape == (6, 16) and np.bincount(labels).tolist() == [4, 2]  # dogs has fewer: all taken
    np.testing.assert_allclose(np.linalg.norm(tokens, axis=1), 1, atol=1e-5)
    assert any(Path(f).name == "broken.png" for f, _ in skipped)
    protos, plabels, _, _ = TK.folder_tokens(tmp_path, enc, per_class=4, kind="prototypes", seed=0)
    assert protos.shape == (2, 16) and plabels.tolist() == [0, 1]


def test_folder_tokens_errors_name_the_folder(tiny, tmp_path):
    enc, _ = tiny
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TK.folder_tokens(tmp_path / "nowhere", enc, 4)
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "x.png", "RGB")
    with pytest.raises(ValueError, match=r"flat has no class subfolders"):
        TK.folder_tokens(tmp_path / "flat", enc, 4)
    _png(tmp_path / "one" / "cats" / "x.png", "RGB")
    with pytest.raises(ValueError, match=r"one has one class only \(cats\)"):
        TK.folder_tokens(tmp_path / "one", enc, 4)
    _png(tmp_path / "two" / "cats" / "x.png", "RGB")
    (tmp_path / "two" / "dogs").mkdir(parents=True)
    (tmp_path / "two" / "dogs" / "bad.jpg").write_bytes(b"no image")
    with pytest.raises(ValueError, match=r"two: class folder\(s\) dogs hold no readable image .*bad.jpg"):
        TK.folder_tokens(tmp_path / "two", enc, 4)


def test_similarity_is_symmetric_with_unit_diagonal():
    rng = np.random.default_rng(0)
    toks = {f"t{i}": rng.normal(i % 2, 1, (5 + i, 8)).astype(np.float32) for i in range(5)}
    for center in (True, False):
        sim = TK.dataset_similarity(toks, center=center)
        assert list(sim.index) == list(sim.columns) == list(toks)
        np.testing.assert_allclose(sim.values, sim.values.T, atol=1e-12)
        np.testing.assert_allclose(np.diag(sim.values), 1.0)
        assert (sim.values <= 1).all() and (sim.values >= -1).all()
    sim = TK.dataset_similarity(toks)
    assert sim.loc["t0", "t2"] > sim.loc["t0", "t1"]  # tasks drawn alike are more similar


def test_source_tokens_from_images_and_imagenet_names(tiny, tmp_path):
    enc, _ = tiny
    pools, _ = synthetic()
    rows = TK.extract_source_tokens(pools, ["synth", "imagenet", "elsewhere"], enc, TokensParams(per_class=4), tmp_path)
    assert rows.set_index("source_id").source.to_dict() == {"synth": "images", "imagenet": "text",
                                                           "elsewhere": "skipped: no images or class names"}
    toks = TK.load_source_tokens(tmp_path)
    assert toks["synth"].shape == (12, 16) and toks["imagenet"].shape == (1000, 16)


def test_token_speed_reports_both_rates(tiny):
    enc, _ = tiny
    pools, tasks = synthetic()
    s = TK.token_speed(pools, tasks, enc, TokensParams(per_class=4), repeats=1)
    assert s["images"] == 20 and s["extraction_images_per_s"] > 0 and s["forward_images_per_s"] > 0
    assert s["ratio"] == pytest.approx(s["extraction_images_per_s"] / s["forward_images_per_s"], rel=0.01)


# ----------------------------------------------------------------------------- clip-art text


def test_svg_text_is_parsed_and_cleaned():
    svg = b"""<svg><metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>Bored dog</dc:title>
      <dc:description>HASH(0x862bbb8)</dc:description><dc:subject><rdf:Bag><rdf:li>mammal</rdf:li><rdf:li></rdf:li>
      <rdf:li>hash</rdf:li><rdf:li>signs_and_symbols</rdf:li><rdf:li>mammal</rdf:li></rdf:Bag></dc:subject>
      <dc:creator><cc:Agent><dc:title>Some Artist</dc:title></cc:Agent></dc:creator></cc:Work></rdf:RDF></metadata></svg>"""
    t = O._svg_text(svg)
    assert t.title == "Bored dog" and t.keywords == ("mammal", "signs and symbols")
    assert t.caption() == "Bored dog; mammal, signs and symbols"
    assert O._svg_text(b"<svg/>").caption() == ""


def test_clipart_texts_match_the_pngs():
    if not (O.CLIPART_SVG_DIR.is_dir() and O.CLIPART_DIR.is_dir()):
        pytest.skip("openclipart-svg / openclipart-png are not installed")
    texts = O.clipart_texts()
    assert len(texts) > 8000
    some = sorted(texts)[:50]
    assert all((O.CLIPART_DIR / rel).is_file() for rel in some)
    assert sum(bool(texts[r].caption()) for r in texts) > 0.99 * len(texts)


def test_clipart_pairs_are_captioned_source_pictures(tmp_path):
    """Pairs of the source role only: no picture a target clip-art task could draw (the pools' pixel-hash split)."""
    import hashlib

    from ptmrec.pools import FINGERPRINT_PX, decode_file, is_source
    from ptmrec.params import DataParams

    if not (O.CLIPART_SVG_DIR.is_dir() and O.CLIPART_DIR.is_dir()):
        pytest.skip("openclipart-svg / openclipart-png are not installed")
    pairs = O.clipart_pairs("source", 32, 12, seed=3, data=DataParams(cache_dir=str(tmp_path)))
    assert pairs.images.shape == (12, 32, 32, 3) and len(pairs.texts) == len(pairs.files) == 12
    texts = O.clipart_texts()
    for rel, text in zip(pairs.files, pairs.texts):
        assert text == texts[rel].caption() and text
        small = decode_file(str(O.CLIPART_DIR / rel), FINGERPRINT_PX)
        assert is_source(hashlib.sha1(small.tobytes()).hexdigest())
    again = O.clipart_pairs("source", 32, 12, seed=3, data=DataParams(cache_dir=str(tmp_path)))  # from the cache
    assert again.files == pairs.files and np.array_equal(again.images, pairs.images)


# ----------------------------------------------------------------------------- the traced image tower


def test_traced_tower_matches_the_encoder_and_is_checked_on_load(tiny, tmp_path):
    """save_image_tower + load_image_tower give the same embeddings for any batch and image size; a changed
    archive or another format is refused, a missing one is a FileNotFoundError (recommend falls back)."""
    enc, _ = tiny
    E.save_image_tower(enc, tmp_path / "tower")
    traced = E.load_image_tower(tmp_path / "tower", "cpu", batch_size=3)
    assert isinstance(traced, E.TracedImageEncoder) and (traced.image_size, traced.dim) == (enc.image_size, enc.dim)
    for n, size in ((1, 32), (7, 24), (5, 48)):  # batches of 3 with a remainder; resized inputs
        x = rgb(n, size, seed=n)
        np.testing.assert_allclose(traced.encode(x), enc.encode(x), atol=1e-5)
    with pytest.raises(NotImplementedError, match="no text tower"):
        traced.encode_text(["a cat"])
    meta = json.loads((tmp_path / "tower" / E.TOWER_META).read_text())
    (tmp_path / "tower" / E.TOWER_META).write_text(json.dumps({**meta, "format": 0}))
    with pytest.raises(ValueError, match="tower format 0"):
        E.load_image_tower(tmp_path / "tower")
    (tmp_path / "tower" / E.TOWER_META).write_text(json.dumps(meta))
    with open(tmp_path / "tower" / E.TOWER_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        E.load_image_tower(tmp_path / "tower")
    with pytest.raises(FileNotFoundError, match="no traced image tower"):
        E.load_image_tower(tmp_path / "nowhere")


def test_onnx_tower_embeds_as_the_encoder_without_torch_and_is_checked_on_load(tiny, tmp_path):
    """save_image_tower also exports the tower as ONNX: serve.OnnxTower (numpy preprocessing, onnxruntime)
    gives the encoder's embeddings for any batch; a changed graph, or images not at the tower's size (the
    folder loader resizes; nothing else may reach it), are refused."""
    enc, _ = tiny
    E.save_image_tower(enc, tmp_path / "tower")
    meta = json.loads((tmp_path / "tower" / E.TOWER_META).read_text())
    assert meta["onnx"]["file"] == E.TOWER_ONNX and meta["onnx"]["max_abs_diff"] < 1e-4
    onnx = S.OnnxTower(tmp_path / "tower", batch_size=3)
    for n in (1, 7):  # one batch, and batches of 3 with a remainder
        x = rgb(n, enc.image_size, seed=n)
        np.testing.assert_allclose(onnx.encode(x), enc.encode(x), atol=1e-5)
    with pytest.raises(ValueError, match="images must be uint8"):
        onnx.encode(rgb(2, enc.image_size + 8))
    with open(tmp_path / "tower" / E.TOWER_ONNX, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        S.OnnxTower(tmp_path / "tower")


def test_traced_tower_of_the_embedded_architecture(tmp_path):
    """The embedded encoder's image tower (timm EfficientNet-Lite0 + linear head) traces exactly."""
    import open_clip
    from open_clip.factory import set_model_preprocess_cfg

    cfg = E.embedded_model_config(EncoderParams())
    (tmp_path / "ptmrec-test-embedded-trace.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "ptmrec-test-embedded-trace.json")
    torch.manual_seed(0)
    with E._quiet():
        model = open_clip.create_model("ptmrec-test-embedded-trace")
    set_model_preprocess_cfg(model, {**model.visual.preprocess_cfg, **E.EMBEDDED_PREPROCESS, "size": (64, 64)})
    enc = E.ClipImageEncoder(model, None, "embedded", batch_size=4)
    E.save_image_tower(enc, tmp_path / "tower")
    traced = E.load_image_tower(tmp_path / "tower", batch_size=4)
    x = rgb(6, 32, seed=5)  # smaller than the tower's 64 px: upsampled by the shared preprocessing
    np.testing.assert_allclose(traced.encode(x), enc.encode(x), atol=1e-5)
    x = rgb(5, 64, seed=6)  # and as ONNX, what `ptmrec recommend` runs on the default world
    np.testing.assert_allclose(S.OnnxTower(tmp_path / "tower", batch_size=4).encode(x), enc.encode(x), atol=1e-5)
