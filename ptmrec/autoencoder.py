"""ModelAutoEncoder (stage 03): parameter vector [8192] -> model token [512] -> reconstruction.

    >>> ae = ModelAutoEncoder(P.autoencoder)
    >>> ae.set_standardizer(train_vectors)          # per-dimension mean / std, saved with the weights
    >>> recon, code = ae(x)                         # [B, 8192], [B, 512]
    >>> total, parts = ae.loss(x)                   # scalar, {"recon": ..., "code_l1": ...}
    >>> ae.save(folder); ae2 = ModelAutoEncoder.load(folder)
    >>> ae, summary = train_autoencoder(ids, vectors, P.autoencoder, P.train_autoencoder, out_dir)

The encoder is Linear -> LayerNorm -> activation -> dropout per hidden layer, then a linear code
layer; the decoder mirrors it. Inputs are standardised per dimension with statistics of the
training vectors (buffers ``mean`` / ``std``), and the loss is taken in standardised units so
that every feature of the vector counts alike; ``forward`` returns the reconstruction in the
input's own units.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .params import AutoEncoderParams, TrainParams
from .registry import Registry
from .train import Trainer, register_trainer, split_ids

ACTIVATIONS = Registry.of("activation", {"gelu": nn.GELU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU})
LOSSES = Registry.of("reconstruction loss", {"mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss})
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def mlp(dims: list[int], activation: str, dropout: float) -> nn.Sequential:
    """dims[0] -> ... -> dims[-1]: Linear, LayerNorm, activation, dropout between; the last layer is linear."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers += [nn.LayerNorm(b), ACTIVATIONS[activation](), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class ModelAutoEncoder(nn.Module):
    """Compresses model parameter vectors to model tokens; config-driven (an AutoEncoderParams)."""

    def __init__(self, cfg: AutoEncoderParams | None = None):
        super().__init__()
        cfg = cfg or AutoEncoderParams()
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"autoencoder.activation '{cfg.activation}'; valid: {', '.join(ACTIVATIONS)}")
        if cfg.reconstruction_loss not in LOSSES:
            raise ValueError(f"autoencoder.reconstruction_loss '{cfg.reconstruction_loss}'; valid: {', '.join(LOSSES)}")
        self.cfg = cfg
        dims = [cfg.input_dim, *cfg.hidden, cfg.code_dim]
        self.encoder = mlp(dims, cfg.activation, cfg.dropout)
        self.decoder = mlp(dims[::-1], cfg.activation, cfg.dropout)
        self.register_buffer("mean", torch.zeros(cfg.input_dim))
        self.register_buffer("std", torch.ones(cfg.input_dim))

    @torch.no_grad()
    def set_standardizer(self, vectors: np.ndarray | torch.Tensor, min_std: float = 1e-6) -> None:
        """Per-dimension mean / std of the training vectors [N, input_dim]; constant dimensions get std 1."""
        x = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
        std = x.std(0, unbiased=False) if len(x) > 1 else torch.zeros(x.shape[1])
        self.mean.copy_(x.mean(0))
        self.std.copy_(torch.where(std > min_std, std, torch.ones_like(std)))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, input_dim] -> [B, code_dim]."""
        return self.encoder(self.standardize(x))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """[B, code_dim] -> [B, input_dim] in the input's units."""
        return self.decoder(code) * self.std + self.mean

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(x)  # [B, code_dim]
        return self.decode(code), code  # [B, input_dim], [B, code_dim]

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction loss in standardised units + code_l1_penalty * mean |code|."""
        z = self.standardize(x)  # [B, input_dim]
        code = self.encoder(z)  # [B, code_dim]
        recon = LOSSES[self.cfg.reconstruction_loss](self.decoder(code), z)
        l1 = code.abs().mean()
        total = recon + self.cfg.code_l1_penalty * l1
        return total, {"recon": float(recon.detach()), "code_l1": float(l1.detach())}

    @torch.no_grad()
    def encode_numpy(self, vectors: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Model tokens of vectors [N, input_dim] -> float32 [N, code_dim], eval mode, on the model's device."""
        was = self.training
        self.eval()
        dev = self.mean.device
        out = [self.encode(torch.as_tensor(vectors[i:i + batch_size], dtype=torch.float32, device=dev)).cpu()
               for i in range(0, len(vectors), batch_size)]
        self.train(was)
        return torch.cat(out).numpy() if out else np.zeros((0, self.cfg.code_dim), np.float32)

    def save(self, folder: str | Path) -> Path:
        """``folder/model.safetensors`` (weights + standardiser) and ``folder/config.json`` (the AutoEncoderParams)."""
        from safetensors.torch import save_file

        from .paths import atomic_path, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "class": type(self).__name__})
        write_json(folder / CONFIG, dataclasses.asdict(self.cfg))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> "ModelAutoEncoder":
        """The autoencoder saved in ``folder``, in eval mode. Never runs code from the files."""
        from safetensors.torch import load_file

        folder = Path(folder)
        model = cls(read_config(folder / CONFIG))
        path = folder / WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing autoencoder weights")
        try:
            model.load_state_dict(load_file(str(path)))
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not fit {folder / CONFIG}: {e}") from None
        return model.to(device).eval()


