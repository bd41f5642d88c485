"""Model parameter vectors (stage 02): a model's weights -> one fixed-length float32 vector.

    >>> list_extractors()
    ['flat', 'stats']
    >>> v = extract_file(zoo / "resnet-w16-fmnist" / "model.safetensors", "stats", 8192)   # [8192]
    >>> v = extract_state_dict(model.state_dict(), "stats", 8192)                          # any nn.Module
    >>> ids, skipped = extract_zoo(index, zoo, P.extract, out_dir)
    >>> ids, vectors = load_vectors(out_dir)                                               # [n], [n, 8192]

Weights are read straight from the safetensors file (its JSON header and one read of the raw bytes:
no model is built, no code runs), so extraction is bound by reading the file; ``time_extraction``
measures models per second against ``safetensors.torch.load_file`` on the same files.

Every extractor sees a ``Weights``: the floating-point tensors of one model in a canonical order --
the natural sort of their names ("blocks.2" before "blocks.10"), which is depth order for the usual
naming schemes. safetensors does not keep a module's registration order (its keys come back sorted),
so the in-memory path (``extract_state_dict``) sorts the same way and a module and its saved file give
the same vector. Integer and bool tensors (BatchNorm's ``num_batches_tracked``, position ids) are left out.

Other model kinds (Hugging Face pipeline models, CLIP / SigLIP vision towers, detection backbones):
anything that is an ``nn.Module`` goes through ``extract_state_dict(module.state_dict())``. A cluster
zoo's ``hf:`` models (``loader == "hf"`` in ``index.csv``: the zoo folder holds their config only) are
loaded by ``ptmrec.zoo.load_model`` (safetensors, ``trust_remote_code=False``) and the state dict of the
loaded module (an ``HFNet``, keys prefixed ``hf.``) is extracted; for a vision tower alone, pass the
tower's state dict (``clip.vision_model.state_dict()``).

A model that cannot be read -- no weights file, a truncated or corrupt file, a zero-sized tensor, NaN or
inf values, no floating-point tensor at all -- raises ``ExtractError`` naming the file and the tensor;
``extract_zoo`` records it in ``skipped.csv`` and goes on.
"""
from __future__ import annotations

import functools
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .registry import Registry

EXTRACTORS = Registry("extractor")  # name -> fn(weights, length) -> np.float32 [length]
WEIGHTS = "model.safetensors"
SHARD = "vectors-{:05d}.npz"
GOLDEN = 0.6180339887498949  # Weyl sequence step: quasi-random sample positions that do not alias with strides
DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": "bf16"}  # floating safetensors dtypes
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
         "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class ExtractError(ValueError):
    """A model's weights cannot give a vector; the message names the file (or model) and the problem."""


def register_extractor(name: str) -> Callable:
    """Decorator: register ``fn(weights: Weights, length: int) -> np.float32 [length]`` under ``name``."""
    return EXTRACTORS.register(name)


def list_extractors(pattern: str = "*") -> list[str]:
    return EXTRACTORS.list(pattern)


def get_extractor(name: str) -> Callable[["Weights", int], np.ndarray]:
    return EXTRACTORS.get(name)


# ------------------------------------------------------------------------------------ reading


