"""ModelAutoEncoder, the Trainer and its registry, ``ptmrec train``: small synthetic problems."""
from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ptmrec import cli, params
from ptmrec import autoencoder as A
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


def _hand_autoencoder(**cfg) -> ModelAutoEncoder:
    """2 -> 1 -> 2 linear autoencoder: code = z0, reconstruction = (z0, 0), z the standardised input;
    standardiser mean (1, 0), std (2, 2)."""
    ae = ModelAutoEncoder(AutoEncoderParams(input_dim=2, code_dim=1, hidden=[], dropout=0.0, **cfg))
    with torch.no_grad():
        ae.encoder[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        ae.encoder[0].bias.zero_()
        ae.decoder[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        ae.decoder[0].bias.zero_()
        ae.mean.copy_(torch.tensor([1.0, 0.0]))
        ae.std.copy_(torch.tensor([2.0, 2.0]))
    return ae


# x = [[3, 2], [1, -4]] -> z = [[1, 1], [0, -2]], code = [1, 0], reconstruction (standardised) [[1, 0], [0, 0]]:
# errors [[0, -1], [0, 2]]. In raw units the errors would be twice as large.
X_HAND = torch.tensor([[3.0, 2.0], [1.0, -4.0]])


@pytest.mark.parametrize("loss, penalty, recon", [
    ("mse", 0.0, (0 + 1 + 0 + 4) / 4),                 # mean of squared standardised errors
    ("mse", 0.5, (0 + 1 + 0 + 4) / 4),
    ("smooth_l1", 0.0, (0 + 0.5 + 0 + 1.5) / 4),       # |e| >= 1: |e| - 0.5 (beta 1)
    ("smooth_l1", 2.0, (0 + 0.5 + 0 + 1.5) / 4),
])
def test_autoencoder_loss_variants_by_hand(loss, penalty, recon):
    ae = _hand_autoencoder(reconstruction_loss=loss, code_l1_penalty=penalty)
    total, parts = ae.loss(X_HAND)
    code_l1 = (1 + 0) / 2                               # mean |code|
    assert parts == pytest.approx({"recon": recon, "code_l1": code_l1})
    assert total.item() == pytest.approx(recon + penalty * code_l1)
    recon_raw, code = ae(X_HAND)                         # forward: back in the input's units
    assert torch.allclose(code, torch.tensor([[1.0], [0.0]]))
    assert torch.allclose(recon_raw, torch.tensor([[3.0, 0.0], [1.0, 0.0]]))


def test_autoencoder_gradient_step_reduces_the_hand_loss():
    ae = _hand_autoencoder()
    total, _ = ae.loss(X_HAND)
    total.backward()
    # d loss / d decoder bias_k = sum over the batch of 2 (recon_k - z_k) / 4 (4 elements in the mean):
    # k = 0: errors 0, 0; k = 1: errors -1, +2 -> 2 (1) / 4, so the bias moves towards mean(z_1) = -0.5
    assert torch.allclose(ae.decoder[0].bias.grad, torch.tensor([0.0, 2 * (-1 + 2) / 4]))
    with torch.no_grad():
        for p in ae.parameters():
            p -= 0.1 * p.grad
    assert ae.loss(X_HAND)[0].item() < total.item()


def test_ranking_loss_variants_by_hand():
    """The Trainer's other loss (stage 06, ranker.RankingLoss), on one list of 3 models."""
    from ptmrec.ranker import RankingLoss

    truth = torch.tensor([[0.2, 0.9, 0.5]])
    scores = torch.tensor([[0.0, 1.0, 2.0]])
    sp = F.softplus
    # ListMLE: truth order 1, 2, 0 -> sum_i log sum_{j >= i} exp(s_j) - s_i
    listmle = (np.log(np.e + np.e ** 2 + 1) - 1) + (np.log(np.e ** 2 + 1) - 2) + 0.0
    assert RankingLoss("listmle")(scores, truth).item() == pytest.approx(listmle, rel=1e-6)
    # pairwise: (1 > 0) gap .7, score diff 1; (1 > 2) gap .4, diff -1; (2 > 0) gap .3, diff 2
    pairwise = (0.7 * sp(torch.tensor(-1.0)) + 0.4 * sp(torch.tensor(1.0)) + 0.3 * sp(torch.tensor(-2.0))) / 1.4
    assert RankingLoss("pairwise")(scores, truth).item() == pytest.approx(pairwise.item(), rel=1e-6)
    # ListNet: z = standardised truth (unbiased std), target = softmax(z / 0.5), cross-entropy with softmax(scores)
    t = np.array([0.2, 0.9, 0.5])
    z = (t - t.mean()) / t.std(ddof=1)
    target = np.exp(z / 0.5) / np.exp(z / 0.5).sum()
    logp = np.array([0.0, 1.0, 2.0]) - np.log(np.exp([0.0, 1.0, 2.0]).sum())
    assert RankingLoss("listnet")(scores, truth).item() == pytest.approx(-(target * logp).sum(), rel=1e-6)
    # a batch is the mean of its lists; scores in the true order cost less than reversed ones
    batch = torch.cat([truth, truth[:, [2, 0, 1]]])
    for kind in ("listnet", "listmle", "pairwise"):
        loss = RankingLoss(kind)
        s2 = torch.cat([scores, scores[:, [2, 0, 1]]])
        assert loss(s2, batch).item() == pytest.approx(loss(scores, truth).item(), rel=1e-6)
        assert loss(10 * truth, truth) < loss(-10 * truth, truth)
        flat = torch.zeros(1, 3, requires_grad=True)
        loss(flat, truth).backward()
        assert flat.grad[0, 1] < 0 < flat.grad[0, 0]  # gradient descent raises the best model, lowers the worst


def test_autoencoder_activation_choices():
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


class LrSpy(Scripted):
    """Records the learning rate every optimizer step of every epoch actually uses."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.used: dict[int, list[float]] = {}

    def _train_batch(self, batch):
        self.used.setdefault(self.epoch, []).append(self.optimizer.param_groups[0]["lr"])
        return super()._train_batch(batch)


# 8 epochs at lr 0.05. cosine: 0.05 (1 + cos(pi (e - 1) / 8)) / 2 in epoch e. plateau (patience
# max(1, 8 // 4) = 2, factor 0.5) under a constant validation loss: epoch 1 sets the best, epochs 2-4 are
# bad, so the lr halves after epoch 4 and again after epoch 7. none: constant.
LR_SCHEDULES = {  # every registered scheduler (the tests are parametrized over the registry)
    "cosine": [0.05 * (1 + math.cos(math.pi * e / 8)) / 2 for e in range(8)],
    "warmup_cosine": [0.05] + [0.05 * (1 + math.cos(math.pi * (e - 1) / 7)) / 2 for e in range(1, 8)],  # warm-up: 1 epoch
    "plateau": [0.05] * 4 + [0.025] * 3 + [0.0125],
    "none": [0.05] * 8,
}


@pytest.mark.parametrize("scheduler", T.SCHEDULERS.list())
def test_recorded_lr_is_the_lr_each_epoch_used(scheduler):
    tp = TrainParams(epochs=8, scheduler=scheduler, lr=0.05, early_stopping_patience=8)
    tr = LrSpy(nn.Linear(4, 1), tp, vals=[1.0] * 8, progress=False)
    hist = tr.fit(_regression(), _regression())
    assert len(hist) == 8 and not tr.stopped_early
    for rec in hist:
        used = tr.used[rec["epoch"]]
        assert len(used) == 4 and len(set(used)) == 1  # one lr per epoch (the scheduler steps per epoch)
        assert rec["lr"] == pytest.approx(used[0], rel=1e-12), rec["epoch"]
    assert [r["lr"] for r in hist] == pytest.approx(LR_SCHEDULES[scheduler], rel=1e-9)


@pytest.mark.parametrize("scheduler", T.SCHEDULERS.list())
def test_no_validation_trains_to_the_end_and_bad_scheduler(scheduler):
    tp = TrainParams(epochs=6, scheduler=scheduler, lr=0.05, early_stopping_patience=2)
    tr = Scripted(nn.Linear(4, 1), tp, vals=[], progress=False)
    hist = tr.fit(_regression())  # no val loader: no early stopping, best by training loss
    assert len(hist) == 6 and hist[-1]["val_loss"] is None and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert tr.best_epoch == int(np.argmin([r["train_loss"] for r in hist])) + 1
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
    cls = A.ModelAutoEncoderTrainer
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
                          "train_autoencoder": {"epochs": 40, "batch_size": 8, "lr": 3e-3},
                          "train_ranker": {"epochs": 2}}, name="tiny")
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
        A.train_autoencoder(ids, V[:, :10], P.autoencoder, P.train_autoencoder, tmp_path / "x")


def test_classifier_trainer_keeps_frozen_modules_and_follows_its_step_schedule():
    """The one training loop of the zoo and the ground truth's fine-tuning: frozen modules keep weights and
    BatchNorm statistics, the head learns 10x faster, warm-up + cosine reaches zero at the last step."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net = nn.Sequential()
    net.add_module("body", body)
    net.add_module("mid", nn.Linear(4, 4))
    net.add_module("head", nn.Linear(4, 2))
    before = {k: v.clone() for k, v in body.state_dict().items()}
    mid = net.mid.weight.detach().clone()
    x, y = torch.randn(8, 3, 6, 6), torch.tensor([0, 1] * 4)
    schedule = TrainParams(epochs=20, lr=1e-2, scheduler="warmup_cosine", grad_clip=0.0)
    trainer = T.ClassifierTrainer(net, schedule, frozen=[body], head_lr_scale=10.0)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([5e-3, 5e-2])  # warm-up: step 1 of 2
    history = trainer.fit_steps(iter([(x, y)] * 20))
    assert len(history) == 20 and all(0 <= h["correct"] <= 8 for h in history)
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())  # weights and running stats
    assert not torch.equal(mid, net.mid.weight) and not net.training
    assert trainer.optimizer.param_groups[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert not any(p.requires_grad for p in body.parameters())
    trainer.release()
    assert all(p.requires_grad for p in body.parameters())


def test_adamw_is_fused_and_steps_as_torch_adamw_does():
    """The fused optimizer of every trainer: same update as torch's reference AdamW (lr, weight decay and per-group
    learning rates passed through), and fused where the kernel exists."""
    from ptmrec.train import adamw

    torch.manual_seed(0)
    nets = [torch.nn.Linear(6, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    groups = lambda n: [{"params": [n.weight], "lr": 0.1}, {"params": [n.bias], "lr": 0.01}]  # noqa: E731
    opts = [adamw(groups(nets[0]), weight_decay=0.5), torch.optim.AdamW(groups(nets[1]), weight_decay=0.5)]
    assert opts[0].defaults["fused"] and not opts[1].defaults.get("fused")
    x, w0 = torch.randn(8, 6), nets[0].weight.detach().clone()
    for _ in range(3):
        for n, o in zip(nets, opts):
            o.zero_grad()
            n(x).pow(2).mean().backward()
            o.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(nets[0].weight, w0, atol=0.05)  # the steps moved the weights