def read_config(path: str | Path) -> AutoEncoderParams:
    """An AutoEncoderParams from JSON, validated like a parameter file (unknown keys / wrong types fail)."""
    from .params import from_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing autoencoder config")
    raw: Any = json.loads(path.read_text())
    return from_dict({"autoencoder": raw}, origin=str(path)).autoencoder


# ------------------------------------------------------------------------------ training

@register_trainer
class ModelAutoEncoderTrainer(Trainer):
    """Trains ModelAutoEncoder to reconstruct model parameter vectors (stage 03)."""

    name = "autoencoder"

    def compute_loss(self, batch: Any) -> torch.Tensor:
        x = batch["vectors"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
        total, parts = self.model.loss(x)  # x: [B, input_dim]
        self._last_batch_metrics.update(parts)
        return total

    @classmethod
    def from_run(cls, run: str | Path, P: Any, out_dir: str | Path, device: str = "cpu",
                 progress: bool = True) -> dict[str, Any]:
        """Train on the stage-02 vectors of run folder ``run`` with the parameters ``P``; see ``train_autoencoder``."""
        from .extract import load_vectors

        ids, vectors = load_vectors(Path(run) / "02_model_vectors")
        _, summary = train_autoencoder(ids, vectors, P.autoencoder, P.train_autoencoder, out_dir, seed=P.run.seed,
                                       device=device, progress=progress)
        return summary


def train_autoencoder(ids: Iterable[str], vectors: np.ndarray, cfg: AutoEncoderParams, params: TrainParams,
                      out_dir: str | Path, seed: int = 0, device: str = "cpu",
                      progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Fit a ModelAutoEncoder on ``vectors`` [N, input_dim] (seeded train / val split by model).

    The standardiser uses the training models only. Writes into ``out_dir``: ``history.json`` (with the
    split), ``figures/autoencoder_loss.*``, ``autoencoder/`` (``ModelAutoEncoder.save``) and a named
    checkpoint. Returns (model in eval mode, summary dict).
    """
    from torch.utils.data import DataLoader, TensorDataset

    ids, vectors = [str(i) for i in ids], np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != cfg.input_dim:
        raise ValueError(f"vectors have shape {vectors.shape} but autoencoder.input_dim is {cfg.input_dim} "
                         "(set it to extract.length)")
    from . import audit

    tr, va = split_ids(len(ids), params.val_fraction, seed)
    if len(tr) == 0:
        raise ValueError("no model vectors to train the autoencoder on")
    audit.seen("standardiser", models=[ids[i] for i in tr])
    audit.seen("autoencoder", models=ids)  # trained on tr, early-stopped on va: every id given here reaches it
    torch.manual_seed(seed)
    model = ModelAutoEncoder(cfg)
    model.set_standardizer(vectors[tr])
    X = torch.from_numpy(vectors)
    g = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(TensorDataset(X[tr]), batch_size=params.batch_size, shuffle=True, generator=g)
    val_loader = DataLoader(TensorDataset(X[va]), batch_size=params.batch_size) if len(va) else None
    trainer = ModelAutoEncoderTrainer(model, params, out_dir=out_dir, device=device, seed=seed, progress=progress)
    trainer.info = {"train_ids": [ids[i] for i in tr], "val_ids": [ids[i] for i in va]}
    trainer.fit(train_loader, val_loader)
    out_dir = Path(out_dir)
    model.eval().save(out_dir / "autoencoder")
    ckpt = trainer.save_checkpoint(out_dir)
    summary = {k: v for k, v in trainer.summary().items() if k != "epochs"}
    summary.update(epochs_run=len(trainer.history), checkpoint=ckpt.name, model_dir=str(out_dir / "autoencoder"),
                   final=trainer.history[-1] if trainer.history else None)
    return model, summary