@functools.lru_cache(maxsize=1 << 16)
def natural_key(name: str) -> tuple:
    """'blocks.10.w' -> ('blocks.', 10, '.w'): numbers compare as numbers."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name)))


@dataclass
class Weights:
    """The floating-point tensors of one model as views into one float32 buffer, in canonical order.

    Tensor ``i`` is ``buf[offsets[i] : offsets[i] + sizes[i]].reshape(shapes[i])``.
    """

    names: list[str]
    shapes: list[tuple[int, ...]]
    offsets: np.ndarray  # int64 [T], element offsets into buf
    sizes: np.ndarray  # int64 [T]
    buf: np.ndarray  # float32 [>= sum(sizes)]
    source: str = ""  # file or model, for messages
    skipped: int = 0  # non-floating tensors left out

    def __len__(self) -> int:
        return len(self.names)

    def tensor(self, i: int) -> np.ndarray:
        return self.buf[self.offsets[i]:self.offsets[i] + self.sizes[i]].reshape(self.shapes[i])


def _bf16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bytes -> float32 (a bfloat16 is the top half of a float32)."""
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _weights(names: list[str], shapes: list, offsets: list[int], buf: np.ndarray, source: str, skipped: int) -> Weights:
    """Order by natural name and check for empty tensors."""
    if not names:
        raise ExtractError(f"{source}: no floating-point tensors")
    order = sorted(range(len(names)), key=lambda i: natural_key(names[i]))
    sizes = np.array([math.prod(shapes[i]) for i in order], dtype=np.int64)
    empty = [names[order[j]] for j in np.flatnonzero(sizes == 0)]
    if empty:
        raise ExtractError(f"{source}: zero-sized tensor {empty[0]} {tuple(shapes[order[0]])}"
                           + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""))
    return Weights([names[i] for i in order], [tuple(shapes[i]) for i in order],
                   np.array([offsets[i] for i in order], dtype=np.int64), sizes, buf, source, skipped)


def read_weights(path: str | Path) -> Weights:
    """The floating tensors of a safetensors file: its JSON header, then one read of the raw bytes.

    All-float32 files (the usual case) are used in place; float16 / bfloat16 / float64 tensors are
    converted to float32. Raises ExtractError for a missing, truncated or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise ExtractError(f"{path}: missing weights file")
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) < 8:
        raise ExtractError(f"{path}: truncated safetensors ({len(raw)} bytes)")
    n = int(raw[:8].view("<u8")[0])
    if n > len(raw) - 8:
        raise ExtractError(f"{path}: truncated or not safetensors (header of {n} bytes, file of {len(raw)})")
    try:
        header = json.loads(raw[8:8 + n].tobytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExtractError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ExtractError(f"{path}: corrupt safetensors header (not a JSON object)")
    data = raw[8 + n:]
    names, shapes, spans, dtypes, skipped = [], [], [], [], 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ExtractError(f"{path}: corrupt safetensors header entry for {name}") from None
        if not 0 <= b <= e <= len(data):
            raise ExtractError(f"{path}: truncated safetensors (tensor {name} ends at byte {e} of {len(data)})")
        if dtype in SIZES and e - b != math.prod(shape) * SIZES[dtype]:
            raise ExtractError(f"{path}: tensor {name} has {e - b} bytes, not {shape} x {dtype}")
        if dtype not in DTYPES:
            skipped += 1
            continue
        names.append(name), shapes.append(shape), spans.append((b, e)), dtypes.append(dtype)
    if all(d == "F32" and b % 4 == 0 for d, (b, _) in zip(dtypes, spans)):  # in place: no copy
        buf = data[:len(data) // 4 * 4].view(np.float32)
        offsets = [b // 4 for b, _ in spans]
    else:  # mixed dtypes: convert tensor by tensor into one float32 buffer
        parts = [_bf16(data[b:e]) if d == "BF16" else data[b:e].view(DTYPES[d]).astype(np.float32)
                 for d, (b, e) in zip(dtypes, spans)]
        offsets = np.cumsum([0] + [len(p) for p in parts])[:-1].tolist()
        buf = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return _weights(names, shapes, offsets, buf, str(path), skipped)


def state_weights(state: Mapping[str, Any], source: str = "state dict") -> Weights:
    """``Weights`` of an in-memory state dict (torch tensors or numpy arrays); non-floating ones left out."""
    names, shapes, parts, skipped = [], [], [], 0
    for name, t in state.items():
        if hasattr(t, "detach"):  # torch
            if not t.is_floating_point():
                skipped += 1
                continue
            a = t.detach().float().cpu().numpy()
        else:
            a = np.asarray(t)
            if not np.issubdtype(a.dtype, np.floating):
                skipped += 1
                continue
        names.append(name), shapes.append(a.shape), parts.append(a.astype(np.float32, copy=False).reshape(-1))
    offsets = np.cumsum([0] + [len(p) for p in parts])[:-1].tolist()
    buf = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return _weights(names, shapes, offsets, buf, source, skipped)


# ------------------------------------------------------------------------------- extracting


def extract(weights: Weights, extractor: str = "stats", length: int = 8192) -> np.ndarray:
    """The vector of ``weights`` by a registered extractor: float32 [length], finite."""
    v = np.asarray(get_extractor(extractor)(weights, length), dtype=np.float32)
    if v.shape != (length,):
        raise ExtractError(f"{weights.source}: extractor '{extractor}' gave shape {v.shape}, not ({length},)")
    if not np.isfinite(v).all():
        raise ExtractError(f"{weights.source}: extractor '{extractor}' gave non-finite values")
    return v


def extract_file(path: str | Path, extractor: str = "stats", length: int = 8192) -> np.ndarray:
    """Vector of a safetensors file, float32 [length]."""
    return extract(read_weights(path), extractor, length)


def extract_state_dict(state: Mapping[str, Any], extractor: str = "stats", length: int = 8192,
                       source: str = "state dict") -> np.ndarray:
    """Vector of any model's state dict (``module.state_dict()``), float32 [length]."""
    return extract(state_weights(state, source), extractor, length)


