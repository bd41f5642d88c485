"""The ranker (stage 06): dataset tokens and model tokens in, one score per model out.

- ``RankingData``: everything a ranker sees, aligned: model tokens [N_models, D_m], dataset
  tokens per task [M, D_d], and the measured accuracy [T, N_models] it learns to order.
- ``CombinedSimilarityDataset`` / ``build_combined_similarity_loader``: one item per task; the
  batch holds ``dataset_tokens`` (B, M, D_d) padded with ``dataset_mask`` (B, M; True = pad),
  ``model_tokens`` (B, N, D_m), ``true_ranks`` (B, N; 0 = best), ``true_scores`` (B, N),
  ``model_names``, ``dataset_names``, ``model_indices`` (B, N), ``dataset_splits``, ``batch_size``.
- ``RankingCrossAttentionTransformer``: dataset tokens are the source (a transformer encoder),
  model tokens the target (a transformer decoder: self-attention across the candidate models,
  cross-attention to the dataset); a linear head gives a score per model.
- ``CustomSimilarityTransformer``: the encoded dataset, pooled, is one query of a multi-head
  cross-attention over the model tokens; its attention weights are a distribution over models
  (log-probabilities are returned as scores).
- The dataset-neighbour prior (``neighbour_tables``, ``set_neighbours``): the z-scored accuracies of the
  training tasks, weighted by how close their mean CLIP token is to the target's (kernel regression over
  tasks, the meta-learning prior of collaborative-filtering recommenders); after training, the head is moved
  towards it by an inner-validated weight.
- ``RankingLoss``: listwise ListNet (Cao et al., ICML 2007) or ListMLE (Xia et al., ICML 2008),
  or pairwise RankNet-style logistic loss (Burges et al., ICML 2005).

Ablations are settings of ``RankerParams``: ``model_tokens="ids"`` (a learned embedding per
model instead of its weights: cannot rank a model it never saw), ``"vectors"`` (raw stage-02
vectors instead of autoencoder codes), ``dataset_tokens=False`` (a learned constant).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .params import RankerParams, TrainParams
from .registry import Registry
from .serve import RANKER_FORMAT as FORMAT  # the saved folder's version (serve: read without torch)
from .tokens import subsample_tokens
from .train import Trainer, register_trainer, split_ids


# ------------------------------------------------------------------------------- data


@dataclass
class RankingData:
    """Aligned inputs of the ranker; rows of ``accuracy`` follow ``task_ids``, columns ``model_ids``."""

    model_ids: list[str]
    model_tokens: np.ndarray  # float32 [N_models, D_m]
    task_ids: list[str]
    dataset_tokens: dict[str, np.ndarray]  # task_id -> float32 [M, D_d]
    accuracy: np.ndarray  # float [T, N_models]; NaN where not measured
    datasets: dict[str, str]  # task_id -> source dataset name (for leave-datasets-out folds)
    dataset_labels: dict[str, np.ndarray] = field(default_factory=dict)  # task_id -> class of each token [M]
    evidence: np.ndarray | None = None  # float32 [T, N_models, F]: estimator scores of a forward pass; NaN = none
    evidence_names: list[str] = field(default_factory=list)  # [F] the estimators behind the evidence columns
    probe_seconds: np.ndarray | None = None  # float [T, N_models]: forward pass + those estimators, per model
    forward_seconds: np.ndarray | None = None  # float [T, N_models]: the forward pass alone
    evidence_seconds: np.ndarray | None = None  # float [T, N_models, F]: each estimator alone

    def accuracy_of(self, task_id: str) -> np.ndarray:
        return self.accuracy[self.task_ids.index(task_id)]

    def labels_of(self, task_id: str) -> np.ndarray:
        """The class of each dataset token of ``task_id`` [M] (one class for all when unknown)."""
        return self.dataset_labels.get(task_id, np.zeros(len(self.dataset_tokens[task_id]), np.int64))


MODEL_TOKENS = Registry("model token kind")  # ranker.model_tokens -> fn(run) -> (model ids, tokens [N, D])


@MODEL_TOKENS.register("autoencoder")
def _autoencoder_codes(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Stage 03's codes [N, D_code]."""
    with np.load(run / "03_autoencoder" / "tokens.npz") as z:
        return z["ids"], z["tokens"]


MODEL_TOKENS.add("ids", _autoencoder_codes)  # learned ids: the codes are read (unused) so every variant sees one zoo


