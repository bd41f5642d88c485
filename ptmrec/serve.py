"""The torch-free serving path of ``ptmrec recommend``: the image tower and the ranker as ONNX graphs.

Importing torch costs about 2 s on a 2-core machine, more than everything else a tokens-only
recommendation does. Stage 04 therefore also exports the encoder's image tower
(``04_dataset_tokens/image_tower/image_tower.onnx``) and stage 06 the trained ranker with its zoo's
model tokens folded in (``06_ranker/ranker/ranker.onnx``); ``ptmrec recommend`` then embeds and ranks
with onnxruntime and numpy alone (``OnnxTower``, ``OnnxRanker``). ONNX files hold data, not code:
loading one runs nothing. Every export is checked against the eager module on inputs of another
shape than it was traced with before it is written; a graph that fails the check is not written,
and ``recommend`` then falls back to torch.

    >>> export_onnx(module, (x,), folder / "m.onnx", ["x"], ["y"], {"x": {0: "batch"}, "y": {0: "batch"}}, check)
    >>> OnnxRanker(run / "06_ranker/ranker").scores(dataset_tokens)   # [M, D_d] -> [N]

The ranker graph is exported for exactly ``max_dataset_tokens`` dataset tokens (the recommendation's
cut): fewer are padded and masked (``dataset_mask``, True = padding), which gives the scores of the
unpadded tokens (to float rounding; tested). Torch's batch-first multi-head attention bakes the
sequence lengths into the traced graph, so a fixed length is what exports reliably.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .paths import atomic_path, read_json

if TYPE_CHECKING:
    import torch

RANKER_FORMAT = 2  # version of the saved ranker folder; ``ptmrec recommend`` refuses others (2: the evidence read-out)
RANKER_ONNX = "ranker.onnx"  # beside config.json and model.safetensors
OPSET = 17


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def session(path: Path) -> Any:
    """An onnxruntime CPU inference session on ``path`` (ImportError when onnxruntime is not installed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(sess: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output of ``sess`` on the ``feeds`` it declares as inputs (an export drops inputs it does not read)."""
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def export_onnx(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                dynamic: dict[str, dict[int, str]] | None, check: Callable[[Any], float], atol: float = 1e-4) -> float:
    """Export ``module`` (in eval mode, traced on ``args``) to ``path`` and return ``check(session)``: the largest
    absolute difference from the eager module on the checker's own inputs. Above ``atol`` nothing is written
    and ValueError says by how much. Every submodule keeps the train/eval mode it had."""
    import torch

    modes = {m: m.training for m in module.modules()}  # restored after: the exporter leaves its own choice
    fast = torch.backends.mha.get_fastpath_enabled()
    try:
        # the fused inference kernels of nn.MultiheadAttention / TransformerEncoderLayer have no ONNX form
        torch.backends.mha.set_fastpath_enabled(False)
        with atomic_path(path) as tmp:
            module.eval()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes: the check decides
                torch.onnx.export(module, args, str(tmp), dynamo=False, input_names=inputs, output_names=outputs,
                                  dynamic_axes=dynamic, opset_version=OPSET)
            module.eval()  # the check compares with the eager module in eval mode
            err = float(check(session(tmp)))
            if not err <= atol:  # NaN fails too
                raise ValueError(f"{path.name}: the ONNX graph differs from the eager module by {err:.2e} (> {atol})")
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for m, training in modes.items():
            m.train(training)
    return err


# ----------------------------------------------------------------------------- the image tower


class OnnxTower:
    """The image tower that stage 04 exported (``encoders.save_image_tower``): uint8 images at the encoder's
    own size -> unit-norm features, as ``ClipImageEncoder.encode``, without torch."""

    def __init__(self, folder: str | Path, meta_file: str = "image_tower.json", batch_size: int = 64):
        folder = Path(folder)
        meta_path = folder / meta_file
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no exported image tower (written by stage 04_dataset_tokens)")
        meta = read_json(meta_path)
        onnx = meta.get("onnx") or {}
        path = folder / str(onnx.get("file", "image_tower.onnx"))
        if not onnx or not path.is_file():
            raise FileNotFoundError(f"{path}: no ONNX image tower ({onnx.get('skipped', 'an older run')})")
        if onnx.get("sha256") != sha256(path):
            raise ValueError(f"{path}: its SHA-256 differs from the one stage 04 recorded in {meta_path.name}")
        self.name, self.image_size, self.dim = meta["name"], int(meta["image_size"]), int(meta["dim"])
        self.batch_size = batch_size
        self._scale = np.asarray(meta["scale"], np.float32).reshape(1, 3, 1, 1)
        self._shift = np.asarray(meta["shift"], np.float32).reshape(1, 3, 1, 1)
        self._sess = session(path)

    def __repr__(self) -> str:
        return f"OnnxTower({self.name}, {self.image_size} px -> {self.dim}-d)"

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, s, s, 3] (s = ``image_size``: the folder loader resizes) -> float32 [N, D], unit L2 norm."""
        s = self.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3) or images.dtype != np.uint8:
            raise ValueError(f"{self.name}: images must be uint8 [N, {s}, {s}, 3], got {images.dtype} {images.shape}")
        out = np.zeros((len(images), self.dim), np.float32)
        for i in range(0, len(images), self.batch_size):
            x = images[i:i + self.batch_size].transpose(0, 3, 1, 2).astype(np.float32) * self._scale + self._shift
            f = run_session(self._sess, {"pixels": np.ascontiguousarray(x)})  # [B, D]
            out[i:i + len(f)] = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        return out


def export_tower(visual: torch.nn.Module, image_size: int, path: Path, reference: Callable) -> float:
    """``visual`` (preprocessed [B, 3, s, s] -> features [B, D]) to ONNX with a free batch axis, checked on a
    batch of 3 against ``reference`` (the eager ``encode_image``). Returns the largest difference."""
    import torch

    gen = torch.Generator().manual_seed(1)
    example = torch.randn(2, 3, image_size, image_size, generator=gen)
    probe = torch.randn(3, 3, image_size, image_size, generator=gen)

    def check(sess: Any) -> float:
        with torch.no_grad():
            want = reference(probe).float().numpy()
        return float(np.abs(run_session(sess, {"pixels": probe.numpy()}) - want).max())

    return export_onnx(visual, (example,), path, ["pixels"], ["features"],
                       {"pixels": {0: "batch"}, "features": {0: "batch"}}, check)


# ----------------------------------------------------------------------------- the ranker


def export_ranker(model: torch.nn.Module, model_tokens: np.ndarray, max_tokens: int, folder: Path) -> float:
    """The ranker's prior (no evidence) with the zoo's ``model_tokens`` [N, D_m] folded in, as ``folder/ranker.onnx``:
    dataset tokens [1, max_tokens, D_d] and their padding mask [1, max_tokens] -> scores [1, N]. Checked with
    a third of the tokens padded against the eager ranker on the unpadded ones. Returns the largest difference."""
    import torch

    n, d = len(model_tokens), int(model.cfg.dataset_dim)
    mt = torch.as_tensor(np.asarray(model_tokens, np.float32))[None]  # [1, N, D_m]
    ids = torch.arange(n)[None]  # [1, N]: the id table of model_tokens="ids"

    class Prior(torch.nn.Module):  # the tokens-only call of ``recommend``, model side constant
        def __init__(self) -> None:
            super().__init__()
            self.ranker = model

        def forward(self, dataset_tokens: torch.Tensor, dataset_mask: torch.Tensor) -> torch.Tensor:
            return self.ranker(mt, dataset_tokens, dataset_mask, ids)

    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(1, max_tokens, d, generator=gen)
    tokens = tokens / tokens.norm(dim=-1, keepdim=True)  # like CLIP features: unit norm
    keep = max(1, 2 * max_tokens // 3)

    def check(sess: Any) -> float:
        with torch.no_grad():
            want = model(mt, tokens[:, :keep], None, ids).numpy()
        got = OnnxRanker.run(sess, tokens[0, :keep].numpy())
        return float(np.abs(got - want[0]).max())

    mask = torch.zeros(1, max_tokens, dtype=torch.bool)
    return export_onnx(Prior(), (tokens, mask), Path(folder) / RANKER_ONNX, ["dataset_tokens", "dataset_mask"],
                       ["scores"], None, check)


class OnnxRanker:
    """The ranker that stage 06 exported (``export_ranker``): dataset tokens -> a score per zoo model, without torch."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        cfg = read_json(folder / "config.json")
        onnx = cfg.get("onnx") or {}
        path = folder / RANKER_ONNX
        if not onnx or not path.is_file():
            raise FileNotFoundError(f"{path}: no ONNX ranker ({onnx.get('skipped', 'an older run')})")
        if onnx.get("sha256") != sha256(path):
            raise ValueError(f"{path}: its SHA-256 differs from the one stage 06 recorded in config.json")
        self.model_ids = list(cfg["model_ids"])
        self._sess = session(path)
        self.length = length(self._sess)
        if self.length is not None and self.length < int(cfg["max_dataset_tokens"]):  # a config edited after export
            raise ValueError(f"{path}: exported for {self.length} dataset tokens, the ranker's config cuts at "
                             f"{cfg['max_dataset_tokens']}")

    @staticmethod
    def run(sess: Any, tokens: np.ndarray) -> np.ndarray:
        """Scores [N] of dataset ``tokens`` [M, D_d] (0 < M <= the graph's length), padded and masked."""
        (m, d), n = tokens.shape, length(sess)
        if n is None:  # a ranker without dataset tokens: the graph has no inputs
            return run_session(sess, {})[0]
        if not 0 < m <= n:
            raise ValueError(f"the ranker graph takes 1..{n} dataset tokens, got {m}")
        padded = np.zeros((1, n, d), np.float32)
        padded[0, :m] = tokens
        mask = np.ones((1, n), bool)  # True = padding, as torch's key_padding_mask
        mask[0, :m] = False
        return run_session(sess, {"dataset_tokens": padded, "dataset_mask": mask})[0]

    def scores(self, tokens: np.ndarray) -> np.ndarray:
        """float32 [N] in ``model_ids`` order for dataset tokens [M, D_d], already cut to ``max_dataset_tokens``."""
        return self.run(self._sess, np.asarray(tokens, np.float32))


def length(sess: Any) -> int | None:
    """The number of dataset tokens a ranker graph was exported for; None when the ranker reads none (the
    export then drops the input)."""
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    return int(shapes["dataset_tokens"][1]) if "dataset_tokens" in shapes else None