def _check_finite(w: Weights) -> np.ndarray:
    """Exact sum of squares of every tensor, float64 [T]; raises on NaN / inf (they propagate into the sum)."""
    sq = np.array([np.dot(s, s) for s in (w.buf[o:o + n] for o, n in zip(w.offsets, w.sizes))], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(sq))
    if len(bad):
        i = int(bad[0])
        raise ExtractError(f"{w.source}: tensor {w.names[i]} has NaN or inf values"
                           + (f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""))
    return sq


# ----------------------------------------------------------------------------- "stats" design

SAMPLE = 512  # entries per tensor for moments and quantiles (all of them when the tensor is smaller)
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
NEAR_ZERO = 1e-3  # |w| below this counts as zero
SVD_ROWS, SVD_COLS, TOP = 16, 128, 8  # bounded matrix for the spectrum; singular values kept
ELEM = ["mean", "std", "skew", "log_kurtosis", *[f"q{q:g}" for q in QUANTILES], "log_l1", "log_l2", "log_max",
        "near_zero"]
SPEC = ["log_s0", *[f"s{i}/s0" for i in range(1, TOP)], "stable_rank", "effective_rank"]
MATRIX_FEATURES = ["log_fan_out", "log_fan_in", "log_numel", *ELEM, *SPEC]  # 28 channels
VECTOR_FEATURES = ["log_numel", *ELEM]  # 16 channels
GLOBAL_FEATURES = ["log_params", "log_matrices", "log_vectors", "log_other_tensors", "matrix_fraction",
                   "mean", "rms", "mean_abs"]


@functools.lru_cache(maxsize=4096)
def _positions(n: int, k: int) -> np.ndarray:
    """At most k distinct quasi-random positions in [0, n) (Weyl sequence, sorted), or all n when n <= k."""
    pos = np.arange(n) if n <= k else np.unique((np.modf(0.5 + np.arange(k) * GOLDEN)[0] * n).astype(np.int64))
    pos.flags.writeable = False  # cached: shared between calls
    return pos