@MODEL_TOKENS.register("vectors")
def _raw_vectors(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Stage 02's raw parameter vectors [N, length]."""
    from .extract import load_vectors

    return load_vectors(run / "02_model_vectors")


@MODEL_TOKENS.register("behaviour")
def _behaviour_tokens(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Stage 02's behaviour tokens [N, D_b]."""
    with np.load(run / "02_model_vectors" / "behaviour.npz") as z:
        return z["ids"], z["tokens"]


@MODEL_TOKENS.register("both")
def _codes_and_behaviour(run: Path) -> tuple[list[str], np.ndarray]:
    """The codes and the behaviour tokens side by side, [N, D_code + D_b], for models that have both."""
    cids, codes = _autoencoder_codes(run)
    bids, beh = _behaviour_tokens(run)
    row = {m: i for i, m in enumerate(bids)}
    keep = [k for k, m in enumerate(cids) if m in row]
    ids = [cids[k] for k in keep]
    return ids, np.hstack([codes[keep], beh[[row[m] for m in ids]]])


def model_token_table(run: Path, kind: str) -> tuple[list[str], np.ndarray]:
    """(model ids, tokens [N, D]) of a run, read by the registered kind ``kind`` (``MODEL_TOKENS``)."""
    ids, tokens = MODEL_TOKENS.get(kind)(Path(run))
    return [str(i) for i in ids], np.asarray(tokens, np.float32)


def load_ranking_data(run: Path, target_method: str, seed: int, model_tokens: str = "autoencoder") -> RankingData:
    """Read stages 00-04 of ``run`` into a RankingData (models with tokens and ground truth only)."""
    from .groundtruth import measured
    from .tokens import read_token_shards

    run = Path(run)
    ids, tokens = model_token_table(run, model_tokens)
    perf = measured(pd.read_csv(run / "01_groundtruth" / "performance.csv"), target_method, seed)
    acc = perf.pivot_table(index="task_id", columns="model_id", values="accuracy")
    keep = [k for k, m in enumerate(ids) if m in acc.columns]
    ids = [ids[k] for k in keep]
    tasks = pd.read_csv(run / "00_zoo_and_tasks" / "tasks" / "index.csv")
    shards = read_token_shards(run / "04_dataset_tokens")
    task_ids = [t for t in tasks.task_id if t in acc.index and t in shards]
    return RankingData(model_ids=ids, model_tokens=tokens[keep], task_ids=task_ids,
                       dataset_tokens={t: shards[t]["tokens"] for t in task_ids},
                       accuracy=acc.loc[task_ids, ids].to_numpy(float),
                       datasets=dict(zip(tasks.task_id, tasks.dataset)),
                       dataset_labels={t: shards[t]["labels"] for t in task_ids})


def zscore(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """``x`` standardised along ``axis`` (NaN-aware; a constant slice gives 0, NaN gives 0)."""
    mu, sd = np.nanmean(x, axis, keepdims=True), np.nanstd(x, axis, keepdims=True)
    return np.nan_to_num((x - mu) / np.where(sd > 1e-12, sd, 1.0))


def evidence_ridge(data: RankingData, tasks: list[str], models: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Ridge weights [F + 1] (bias last): a model's accuracy z-scored within its task from its estimator scores
    z-scored within the task, fitted on ``tasks`` x ``models`` (the stacking reference, and the start of the
    ranker's evidence read-out)."""
    rows = [data.task_ids.index(t) for t in tasks]
    x = np.concatenate([zscore(data.evidence[r][models]) for r in rows])  # [T * N, F]
    y = np.concatenate([zscore(data.accuracy[r][models]) for r in rows])  # [T * N]
    x1 = np.column_stack([x, np.ones(len(x))])
    reg = alpha * np.eye(x1.shape[1])
    reg[-1, -1] = 0.0  # the bias is not shrunk
    return np.linalg.solve(x1.T @ x1 + reg, x1.T @ y)


def probe_mask(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random probed set for training, bool [n]: none (1/4 of draws), all (1/4), or k ~ U{1..n-1} random models,
    so that one ranker learns to serve any number of probed models."""
    u = rng.random()
    k = 0 if u < 0.25 else n if u < 0.5 else int(rng.integers(1, max(n, 2)))
    mask = np.zeros(n, bool)
    mask[rng.choice(n, min(k, n), replace=False)] = True
    return mask


def standardize_evidence(raw: np.ndarray, probed: np.ndarray, finite: bool = False) -> np.ndarray:
    """Estimator scores [N, F] -> float32 [N, F] z-scored within the task over the probed models only.

    Unprobed models, a missing score (NaN) and a task with fewer than two probed models give 0: only what
    the k forward passes of a recommendation can know enters, on a scale that does not depend on the task.
    ``finite``: the caller knows ``raw`` has no NaN or inf (the same numbers, without NaN-aware reductions).
    """
    out = np.zeros(raw.shape, np.float32)
    if probed.sum() < 2:
        return out
    x = raw[probed].astype(np.float64)  # [k, F]
    if finite:
        mu, sd = x.mean(0), x.std(0)
        out[probed] = np.clip((x - mu) / np.where(sd > 1e-12, sd, 1.0), -5, 5)
        return out
    mu, sd = np.nanmean(x, 0), np.nanstd(x, 0)
    z = np.where(np.isfinite(x), (x - mu) / np.where(sd > 1e-12, sd, 1.0), 0.0)
    out[probed] = np.clip(z, -5, 5)
    return out


def true_ranks(accuracy: np.ndarray) -> np.ndarray:
    """Rank of each model by accuracy [N] -> int [N], 0 = best; ties share the better rank."""
    neg = -np.asarray(accuracy, float)
    return np.searchsorted(np.sort(neg), neg, side="left").astype(np.int64)  # models strictly better: the rank


class CombinedSimilarityDataset(Dataset):
    """One item per task: its dataset tokens, the candidate models' tokens and their true ranks.

    ``models`` (indices into ``data.model_ids``) are the candidates: all of them, or a subset
    in leave-models-out. ``max_tokens`` caps the dataset tokens per task with ``subsample_tokens``
    (class-balanced); with ``sample=True`` (training) a fresh random subset is drawn every time an
    item is read, a cheap augmentation; otherwise the evenly spaced one that ``recommend`` uses too.
    """

    def __init__(self, data: RankingData, task_ids: list[str], models: np.ndarray | None = None,
                 split: str = "train", max_tokens: int = 64, sample: bool = False, seed: int = 0,
                 probed: dict[str, np.ndarray] | None = None):
        self.data, self.task_ids, self.split = data, list(task_ids), split
        self.models = np.arange(len(data.model_ids)) if models is None else np.asarray(models)
        self.max_tokens, self.sample = max_tokens, sample
        self.rng = np.random.default_rng(seed)
        self.probed = probed  # task_id -> bool [N] over ``models``: which were run on the task (evidence)
        # one candidate list for every item: built once and shared (``collate`` then expands it, no copy; raw
        # 8192-dim vectors made a copy per item and per batch cost a third of a training step)
        self.model_tokens = torch.from_numpy(np.ascontiguousarray(data.model_tokens[self.models]))  # [N, D_m]
        self.model_indices = torch.from_numpy(self.models.astype(np.int64))
        self.model_names = [data.model_ids[k] for k in self.models]
        self._static: dict[str, dict[str, Any]] = {}  # task id -> what every read of it shares (see _task)

    def __len__(self) -> int:
        return len(self.task_ids)

    def _task(self, t: str) -> dict[str, Any]:
        """What does not change between reads of task ``t``, built on its first read: its labels, accuracies,
        true ranks and raw evidence over ``models``, and without ``sample`` its (fixed) token subset. An epoch
        reads every task; rebuilding these on every read took a third of each read's time."""
        if t not in self._static:
            row = self.data.task_ids.index(t)
            acc = self.data.accuracy[row][self.models]  # [N]
            st = dict(labels=self.data.labels_of(t), true_scores=torch.from_numpy(acc.astype(np.float32)),
                      true_ranks=torch.from_numpy(true_ranks(acc)))
            if self.data.evidence is not None:
                raw = self.data.evidence[row][self.models]  # [N, F]
                st.update(raw=raw, raw_finite=bool(np.isfinite(raw).all()))
            if not self.sample:
                st["tokens"] = torch.from_numpy(self.data.dataset_tokens[t][subsample_tokens(st["labels"], self.max_tokens)])
            self._static[t] = st
        return self._static[t]

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = self.task_ids[i]
        st = self._task(t)
        if self.sample:  # a fresh class-balanced subset [<= max_tokens, D_d] per read
            tokens = torch.from_numpy(self.data.dataset_tokens[t][subsample_tokens(st["labels"], self.max_tokens, self.rng)])
        else:
            tokens = st["tokens"]
        item = dict(dataset_tokens=tokens, model_tokens=self.model_tokens, true_scores=st["true_scores"],
                    true_ranks=st["true_ranks"], model_names=self.model_names, dataset_name=t,
                    model_indices=self.model_indices, dataset_split=self.split)
        if self.data.evidence is not None:
            probed = self.probed.get(t) if self.probed is not None else None
            if probed is None:  # training: a random number of random models probed (see probe_mask)
                probed = probe_mask(len(self.models), self.rng) if self.sample else np.zeros(len(self.models), bool)
            item.update(evidence=torch.from_numpy(standardize_evidence(st["raw"], probed, st["raw_finite"])),
                        probed=torch.from_numpy(probed))
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items; pad dataset tokens to the longest task, with ``dataset_mask`` True on padding."""
    m = max(len(it["dataset_tokens"]) for it in items)
    d = items[0]["dataset_tokens"].shape[1]
    tokens = torch.zeros(len(items), m, d)
    mask = torch.ones(len(items), m, dtype=torch.bool)
    for b, it in enumerate(items):
        k = len(it["dataset_tokens"])
        tokens[b, :k], mask[b, :k] = it["dataset_tokens"], False

    def stack(key: str) -> torch.Tensor:  # [B, ...]; one tensor shared by every item: a view, not B copies
        first = items[0][key]
        if all(it[key] is first for it in items):
            return first.unsqueeze(0).expand(len(items), *first.shape)
        return torch.stack([it[key] for it in items])

    out = dict(dataset_tokens=tokens, dataset_mask=mask, model_tokens=stack("model_tokens"),
               true_ranks=stack("true_ranks"), true_scores=stack("true_scores"),
               model_names=[it["model_names"] for it in items], dataset_names=[it["dataset_name"] for it in items],
               model_indices=stack("model_indices"), dataset_splits=[it["dataset_split"] for it in items],
               batch_size=len(items))
    if "evidence" in items[0]:
        out.update(evidence=stack("evidence"), probed=stack("probed"))
    return out


def build_combined_similarity_loader(data: RankingData, task_ids: list[str], models: np.ndarray | None = None,
                                     split: str = "train", batch_size: int = 16, shuffle: bool = False,
                                     max_tokens: int = 64, sample: bool = False, seed: int = 0,
                                     probed: dict[str, np.ndarray] | None = None) -> DataLoader:
    """A DataLoader of CombinedSimilarityDataset batches (see the module docstring for the keys)."""
    ds = CombinedSimilarityDataset(data, task_ids, models, split, max_tokens, sample, seed, probed)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=gen)


# ------------------------------------------------------------------------------ models


@dataclass
class RankerConfig(RankerParams):
    """RankerParams plus the sizes the data fixes: everything needed to rebuild a ranker, saved as config.json
    beside its weights (training-only settings such as ``loss`` travel along, so a saved ranker says how it was
    trained)."""

    model_dim: int = 0  # D_m of the model tokens (ignored for model_tokens="ids")
    dataset_dim: int = 0  # D_d of the dataset tokens
    n_models: int = 0  # size of the learned id table (model_tokens="ids")
    evidence_dim: int = 0  # F: estimator features of probed models (0 = none)

    @classmethod
    def from_params(cls, rp: RankerParams, model_dim: int, dataset_dim: int, n_models: int,
                    evidence_dim: int = 0) -> "RankerConfig":
        return cls(**dataclasses.asdict(rp), model_dim=model_dim, dataset_dim=dataset_dim, n_models=n_models,
                   evidence_dim=evidence_dim)


def attention_dropout(module: nn.Module, p: float) -> nn.Module:
    """Set the dropout on the attention weights of every nn.MultiheadAttention in ``module`` to ``p`` (torch's
    transformer layers take one dropout for everything); returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = p
    return module


class FastDropout(nn.Module):
    """Inverted dropout (drop with probability ``p``, scale the rest by 1 / (1 - p)) whose CPU masks are 16-bit
    draws of numpy's PCG64, seeded from torch's generator so that ``torch.manual_seed`` still fixes every mask.

    Why not nn.Dropout: torch's CPU ``bernoulli_`` draws one Mersenne-Twister number per element; it took 13% of
    a ranker training step on this machine's CPUs, and the masks below cost about a quarter of that (a training
epoch of the default ranker: 1.11x faster, benchmarks/ranker_step.py). ``p`` is rounded
    to a multiple of 1/65536 (0.1 -> 0.100006). Off the CPU it is ``F.dropout``.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p {p}: must be in [0, 1)")
        self.p, self.cut = p, round(p * 65536)  # a 16-bit draw below ``cut`` drops its element

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cut == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        seed = int(torch.randint(0, 2**62, (1,)))  # from torch's generator: seeded runs repeat
        bits = np.random.Generator(np.random.PCG64(seed)).integers(0, 65536, x.numel(), np.uint16)
        keep = torch.from_numpy(bits >= self.cut).view(x.shape)
        return x * keep.to(x.dtype).mul_(65536 / (65536 - self.cut))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def fast_dropout(module: nn.Module) -> nn.Module:
    """Replace every nn.Dropout inside ``module`` (torch's transformer layers make their own) by a
    ``FastDropout`` of the same p; returns ``module``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))
    return module


class _Inputs(nn.Module):
    """Shared front end: project model tokens (or look up ids) and dataset tokens to d_model."""

    def __init__(self, cfg: RankerConfig):
        super().__init__()
        d = cfg.d_model
        self.model_in = (nn.Embedding(cfg.n_models, d) if cfg.model_tokens == "ids"
                         else nn.Sequential(nn.LayerNorm(cfg.model_dim), nn.Linear(cfg.model_dim, d)))
        self.data_in = nn.Sequential(nn.LayerNorm(cfg.dataset_dim), nn.Linear(cfg.dataset_dim, d))
        self.null = nn.Parameter(torch.zeros(1, 1, d))  # the dataset "token" when dataset tokens are off
        if cfg.evidence_dim:  # what a forward pass on the target says about a probed model, added to its token
            self.evidence_in = nn.Linear(cfg.evidence_dim, d)
            self.probed_flag = nn.Parameter(torch.zeros(d))
            # and read out straight into its score: the ranker can always fall back on a learned weighting of
            # the estimators (zeros: no random draw, so the rest of the ranker initialises as without it)
            self.evidence_out = nn.Parameter(torch.zeros(cfg.evidence_dim))
        # how much the token head counts beside that read-out, by the share of candidates probed: rows (share,
        # weight) [C, 2], interpolated. A buffer, never trained: all ones until inner validation chooses the
        # weights (protocol.inner_choice -> set_trust), because on its own training tasks the head always helps
        self.register_buffer("trust", torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
        # the dataset-neighbour prior (set_neighbours): per training task its centred, unit-norm mean dataset token
        # [T, D_d] and its models' accuracies z-scored within it [T, n_models] (0 where unmeasured); which models
        # were measured [n_models]; (weight, temperature). Buffers, never trained: weight 0 (as while training)
        # leaves the head as it is
        self.register_buffer("neighbour_centre", torch.zeros(cfg.dataset_dim))
        self.register_buffer("neighbour_keys", torch.zeros(0, cfg.dataset_dim))
        self.register_buffer("neighbour_values", torch.zeros(0, cfg.n_models))
        self.register_buffer("neighbour_seen", torch.zeros(cfg.n_models))
        self.register_buffer("neighbour_mix", torch.tensor([0.0, 1.0]))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, cfg.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        attention_dropout(self.encoder, cfg.attention_dropout)
        self.cfg = cfg

    def models(self, model_tokens: torch.Tensor, model_indices: torch.Tensor | None,
               evidence: torch.Tensor | None = None, probed: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N, D_m] tokens (or [B, N] ids), evidence [B, N, F] of the ``probed`` [B, N] models -> [B, N, d]."""
        if self.cfg.model_tokens == "ids":
            h = self.model_in(model_indices)
        elif len(model_tokens) > 1 and (model_tokens.stride(0) == 0 or
                                        torch.equal(model_tokens[1:], model_tokens[:1].expand_as(model_tokens[1:]))):
            # one candidate list for the whole batch (training, evaluation): project it once, not B times; with
            # raw 8192-dim vectors this projection was half of a training step
            h = self.model_in(model_tokens[:1]).expand(len(model_tokens), -1, -1)
        else:
            h = self.model_in(model_tokens)
        if self.cfg.evidence_dim and evidence is not None and probed is not None:
            on = probed.unsqueeze(-1).to(h.dtype)  # [B, N, 1]: unprobed models get nothing added
            h = h + on * (self.evidence_in(evidence) + self.probed_flag)
        return h

    def evidence_score(self, evidence: torch.Tensor | None, probed: torch.Tensor | None) -> torch.Tensor | float:
        """[B, N]: the linear read-out of each probed model's evidence [B, N, F], 0 for the others (and without any)."""
        if not self.cfg.evidence_dim or evidence is None or probed is None:
            return 0.0
        return (evidence @ self.evidence_out) * probed.to(evidence.dtype)

    def combine(self, head: torch.Tensor, evidence: torch.Tensor | None, probed: torch.Tensor | None) -> torch.Tensor:
        """The score [B, N]: the token head [B, N], weighted by ``trust`` at each list's share of probed models,
        plus the evidence read-out. Without evidence, or with none probed (share 0, weight 1), the head alone."""
        if not self.cfg.evidence_dim or evidence is None or probed is None:
            return head
        return self.head_weight(probed) * head + self.evidence_score(evidence, probed)

    def with_neighbours(self, head: torch.Tensor, dataset_tokens: torch.Tensor, mask: torch.Tensor | None,
                        model_indices: torch.Tensor | None) -> torch.Tensor:
        """The token head [B, N] moved towards the dataset-neighbour prior by its weight λ: on each list's measured
        candidates, (1 - λ) head + λ (the prior z-scored, on the head's mean and spread); the others keep the head."""
        if model_indices is None or len(self.neighbour_keys) == 0 or float(self.neighbour_mix[0]) == 0.0:
            return head
        prior = self.neighbour_prior(dataset_tokens, mask).gather(1, model_indices)  # [B, N]
        seen = self.neighbour_seen[model_indices]  # [B, N] 1 = measured in training
        n = seen.sum(-1, keepdim=True).clamp(min=1.0)

        def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # over the measured candidates, [B, 1]
            mu = (x * seen).sum(-1, keepdim=True) / n
            return mu, (((x - mu) ** 2 * seen).sum(-1, keepdim=True) / n).sqrt()

        (mh, sh), (mp, sp) = moments(head), moments(prior)
        target = mh + sh * (prior - mp) / sp.clamp(min=1e-6)
        return head + self.neighbour_mix[0] * seen * (target - head)

    def neighbour_prior(self, dataset_tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[B, n_models]: the training tasks' z-scored accuracies, weighted by a softmax (at the temperature) of
        the cosine between their mean dataset token and that of ``dataset_tokens`` [B, M, D_d], both centred."""
        keep = torch.ones_like(dataset_tokens[..., 0]) if mask is None else (~mask).to(dataset_tokens.dtype)  # [B, M]
        query = (dataset_tokens * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)  # [B, D_d]
        query = F.normalize(query - self.neighbour_centre, dim=-1)
        w = torch.softmax(query @ self.neighbour_keys.T / self.neighbour_mix[1], dim=-1)  # [B, T]
        return w @ self.neighbour_values

    def head_weight(self, probed: torch.Tensor) -> torch.Tensor:
        """[B, 1]: the token head's weight for each list of ``probed`` [B, N] models, ``trust`` at their share."""
        return trust_weight(probed.float().mean(-1, keepdim=True), self.trust)

    def dataset(self, dataset_tokens: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, M, D_d] -> encoded memory [B, M, d] and its padding mask (or the null token)."""
        if not self.cfg.dataset_tokens:
            return self.null.expand(len(dataset_tokens), 1, -1), None
        return self.encoder(self.data_in(dataset_tokens), src_key_padding_mask=mask), mask


def trust_weight(share: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The token head's weight at each ``share`` of candidates probed (any shape): ``table`` [C, 2] of (share,
    weight) rows, shares ascending from 0 to 1, interpolated linearly between them."""
    xs, ws = table[:, 0].contiguous(), table[:, 1]
    i = torch.searchsorted(xs, share.clamp(0.0, 1.0).contiguous(), right=True).clamp(1, len(xs) - 1)
    lo = (share - xs[i - 1]) / (xs[i] - xs[i - 1]).clamp(min=1e-12)
    return ws[i - 1] + (ws[i] - ws[i - 1]) * lo.clamp(0.0, 1.0)


def neighbour_tables(data: RankingData, tasks: list[str], models: np.ndarray) -> dict[str, np.ndarray]:
    """The dataset-neighbour prior's tables from ``tasks`` x ``models`` (training data only: it reads their
    measured accuracies): centre [D_d], keys [T, D_d], values [T, N_all] (accuracy z-scored within each task over
    ``models``, 0 elsewhere) and seen [N_all]."""
    from . import audit

    audit.seen("neighbour prior", tasks, [data.model_ids[i] for i in models])
    means = np.stack([data.dataset_tokens[t].mean(0) for t in tasks]).astype(np.float64)  # [T, D_d]
    centre = means.mean(0)
    keys = means - centre
    keys /= np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    values = np.zeros((len(tasks), len(data.model_ids)))
    values[:, models] = zscore(data.accuracy[[data.task_ids.index(t) for t in tasks]][:, models], 1)
    seen = np.zeros(len(data.model_ids))
    seen[models] = 1.0
    return dict(centre=centre, keys=keys, values=values, seen=seen)


def set_neighbours(model: nn.Module, tables: dict[str, np.ndarray] | None, weight: float = 0.0,
                   temperature: float = 1.0) -> nn.Module:
    """Give ``model`` the dataset-neighbour prior (``neighbour_tables``) at ``weight`` (0: the head alone, 1: the
    prior alone, on the measured candidates) and softmax ``temperature``; None leaves it as it is."""
    if tables is None:
        return model
    if not 0.0 <= weight <= 1.0 or temperature <= 0:
        raise ValueError(f"neighbour weight {weight} must be in [0, 1] and temperature {temperature} positive")
    inp = model.inputs
    for name in ("centre", "keys", "values", "seen"):
        setattr(inp, f"neighbour_{name}", torch.as_tensor(np.asarray(tables[name]), dtype=torch.float32,
                                                         device=inp.trust.device))
    inp.neighbour_mix = torch.tensor([float(weight), float(temperature)], device=inp.trust.device)
    return model


def set_trust(model: nn.Module, table: Any) -> nn.Module:
    """Give ``model`` the token head's weights by share of probed models, rows (share, weight) [C, 2] (from
    ``protocol.inner_choice``); None leaves it as it is."""
    if table is None:
        return model
    t = torch.as_tensor(np.asarray(table, np.float32)).reshape(-1, 2)
    if len(t) < 2 or t[0, 0] != 0.0 or t[-1, 0] != 1.0 or bool((t[1:, 0] <= t[:-1, 0]).any()):
        raise ValueError(f"trust table {t.tolist()}: shares must rise from 0 to 1")
    model.inputs.trust = t.to(model.inputs.trust.device)
    return model


class InducedDecoderLayer(nn.Module):
    """A pre-norm decoder layer whose candidates exchange information through ``m`` learned inducing points
    (the ISAB of Set Transformer, Lee et al., ICML 2019) instead of full self-attention: the m points attend
    to the N candidates, the candidates attend back to those m summaries, then to the dataset memory.
    Cost O(N m + N M) instead of O(N^2): a hub of 100,000 candidates fits in one pass."""

    def __init__(self, d: int, heads: int, ff: int, dropout: float, m: int):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, m, d) * 0.02)  # [1, m, d]
        attn = lambda: nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)  # noqa: E731
        self.pool, self.back, self.cross = attn(), attn(), attn()
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(4))
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, d] candidates, memory [B, M, d] -> [B, N, d]."""
        h = self.norms[0](x)
        summary = self.pool(self.inducing.expand(len(x), -1, -1), h, h, need_weights=False)[0]  # [B, m, d]
        x = x + self.drop(self.back(self.norms[1](x), summary, summary, need_weights=False)[0])
        h = self.norms[2](x)
        x = x + self.drop(self.cross(h, memory, memory, key_padding_mask=memory_key_padding_mask, need_weights=False)[0])
        return x + self.drop(self.ff(self.norms[3](x)))


CANDIDATE_ATTENTION = Registry("candidate attention")  # ranker.candidate_attention -> fn(cfg) -> the decoder


@CANDIDATE_ATTENTION.register("full")
def _full_decoder(cfg: RankerConfig) -> nn.Module:
    """Pre-norm transformer decoder layers: self-attention across the candidates, O(N^2)."""
    d = cfg.d_model
    layer = nn.TransformerDecoderLayer(d, cfg.heads, 2 * d, cfg.dropout, batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, cfg.layers)


@CANDIDATE_ATTENTION.register("induced")
def _induced_decoder(cfg: RankerConfig) -> nn.Module:
    """``InducedDecoderLayer`` s through ``cfg.inducing`` learned points, O(N)."""
    d = cfg.d_model
    return nn.ModuleList(InducedDecoderLayer(d, cfg.heads, 2 * d, cfg.dropout, cfg.inducing) for _ in range(cfg.layers))


class RankingCrossAttentionTransformer(nn.Module):
    """Dataset tokens as source (encoder), model tokens as target (decoder); a score per model.

    ``candidate_attention``: ``full`` self-attention across the candidates (O(N^2)), or ``induced`` through
    ``inducing`` learned points (``InducedDecoderLayer``, O(N)).
    """

    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.cfg, d = cfg, cfg.d_model
        self.inputs = _Inputs(cfg)
        self.decoder = attention_dropout(CANDIDATE_ATTENTION.get(cfg.candidate_attention)(cfg), cfg.attention_dropout)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def forward(self, model_tokens: torch.Tensor, dataset_tokens: torch.Tensor, dataset_mask: torch.Tensor | None = None,
                model_indices: torch.Tensor | None = None, evidence: torch.Tensor | None = None,
                probed: torch.Tensor | None = None) -> torch.Tensor:
        """-> scores [B, N], higher = predicted to transfer better."""
        memory, mask = self.inputs.dataset(dataset_tokens, dataset_mask)  # [B, M, d]
        out = self.inputs.models(model_tokens, model_indices, evidence, probed)  # [B, N, d]
        if isinstance(self.decoder, nn.ModuleList):
            for layer in self.decoder:
                out = layer(out, memory, memory_key_padding_mask=mask)
        else:
            out = self.decoder(out, memory, memory_key_padding_mask=mask)  # [B, N, d]
        head = self.inputs.with_neighbours(self.head(out).squeeze(-1), dataset_tokens, dataset_mask, model_indices)
        return self.inputs.combine(head, evidence, probed)


class CustomSimilarityTransformer(nn.Module):
    """The pooled, encoded dataset queries the models with multi-head cross-attention.

    The attention weights (averaged over heads) are a distribution over the N models; their
    logarithm is the score, so the softmax of the scores is that distribution. The attention has
    no dropout: dropped weights would make the training scores logs of randomly zeroed probabilities.
    """

    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.cfg = cfg
        self.inputs = _Inputs(cfg)
        self.attn = nn.MultiheadAttention(cfg.d_model, cfg.heads, dropout=0.0, batch_first=True)

    def forward(self, model_tokens: torch.Tensor, dataset_tokens: torch.Tensor, dataset_mask: torch.Tensor | None = None,
                model_indices: torch.Tensor | None = None, evidence: torch.Tensor | None = None,
                probed: torch.Tensor | None = None) -> torch.Tensor:
        memory, mask = self.inputs.dataset(dataset_tokens, dataset_mask)  # [B, M, d]
        if mask is None:
            query = memory.mean(1, keepdim=True)  # [B, 1, d]
        else:
            keep = (~mask).unsqueeze(-1).float()  # [B, M, 1]
            query = (memory * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)
        keys = self.inputs.models(model_tokens, model_indices, evidence, probed)  # [B, N, d]
        _, weights = self.attn(query, keys, keys, need_weights=True, average_attn_weights=True)  # [B, 1, N]
        head = torch.log(weights.squeeze(1).clamp(min=1e-12))  # [B, N]
        head = self.inputs.with_neighbours(head, dataset_tokens, dataset_mask, model_indices)
        return self.inputs.combine(head, evidence, probed)


ARCHITECTURES = Registry.of("ranker architecture", {"cross_attention": RankingCrossAttentionTransformer,
                                                     "similarity": CustomSimilarityTransformer})


def build_ranker(cfg: RankerConfig) -> nn.Module:
    for key, reg in (("architecture", ARCHITECTURES), ("candidate_attention", CANDIDATE_ATTENTION),
                     ("model_tokens", MODEL_TOKENS)):
        if getattr(cfg, key) not in reg:
            raise ValueError(f"ranker.{key} '{getattr(cfg, key)}'; valid: {', '.join(reg)}")
    return fast_dropout(ARCHITECTURES[cfg.architecture](cfg))


# -------------------------------------------------------------------------------- loss


LOSSES = Registry("ranking loss")  # ranker.loss -> fn(scores [B, N], accuracies [B, N], temperature) -> scalar


@LOSSES.register("listnet")
def listnet_loss(scores: torch.Tensor, true_scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy between softmax(z / temperature), z the accuracies standardised within each list, and
    softmax(scores): ListNet's top-one probabilities (Cao et al. 2007)."""
    z = (true_scores - true_scores.mean(1, keepdim=True)) / true_scores.std(1, keepdim=True).clamp(min=1e-6)
    target = F.softmax(z / temperature, dim=1)
    return -(target * F.log_softmax(scores, dim=1)).sum(1).mean()


@LOSSES.register("listmle")
def listmle_loss(scores: torch.Tensor, true_scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Negative Plackett-Luce log-likelihood of the true order (Xia et al. 2008); ``temperature`` unused."""
    order = torch.argsort(true_scores, dim=1, descending=True)
    s = torch.gather(scores, 1, order)  # [B, N], best first
    tail = torch.logcumsumexp(s.flip(1), dim=1).flip(1)  # log sum_{j >= i} exp(s_j)
    return (tail - s).sum(1).mean()


@LOSSES.register("pairwise")
def pairwise_loss(scores: torch.Tensor, true_scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logistic loss on every pair whose accuracies differ, weighted by the gap (RankNet, Burges et al. 2005);
    ``temperature`` unused."""
    diff = true_scores.unsqueeze(2) - true_scores.unsqueeze(1)  # [B, N, N]: acc_i - acc_j
    pred = scores.unsqueeze(2) - scores.unsqueeze(1)
    w = diff.clamp(min=0)  # pairs where i truly beats j, weighted by the gap
    return (w * F.softplus(-pred)).sum((1, 2)).div(w.sum((1, 2)).clamp(min=1e-12)).mean()


class RankingLoss(nn.Module):
    """The registered loss ``kind`` (``LOSSES``) between predicted scores [B, N] and measured accuracies [B, N]
    of the same models."""

    def __init__(self, kind: str = "listnet", temperature: float = 0.5):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"ranker.loss '{kind}'; valid: {', '.join(LOSSES)}")
        self.kind, self.temperature, self.fn = kind, temperature, LOSSES.get(kind)

    def forward(self, scores: torch.Tensor, true_scores: torch.Tensor) -> torch.Tensor:
        return self.fn(scores, true_scores, self.temperature)


# ----------------------------------------------------------------------------- training


@register_trainer
class RankerTrainer(Trainer):
    """Trains a ranker on CombinedSimilarityDataset batches with RankingLoss (stage 06)."""

    name = "ranker"

    def __init__(self, model: nn.Module, loss: RankingLoss, *args: Any, **kwargs: Any):
        self.loss = loss
        super().__init__(model, *args, **kwargs)

    def _forward_batch(self, batch: dict[str, Any]) -> torch.Tensor:
        from . import audit

        # every id whose accuracy reaches the loss (training) or early stopping (validation)
        audit.seen("ranker", batch["dataset_names"], {m for names in batch["model_names"] for m in names})
        dev = self.device
        scores = self.model(*model_inputs(batch, dev))  # [B, N]
        truth = batch["true_scores"].to(dev)
        if not self.model.training:  # validation: how well the order is recovered, beside the loss
            from .metrics import weighted_tau

            s, t = scores.detach().cpu().numpy(), truth.cpu().numpy()
            self._last_batch_metrics["weighted_tau"] = float(np.mean([weighted_tau(a, b) for a, b in zip(t, s)]))
        return self.loss(scores, truth)


def validation_split(data: RankingData, tasks: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, validation) task ids for early stopping: whole datasets go to validation.

    ``round(fraction * n_datasets)`` datasets (at least one when there are two or more) are held
    out, so early stopping rewards what carries to a new dataset, not to a sibling task of a seen
    one. With tasks of a single dataset it falls back to a seeded split of the tasks.
    """
    names = sorted({data.datasets[t] for t in tasks})
    if len(names) < 2:
        tr, va = split_ids(len(tasks), fraction, seed)
        return [tasks[i] for i in tr], [tasks[i] for i in va]
    _, va = split_ids(len(names), fraction, seed)
    held = {names[i] for i in va}
    return [t for t in tasks if data.datasets[t] not in held], [t for t in tasks if data.datasets[t] in held]


def model_inputs(batch: dict[str, Any], device: str | torch.device = "cpu") -> tuple:
    """The positional inputs of a ranker's forward from a batch: tokens, mask, ids and, when present, evidence."""
    keys = ("model_tokens", "dataset_tokens", "dataset_mask", "model_indices", "evidence", "probed")
    return tuple(batch[k].to(device) if k in batch else None for k in keys)


def fit_ranker(data: RankingData, train_tasks: list[str], rp: RankerParams, tp: TrainParams,
               models: np.ndarray | None = None, seed: int = 0, out_dir: Path | None = None,
               device: str = "cpu", progress: bool = False) -> tuple[nn.Module, RankerTrainer]:
    """Train a ranker on ``train_tasks`` x ``models``; early stopping on held-out training datasets
    (``validation_split``)."""
    tr_tasks, va_tasks = validation_split(data, list(train_tasks), tp.val_fraction, seed)
    cfg = RankerConfig.from_params(rp, data.model_tokens.shape[1], next(iter(data.dataset_tokens.values())).shape[1],
                                   len(data.model_ids), 0 if data.evidence is None else data.evidence.shape[2])
    torch.manual_seed(seed)
    model = build_ranker(cfg)
    if cfg.evidence_dim:  # the evidence read-out starts as the ridge stacking of the estimators on the same data
        from . import audit

        every = np.arange(len(data.model_ids)) if models is None else np.asarray(models)
        audit.seen("evidence read-out", tr_tasks, [data.model_ids[i] for i in every])
        w = evidence_ridge(data, tr_tasks, every)[:-1]  # [F]; the bias moves every score alike: dropped
        with torch.no_grad():
            model.inputs.evidence_out.copy_(torch.as_tensor(w, dtype=torch.float32))
    trainer = RankerTrainer(model, RankingLoss(rp.loss), tp, out_dir, device=device, seed=seed,
                            plots=out_dir is not None, progress=progress)
    trainer.info = {"train_tasks": tr_tasks, "val_tasks": va_tasks}
    kw = dict(models=models, batch_size=tp.batch_size, max_tokens=rp.max_dataset_tokens, seed=seed)
    train_loader = build_combined_similarity_loader(data, tr_tasks, split="train", shuffle=True, sample=True, **kw)
    val_loader = build_combined_similarity_loader(data, va_tasks, split="val", **kw) if va_tasks else None
    trainer.fit(train_loader, val_loader)
    return model.eval(), trainer


@torch.no_grad()
def predict(model: nn.Module, data: RankingData, task_ids: list[str], models: np.ndarray | None = None,
            max_tokens: int = 64, probed: dict[str, np.ndarray] | None = None, batch_size: int = 1) -> pd.DataFrame:
    """Scores of ``models`` on each task: tidy (task_id, model_id, score, seconds per task).

    ``probed``: task_id -> bool [len(models)], the models run on the task whose evidence the ranker sees
    (none when absent: the prior alone). ``batch_size`` 1 times each task's forward alone, as one
    recommendation runs; larger batches (where no one reads the seconds: inner validation) charge each task
    its share of the batch.
    """
    model.eval()
    rows = []
    loader = build_combined_similarity_loader(data, task_ids, models, split="test", batch_size=batch_size,
                                              max_tokens=max_tokens, probed=probed)
    for batch in loader:
        t0 = time.perf_counter()
        scores = model(*model_inputs(batch))  # [B, N]
        secs = (time.perf_counter() - t0) / len(scores)
        rows += [dict(task_id=t, model_id=m, score=v, seconds=secs)
                 for t, names, s in zip(batch["dataset_names"], batch["model_names"], scores.tolist())
                 for m, v in zip(names, s)]
    return pd.DataFrame(rows)


def save_ranker(model: nn.Module, folder: Path, extra: dict[str, Any] | None = None,
                model_tokens: np.ndarray | None = None) -> Path:
    """config.json (RankerConfig + ``extra`` + ``format``) + model.safetensors in ``folder``; with the zoo's
    ``model_tokens`` [N, D_m] (in ``extra["model_ids"]`` order, cut at ``extra["max_dataset_tokens"]``) also
    ranker.onnx, the tokens-only ranking that ``ptmrec recommend`` runs without torch (``serve.export_ranker``)."""
    from safetensors.torch import save_file

    from . import serve
    from .paths import atomic_path, write_json

    folder, extra = Path(folder), dict(extra or {})
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    (folder / serve.RANKER_ONNX).unlink(missing_ok=True)  # never beside weights it was not exported from
    if model_tokens is not None:
        cut = int(extra.get("max_dataset_tokens", model.cfg.max_dataset_tokens))
        try:  # a CPU copy: the caller's model stays where it is
            err = serve.export_ranker(copy.deepcopy(model).cpu(), model_tokens, cut, folder)
            extra["onnx"] = dict(file=serve.RANKER_ONNX, sha256=serve.sha256(folder / serve.RANKER_ONNX), max_abs_diff=err)
        except (ValueError, RuntimeError) as e:  # recommend falls back to the torch ranker
            extra["onnx"] = {"skipped": " ".join(f"{type(e).__name__}: {e}".split())[:300]}
    write_json(folder / "config.json", {**dataclasses.asdict(model.cfg), **extra, "format": FORMAT})
    return folder


def load_ranker(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A ranker saved by ``save_ranker`` (safetensors: no code runs) and its full config dict."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for f in ("config.json", "model.safetensors"):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder / f}: missing; run stage 06_ranker of this run first")
    raw = json.loads((folder / "config.json").read_text())
    keys = {f.name for f in dataclasses.fields(RankerConfig)}
    model = build_ranker(RankerConfig(**{k: v for k, v in raw.items() if k in keys}))
    state = load_file(str(folder / "model.safetensors"))
    set_trust(model, state.setdefault("inputs.trust", model.inputs.trust))  # its length is the saved table's
    for name in ("centre", "keys", "values", "seen", "mix"):  # the neighbour prior's tables: their saved shapes
        key = f"inputs.neighbour_{name}"
        setattr(model.inputs, f"neighbour_{name}", state.setdefault(key, getattr(model.inputs, f"neighbour_{name}")))
    model.load_state_dict(state)
    return model.eval(), raw
