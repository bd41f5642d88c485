"""ModelAutoEncoder, the Trainer and its registry, ``ptmrec train``: small synthetic problems."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ptmrec import cli, params
from ptmrec import train as T
from ptmrec.autoencoder import ModelAutoEncoder
from ptmrec.params import AutoEncoderParams, TrainParams

SMALL = AutoEncoderParams(input_dim=64, code_dim=8, hidden=[32, 16], dropout=0.0)


def _vectors(n: int = 24, d: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 4)) @ rng.normal(size=(4, d)) * 5 + 100).astype(np.float32)  # rank 4, offset


# ---------------------------------------------------------------------------- autoencoder


def test_autoencoder_shapes():
    ae = ModelAutoEncoder(SMALL)
    x = torch.from_numpy(_vectors(5))
    recon, code = ae(x)
    assert recon.shape == (5, 64) and code.shape == (5, 8) and ae.encode(x).shape == (5, 8)
    default = ModelAutoEncoder()
    assert default.encode(torch.zeros(2, 8192)).shape == (2, 512)


def test_standardizer_and_save_load(tmp_path):
    V = _vectors()
    ae = ModelAutoEncoder(dataclasses.replace(SMALL, dropout=0.2))
    ae.set_standardizer(V)
    assert torch.allclose(ae.mean, torch.from_numpy(V.mean(0)))
    ae.eval()
    ae.save(tmp_path / "ae")
    assert json.loads((tmp_path / "ae" / "config.json").read_text())["hidden"] == [32, 16]
    ae2 = ModelAutoEncoder.load(tmp_path / "ae")
    assert not ae2.training and torch.equal(ae2.std, ae.std)
    assert np.array_equal(ae.encode_numpy(V), ae2.encode_numpy(V))
    cfg = json.loads((tmp_path / "ae" / "config.json").read_text())
    (tmp_path / "ae" / "config.json").write_text(json.dumps({**cfg, "hiden": [1]}))
    with pytest.raises(params.ParamsError, match="hiden"):
        ModelAutoEncoder.load(tmp_path / "ae")


def test_loss_variants_and_l1_penalty():
    x = torch.from_numpy(_vectors(6))
    torch.manual_seed(0)
    ae = ModelAutoEncoder(SMALL)
    ae.set_standardizer(x.numpy())
    total0, parts = ae.loss(x)
    assert set(parts) == {"recon", "code_l1"} and total0.item() == pytest.approx(parts["recon"])
    pen = ModelAutoEncoder(dataclasses.replace(SMALL, code_l1_penalty=0.5))
    pen.load_state_dict(ae.state_dict())
    total, p = pen.loss(x)
    assert total.item() == pytest.approx(p["recon"] + 0.5 * p["code_l1"], rel=1e-5)
    sl1 = ModelAutoEncoder(dataclasses.replace(SMALL, reconstruction_loss="smooth_l1"))
    sl1.load_state_dict(ae.state_dict())
    assert sl1.loss(x)[0].item() != pytest.approx(total0.item())
    with pytest.raises(ValueError, match="activation"):
        ModelAutoEncoder(dataclasses.replace(SMALL, activation="tanh"))
    for act in ("relu", "leaky_relu"):
        ModelAutoEncoder(dataclasses.replace(SMALL, activation=act))


# -------------------------------------------------------------------------------- trainer


class Scripted(T.Trainer):
    """Linear regression whose validation loss follows a script (to test early stopping)."""

    name = "scripted"

    def __init__(self, model, params, vals, **kw):
        super().__init__(model, params, **kw)
        self.vals, self.seen_on_disk = vals, {}

    def compute_loss(self, batch):
        x, y = batch
        loss = F.mse_loss(self.model(x), y)
        if not self.model.training:
            if self.out_dir is not None:  # history.json already holds every finished epoch
                self.seen_on_disk[self.epoch] = len(json.loads((self.out_dir / "history.json").read_text())["epochs"]) \
                    if self.epoch > 1 else 0
            return torch.tensor(self.vals[self.epoch - 1])
        return loss


def _regression(n: int = 32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return DataLoader(TensorDataset(x, y), batch_size=8)


def test_early_stopping_history_and_best_weights(tmp_path):
    vals = [5, 4, 3, 2, 2.5, 2.6, 2.7, 2.8, 1.0, 1.0, 1.0]  # best at epoch 4; patience 3 -> stop after 7
    tp = TrainParams(epochs=len(vals), early_stopping_patience=3, scheduler="none", lr=0.05)
    model = nn.Linear(4, 1)
    tr = Scripted(model, tp, vals, out_dir=tmp_path, progress=False)
    snapshots = {}
    orig = tr.run_epoch

    def spy(loader, train):
        out = orig(loader, train)
        if not train:
            snapshots[tr.epoch] = model.weight.detach().clone()
        return out

    tr.run_epoch = spy
    hist = tr.fit(_regression(), _regression())
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4, 5, 6, 7]
    assert tr.stopped_early and tr.best_epoch == 4 and tr.best_loss == 2
    assert list(tr.seen_on_disk.values()) == [0, 1, 2, 3, 4, 5, 6]  # written after every epoch
    assert torch.equal(model.weight, snapshots[4])  # best weights restored
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["best_epoch"] == 4 and saved["stopped_early"] and len(saved["epochs"]) == 7
    assert {"train_loss", "val_loss", "lr", "seconds", "train_grad_norm"} <= set(saved["epochs"][0])
    assert (tmp_path / "figures" / "scripted_loss.pdf").is_file() and (tmp_path / "figures" / "scripted_loss.png").is_file()


@pytest.mark.parametrize("scheduler", ["cosine", "plateau", "none"])
def test_schedulers_and_no_validation(scheduler):
    tp = TrainParams(epochs=6, scheduler=scheduler, lr=0.05, early_stopping_patience=2)
    tr = Scripted(nn.Linear(4, 1), tp, vals=[], progress=False)
    hist = tr.fit(_regression())  # no val loader: no early stopping, best by training loss
    assert len(hist) == 6 and hist[-1]["val_loss"] is None and hist[-1]["train_loss"] < hist[0]["train_loss"]
    lrs = [r["lr"] for r in hist]
    assert (lrs[-1] < lrs[0]) if scheduler == "cosine" else lrs[0] == 0.05
    with pytest.raises(ValueError, match="scheduler"):
        Scripted(nn.Linear(4, 1), TrainParams(scheduler="step"), vals=[])


class DictTrainer(T.Trainer):
    """Overrides _forward_batch for dict batches and reports a metric."""

    name = "dict"

    def _forward_batch(self, batch):
        x, y = batch["x"].to(self.device), batch["y"].to(self.device)
        pred = self.model(x)
        self._last_batch_metrics = {"mae": (pred - y).abs().mean().item()}
        return F.mse_loss(pred, y)


def test_forward_batch_override_with_dict_batches(tmp_path):
    loader = _regression()
    items = [{"x": x, "y": y} for x, y in loader.dataset]
    dl = DataLoader(items, batch_size=8)  # default collate: dict of stacked tensors
    tr = DictTrainer(nn.Linear(4, 1), TrainParams(epochs=3, lr=0.05), out_dir=tmp_path, progress=False, plots=False)
    hist = tr.fit(dl, dl)
    assert "train_mae" in hist[0] and "val_mae" in hist[0] and hist[-1]["val_mae"] < hist[0]["val_mae"]
    path = tr.save_checkpoint(tmp_path)
    assert re.fullmatch(r"dict_weights\.loss_\d+\.\d{6}\.\d{8}_\d{6}\.safetensors", path.name)
    assert f"{tr.best_loss:.6f}" in path.name
    cfg = json.loads((tmp_path / "dict_config.json").read_text())
    assert cfg["weights"] == path.name and cfg["train"]["epochs"] == 3 and cfg["trainer"] == "DictTrainer"
    m = T.load_checkpoint(nn.Linear(4, 1), path)
    assert torch.equal(m.weight, tr.model.weight)


def test_trainer_registry():
    cls = T.ModelAutoEncoderTrainer
    for name in ("modelautoencoder", "ModelAutoEncoderTrainer", "MODELAUTOENCODER", "model_autoencoder",
                 "modelautoencodertrainer"):
        assert T.get_trainer(name) is cls
    assert "ModelAutoEncoderTrainer" in T.list_trainers()
    with pytest.raises(KeyError, match="ModelAutoEncoderTrainer"):
        T.get_trainer("transformer")

    @T.register_trainer
    class TinyTestTrainer(T.Trainer):
        """Just for the test."""

    try:
        assert T.get_trainer("tinytest") is TinyTestTrainer
    finally:
        del T.TRAINERS["TinyTestTrainer"]


def test_cli_train_list(capsys):
    assert cli.main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert "ModelAutoEncoderTrainer" in out and "parameter vectors" in out


def test_train_autoencoder_from_run_cli(tmp_path, capsys):
    from ptmrec.paths import write_npz, write_text

    run = tmp_path / "run"
    V = _vectors(20)
    ids = np.array([f"m{i}" for i in range(20)])
    write_npz(run / "02_model_vectors" / "vectors-00000.npz", ids=ids, vectors=V)
    P = params.from_dict({"autoencoder": {"input_dim": 64, "code_dim": 8, "hidden": [32], "dropout": 0.0},
                          "train": {"epochs": 40, "batch_size": 8, "lr": 3e-3}}, name="tiny")
    write_text(run / "02_model_vectors" / "params.resolved.yaml", P.to_yaml())
    assert cli.main(["train", "ModelAutoEncoder", "--run", str(run), "--epochs", "30"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{\n"):])
    assert summary["params_file"].endswith("params.resolved.yaml") and summary["checkpoint"].startswith("autoencoder_weights")
    out = run / "train" / "ModelAutoEncoderTrainer"
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["epochs"]) <= 30 and len(hist["val_ids"]) == 4 and len(hist["train_ids"]) == 16
    assert hist["epochs"][-1]["train_loss"] < 0.5 * hist["epochs"][0]["train_loss"]  # it learns
    ae = ModelAutoEncoder.load(out / "autoencoder")
    assert ae.encode_numpy(V).shape == (20, 8)
    assert len(list(out.glob("autoencoder_weights.loss_*.safetensors"))) == 1
    assert (out / "autoencoder_config.json").is_file() and (out / "figures" / "autoencoder_loss.png").is_file()
    assert cli.main(["train", "nosuch", "--run", str(run)]) == 2
    with pytest.raises(ValueError, match="input_dim"):
        T.train_autoencoder(ids, V[:, :10], P.autoencoder, P.train, tmp_path / "x")