def _element_stats(w: Weights, sq: np.ndarray) -> np.ndarray:
    """Per tensor: moments, quantiles, norms, near-zero fraction -> float64 [T, len(ELEM)].

    Moments and quantiles come from a sample of at most SAMPLE entries per tensor (all entries of
    smaller tensors); the L2 norm is exact (``sq``); L1 is the sample's mean |w| times the size, max the
    sample's max |w| (exact for tensors of at most SAMPLE entries).
    """
    K = SAMPLE
    cnt = np.minimum(w.sizes, K)  # [T]
    pos = np.modf(0.5 + np.arange(K) * GOLDEN)[0]  # [K] in [0, 1)
    idx = np.where((w.sizes > K)[:, None], (pos[None] * w.sizes[:, None]).astype(np.int64), np.arange(K)[None])
    mask = np.arange(K)[None] < cnt[:, None]  # [T, K]
    x = w.buf[w.offsets[:, None] + np.where(mask, idx, 0)]  # [T, K] float32, padding reads entry 0
    m = mask.astype(np.float32)
    n = cnt.astype(np.float32)
    mean = (x * m).sum(1) / n
    d = (x - mean[:, None]) * m
    d2 = d * d
    var = d2.sum(1) / n
    safe = np.where(var > 0, var, 1.0)
    skew = np.where(var > 0, (d2 * d).sum(1) / n / safe ** 1.5, 0.0)
    kurt = np.where(var > 0, (d2 * d2).sum(1) / n / safe ** 2, 1.0)  # >= 1 (not excess)
    srt = np.sort(np.where(mask, x, np.inf), axis=1)  # [T, K], padding last
    qi = np.rint(np.array(QUANTILES)[None] * (cnt[:, None] - 1)).astype(np.int64)  # [T, Q]
    quant = np.take_along_axis(srt, qi, 1)
    a = np.abs(x) * m
    l1 = a.sum(1, dtype=np.float64) / cnt * w.sizes
    mx = a.max(1)
    near = ((a < NEAR_ZERO) & mask).sum(1) / cnt
    slog = lambda v: np.sign(v) * np.log1p(np.abs(v))  # noqa: E731
    return np.column_stack([mean, np.sqrt(var), slog(skew), np.log(np.maximum(kurt, 1e-12)), quant,
                            np.log(l1 + 1e-12), 0.5 * np.log(sq + 1e-24), np.log(mx + 1e-12), near]).astype(np.float64)


def _matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """2-D view [out, in * k * k ...] of a weight tensor."""
    out = shape[0]
    return out, math.prod(shape[1:])


@functools.lru_cache(maxsize=4096)
def _submatrix(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """Where the bounded matrix of a tensor of ``shape`` sits in it: (offsets [R, C], keep [R, C], rows)."""
    a, b = _matrix_view(shape)
    r, c = min(a, b), max(a, b)
    ri, ci = _positions(r, SVD_ROWS), _positions(c, SVD_COLS)
    rr, cc = (ri[:, None], ci[None]) if a <= b else (ci[None], ri[:, None])  # element (row, col) of [a, b]
    rel = np.zeros((SVD_ROWS, SVD_COLS), np.int64)
    keep = np.zeros((SVD_ROWS, SVD_COLS), bool)
    rel[:len(ri), :len(ci)] = rr * b + cc
    keep[:len(ri), :len(ci)] = True
    rel.flags.writeable = keep.flags.writeable = False  # cached: shared between calls
    return rel, keep, len(ri)


def _spectra(w: Weights, mats: np.ndarray) -> np.ndarray:
    """Spectral features of the matrix tensors ``mats`` -> float64 [M, len(SPEC)].

    Each matrix, oriented short side first [r, c], is bounded to [<= SVD_ROWS, <= SVD_COLS] by taking
    quasi-random distinct rows and columns (zero-padded); its singular values s come from the eigenvalues
    of the [SVD_ROWS, SVD_ROWS] Gram matrix (batched). Features: log s0, s_i / s0 for i < TOP, stable rank
    sum(s^2) / s0^2 and entropy effective rank exp(H(s / sum s)), both divided by the bounded row count.
    """
    import torch

    parts = [_submatrix(w.shapes[i]) for i in mats]
    rel = np.stack([p[0] for p in parts])  # [M, R, C] element offsets inside each tensor
    keep = np.stack([p[1] for p in parts])  # [M, R, C] False on zero padding
    rows_used = np.array([p[2] for p in parts], dtype=np.float64)
    idx = w.offsets[mats][:, None, None] + rel
    A = np.where(keep, w.buf[idx], 0.0)  # [M, R, C] float64
    G = torch.from_numpy(A @ A.transpose(0, 2, 1))  # [M, R, R]
    s = torch.linalg.eigvalsh(G).clamp_min(0).sqrt().flip(-1).numpy()  # [M, R], descending
    s0 = s[:, 0]
    ok = s0 > 0
    s0s = np.where(ok, s0, 1.0)[:, None]
    ratios = np.where(ok[:, None], s[:, 1:TOP] / s0s, 0.0)
    stable = np.where(ok, (s ** 2).sum(1) / s0s[:, 0] ** 2, 0.0) / rows_used
    p = s / np.where(ok, s.sum(1), 1.0)[:, None]
    ent = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)
    eff = np.where(ok, np.exp(ent), 0.0) / rows_used
    return np.column_stack([np.log(s0 + 1e-12), ratios, stable, eff])


def resample_depth(feats: np.ndarray, slots: int) -> np.ndarray:
    """Per-channel resampling over normalised depth: [T, F] -> [F, slots].

    Tensor i sits at depth i / (T - 1). With fewer tensors than slots, each channel is linearly
    interpolated at ``slots`` evenly spaced depths; with more, slot s averages tensors
    [floor(s T / slots), floor((s + 1) T / slots)) (bin averaging, no tensor dropped). One tensor
    fills every slot; none gives zeros. So a 10-layer and a 100-layer net fill the same slots.
    """
    T, F = feats.shape
    if T == 0:
        return np.zeros((F, slots))
    if T == 1:
        return np.repeat(feats.T, slots, 1)
    if T >= slots:
        starts = (np.arange(slots) * T) // slots
        counts = np.diff(np.r_[starts, T])
        return (np.add.reduceat(feats, starts, axis=0) / counts[:, None]).T
    at = np.linspace(0, T - 1, slots)  # [slots] fractional tensor index
    lo = np.minimum(at.astype(np.int64), T - 2)
    frac = (at - lo)[:, None]
    return (feats[lo] * (1 - frac) + feats[lo + 1] * frac).T  # linear interpolation, [F, slots]


@register_extractor("stats")
def stats_extractor(w: Weights, length: int) -> np.ndarray:
    """Per-tensor statistics in depth order, resampled to fixed slots (architecture-agnostic).

    Two streams: matrices (tensors whose [shape[0], rest] view has both sides >= 2: conv kernels,
    linear and attention weights, embeddings) with MATRIX_FEATURES (shape, moments, quantiles, norms,
    near-zero fraction, spectrum), and vectors (biases, norm scales and running statistics, scalars)
    with VECTOR_FEATURES. Each stream's channels are resampled over depth (``resample_depth``) to
    ``slots = (length - 8) // 44`` values. Layout: matrix channels (channel-major), then vector channels,
    then GLOBAL_FEATURES, then zeros up to ``length`` (8192 = 44 x 186 + 8, no padding).
    """
    nf = len(MATRIX_FEATURES) + len(VECTOR_FEATURES)
    slots = (length - len(GLOBAL_FEATURES)) // nf
    if slots < 1:
        raise ValueError(f"stats extractor needs length >= {nf + len(GLOBAL_FEATURES)}, got {length}")
    sq = _check_finite(w)
    elem = _element_stats(w, sq)  # [T, 15]
    views = [_matrix_view(s) if len(s) >= 2 else (1, math.prod(s)) for s in w.shapes]
    is_mat = np.array([min(v) >= 2 for v in views], bool)
    mats, vecs = np.flatnonzero(is_mat), np.flatnonzero(~is_mat)
    logn = np.log(w.sizes.astype(np.float64))
    fan = np.log(np.array(views, dtype=np.float64))  # [T, 2]: log fan-out, log fan-in
    mfeat = np.column_stack([fan[mats], logn[mats], elem[mats], _spectra(w, mats)]) if len(mats) \
        else np.zeros((0, len(MATRIX_FEATURES)))
    vfeat = np.column_stack([logn[vecs], elem[vecs]])
    total = float(w.sizes.sum())
    sums = elem[:, 0] * w.sizes  # mean * n (sample mean for large tensors)
    glob = [np.log(total), np.log1p(len(mats)), np.log1p(len(vecs)), np.log1p(w.skipped),
            w.sizes[mats].sum() / total, sums.sum() / total, np.sqrt(sq.sum() / total),
            np.exp(elem[:, ELEM.index("log_l1")]).sum() / total]
    v = np.concatenate([resample_depth(mfeat, slots).ravel(), resample_depth(vfeat, slots).ravel(), glob])
    return np.pad(v, (0, length - len(v))).astype(np.float32)


# ------------------------------------------------------------------------------ "flat" design


@register_extractor("flat")
def flat_extractor(w: Weights, length: int) -> np.ndarray:
    """Naive baseline: the concatenated raw parameters (canonical order) at ``length`` evenly spaced
    positions floor((i + 0.5) N / length) of the N floating entries (repeats when N < length)."""
    _check_finite(w)
    ends = np.cumsum(w.sizes)  # [T]
    pos = np.floor((np.arange(length) + 0.5) * (ends[-1] / length)).astype(np.int64)  # [L] global positions
    t = np.searchsorted(ends, pos, side="right")  # tensor of each position
    local = pos - (ends[t] - w.sizes[t])
    return w.buf[w.offsets[t] + local].astype(np.float32)


# ---------------------------------------------------------------------------------- the zoo


def _model_weights(row: Mapping, zoo_dir: Path) -> Weights:
    folder = zoo_dir / str(row["path"])
    if row.get("loader") == "hf":  # hub model: the zoo folder holds its config; load it and use its state dict
        from .zoo import load_model

        model, _ = load_model(folder)
        return state_weights(model.state_dict(), source=str(row["model_id"]))
    return read_weights(folder / WEIGHTS)


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def _vector_or_reason(row: Mapping, zoo_dir: Path, extractor: str, length: int,
                      weights: Any = None) -> tuple[np.ndarray | None, str]:
    """(vector [length], "") of one model, or (None, why it was skipped): one bad model never stops a zoo."""
    try:
        return extract(_model_weights(row, zoo_dir) if weights is None else weights, extractor, length), ""
    except Exception as e:  # noqa: BLE001 -- recorded as the model's skip reason
        return None, _reason(e)


def _part_path(parts: Path, row: Mapping) -> Path:
    """Where one model's vector or skip reason is kept in a parts folder (named by its zoo folder)."""
    stem = parts / str(row["path"])
    return stem.with_name(stem.name + ".npz")


def _write_part(path: Path, result: tuple[np.ndarray | None, str]) -> None:
    from .paths import write_npz

    vector, reason = result
    write_npz(path, vector=np.zeros(0, np.float32) if vector is None else vector, reason=np.array(reason))


def _read_part(path: Path) -> tuple[np.ndarray | None, str]:
    with np.load(path) as z:
        reason = str(z["reason"])
        return (None if reason else z["vector"]), reason


def extract_parts(index, zoo_dir: str | Path, length: int, parts: str | Path,
                  extractors: Iterable[str] | None = None) -> int:
    """Vectors of the models in ``index`` by every extractor design (default: all registered), one file each.

    Writes ``parts/<design>/<zoo folder>.npz`` (``vector`` float32 [length], or ``reason`` why it was
    skipped), atomically; a model whose files are all there is not read again. Each model's weights are
    read once for every design. This is how a cluster shards stage 02 (``ptmrec shard``);
    ``extract_zoo(..., parts=parts / design)`` then only gathers. Returns the number of models read.
    """
    zoo_dir, parts = Path(zoo_dir), Path(parts)
    names = list(extractors or list_extractors())
    for n in names:
        get_extractor(n)
    read = 0
    for row in (index.to_dict("records") if hasattr(index, "to_dict") else list(index)):
        todo = [n for n in names if not _part_path(parts / n, row).exists()]
        if not todo:
            continue
        read += 1
        try:
            w = _model_weights(row, zoo_dir)
        except Exception as e:  # noqa: BLE001 -- recorded as the model's skip reason, as extract_zoo does
            for n in todo:
                _write_part(_part_path(parts / n, row), (None, _reason(e)))
            continue
        for n in todo:
            _write_part(_part_path(parts / n, row), _vector_or_reason(row, zoo_dir, n, length, weights=w))
    return read


def extract_zoo(index, zoo_dir: str | Path, params: Any, out_dir: str | Path,
                progress: bool = True, parts: str | Path | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Vectors of every model in ``index`` (scan_zoo / index.csv rows: model_id, path, loader).

    ``params`` is an ExtractParams (extractor, length, shard_size). Writes ``out_dir/vectors-NNNNN.npz``
    (``ids`` [n] str, ``vectors`` [n, length] float32; ``shard_size`` models each, atomic), ``skipped.csv``
    (model_id, reason) and ``vectors.json`` (extractor, length, counts, seconds). Returns (ids, skipped).
    A model that fails is skipped with its reason, never fatal. With ``parts`` (a folder for this design,
    see ``extract_parts``), each model's vector or skip reason is kept there as soon as it is computed and
    taken from there when present: a killed run resumes, and shards computed elsewhere are only gathered.
    """
    import pandas as pd

    from .paths import resume, write_csv, write_json, write_npz
    from .progress import progress as bar

    zoo_dir, out_dir = Path(zoo_dir), Path(out_dir)
    get_extractor(params.extractor)  # unknown name: fail before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("vectors-*.npz"):  # a shorter re-run must not leave stale shards
        old.unlink()
    rows = index.to_dict("records") if hasattr(index, "to_dict") else list(index)
    ids, vecs, skipped = [], [], []
    import torch  # noqa: F401 -- the spectra use it: imported before the clock starts
    t0 = time.perf_counter()
    for row in (bar(rows, desc=f"extract {params.extractor}") if progress else rows):
        compute = lambda: _vector_or_reason(row, zoo_dir, params.extractor, params.length)  # noqa: E731
        v, reason = compute() if parts is None else resume(_part_path(Path(parts), row), compute, _read_part, _write_part)
        if v is None:
            skipped.append((str(row["model_id"]), reason))
        else:
            vecs.append(v), ids.append(str(row["model_id"]))
    seconds = time.perf_counter() - t0
    V = np.stack(vecs) if vecs else np.zeros((0, params.length), np.float32)
    step = max(1, params.shard_size)
    for k, i in enumerate(range(0, max(len(ids), 1), step)):
        write_npz(out_dir / SHARD.format(k), ids=np.array(ids[i:i + step], dtype=str), vectors=V[i:i + step])
    write_csv(out_dir / "skipped.csv", pd.DataFrame(skipped, columns=["model_id", "reason"]))
    write_json(out_dir / "vectors.json", dict(extractor=params.extractor, length=params.length, models=len(ids),
                                              skipped=len(skipped), seconds=round(seconds, 3),
                                              models_per_s=round(len(rows) / max(seconds, 1e-9), 2)))
    return ids, skipped


def load_vectors(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n] str, vectors [n, L] float32) from the shards in ``out_dir``, in shard order."""
    shards = sorted(Path(out_dir).glob("vectors-*.npz"))
    if not shards:
        raise FileNotFoundError(f"{out_dir}: no vectors-*.npz shards (run stage 02 first)")
    ids, vecs = [], []
    for s in shards:
        with np.load(s) as z:
            ids.append(z["ids"]), vecs.append(z["vectors"])
    return np.concatenate(ids), np.concatenate(vecs).astype(np.float32, copy=False)


def time_extraction(paths: Iterable[str | Path], extractor: str = "stats", length: int = 8192,
                    repeats: int = 3) -> dict[str, float]:
    """Models per second of extraction vs of ``safetensors.torch.load_file`` on the same files.

    One warm-up pass first (both then read from the page cache); the two are timed in alternation,
    best of ``repeats`` each, so a busy machine slows both alike. ``ratio`` = extract rate / load rate.
    """
    from safetensors.torch import load_file

    paths = [str(p) for p in paths]

    def seconds(fn: Callable[[str], Any]) -> float:
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        return time.perf_counter() - t0

    seconds(load_file)
    seconds(lambda p: extract_file(p, extractor, length))
    best_load = best_ext = float("inf")
    for _ in range(repeats):
        best_load = min(best_load, seconds(load_file))
        best_ext = min(best_ext, seconds(lambda p: extract_file(p, extractor, length)))
    load, ext = len(paths) / best_load, len(paths) / best_ext
    return dict(models=len(paths), extract_models_per_s=round(ext, 2), load_models_per_s=round(load, 2),
                ratio=round(ext / load, 3))
