"""Behaviour tokens: a model described by what its features separate, on a fixed probe set of images.

    >>> probe = probe_set(P)                                    # images of datasets no task of the world uses
    >>> ids, tokens, columns = behaviour_tokens(zoo, zoo_dir, probe, parts=parts)   # [N_models, 2K + 2]

The weight tokens of stage 03 tell a model's family apart but not what it was trained on. A behaviour
token asks the model itself: its pooled features of a few images from each of K probe domains (emoji,
cut-outs, playing cards, silhouettes, handwriting, photo textures, desktop and UI icons, ...), and how
well those features separate the domain's classes. Per domain: leave-one-out 1-nearest-neighbour
accuracy (cosine, features standardised over the probe set) and the log ratio of between-class to
within-class scatter; over all domains: 1-NN accuracy at telling the domains apart, and the log
participation ratio (effective dimension) of the features. It needs no training, is the same for every
architecture, and is computed once per model when it enters the zoo, never on a target.

Held out means held out: probe images are the *source-role* images of datasets that are *not target
datasets* of the world (``probe_set`` drops any that is, saying so), so no held-out task's data reaches a
token. ProbeGen (Kahana et al., ICLR 2025) finds such probing beats weight statistics for learning on
model weights; the design here is ours.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .params import Params


@dataclass
class ProbeSet:
    """The probe images: uint8 [N, S, S, 3], class labels [N] (within the domain), domain index [N]."""

    images: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    domain_names: list[str]
    dropped: list[str]  # probe datasets left out because the world uses them as targets


def probe_set(P: Params) -> ProbeSet:
    """``extract.probe_classes`` classes x ``extract.probe_per_class`` source-role images of every probe dataset
    (``extract.probe_datasets``) that is not a target dataset of ``P``; seeded by ``run.seed``."""
    from .data import load_pool

    e = P.extract
    dropped = [d for d in e.probe_datasets if d in P.tasks.datasets]
    use = [d for d in e.probe_datasets if d not in P.tasks.datasets]
    if not use:
        raise ValueError(f"extract.probe_datasets {e.probe_datasets}: every one is a target dataset of this world "
                         "(tasks.datasets); behaviour tokens need probe images no task uses")
    rng = np.random.default_rng(P.run.seed)
    images, labels, domains = [], [], []
    for k, name in enumerate(use):
        pool = load_pool(name, "source", P.tasks.image_size, seed=P.run.seed, data=P.data)
        counts = np.bincount(pool.labels, minlength=len(pool.classes))
        full = np.flatnonzero(counts >= e.probe_per_class)
        if len(full) < 2:
            raise ValueError(f"probe dataset {name}: fewer than 2 classes with {e.probe_per_class} source images")
        for c, cls in enumerate(np.sort(rng.choice(full, min(e.probe_classes, len(full)), replace=False))):
            members = rng.choice(np.flatnonzero(pool.labels == cls), e.probe_per_class, replace=False)
            images.append(pool.images[np.sort(members)])
            labels += [c] * e.probe_per_class
            domains += [k] * e.probe_per_class
    return ProbeSet(np.concatenate(images), np.asarray(labels), np.asarray(domains), use, dropped)


def loo_1nn(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of labels y [n] from x [n, D] (cosine similarity)."""
    z = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-8)
    sim = z @ z.T  # [n, n]
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(y[sim.argmax(1)] == y))


def log_scatter_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """log(tr S_between / tr S_within) of x [n, D] with classes y [n]: how far apart the class means sit."""
    mu = x.mean(0)
    between = within = 0.0
    for c in np.unique(y):
        xc = x[y == c]
        between += len(xc) * float(((xc.mean(0) - mu) ** 2).sum())
        within += float(((xc - xc.mean(0)) ** 2).sum())
    return float(np.log((between + 1e-8) / (within + 1e-8)))


def log_participation_ratio(x: np.ndarray) -> float:
    """log((sum lambda)^2 / sum lambda^2) of the covariance of x [n, D]: the features' effective dimension."""
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2  # eigenvalues of the scatter, up to 1/n
    return float(np.log((s.sum() ** 2 + 1e-12) / ((s ** 2).sum() + 1e-12)))


def behaviour_token(features: np.ndarray, probe: ProbeSet) -> np.ndarray:
    """The token of one model from its features of the probe set [N, D]: float32 [2K + 2] (``token_columns``)."""
    f = features.astype(np.float64)
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)  # standardised over the probe set: scale-free across architectures
    per_domain = []
    for k in range(len(probe.domain_names)):
        m = probe.domains == k
        per_domain += [loo_1nn(f[m], probe.labels[m]), log_scatter_ratio(f[m], probe.labels[m])]
    return np.asarray(per_domain + [loo_1nn(f, probe.domains), log_participation_ratio(f)], np.float32)


def token_columns(probe: ProbeSet) -> list[str]:
    """The names of a behaviour token's entries, in order."""
    return [f"{d}.{s}" for d in probe.domain_names for s in ("knn", "scatter")] + ["domains.knn", "participation"]


def model_behaviour(model_dir: Path, probe: ProbeSet, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Load one zoo model (safetensors, no code runs), embed the probe images, and return its token [2K + 2]."""
    from .zoo import embed_images, load_model

    model, cfg = load_model(model_dir, device)
    return behaviour_token(embed_images(model, probe.images, cfg["image_size"], batch_size, device), probe)


def behaviour_tokens(index, zoo_dir: str | Path, probe: ProbeSet, parts: str | Path, batch_size: int = 256,
                     device: str = "cpu", progress: Callable[[Iterable], Iterable] = iter
                     ) -> tuple[list[str], np.ndarray, list[str]]:
    """(model ids, tokens float32 [N, 2K + 2], column names) of every model of ``index`` (zoo index.csv rows).

    Each model's token is kept in ``parts/<zoo folder>.npy`` as soon as it is computed: a killed run resumes.
    """
    from .paths import atomic_path, resume

    def write(path: Path, token: np.ndarray) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, token)

    rows = index.to_dict("records") if hasattr(index, "to_dict") else list(index)
    tokens = [resume(Path(parts) / f"{row['path']}.npy",
                     lambda: model_behaviour(Path(zoo_dir) / row["path"], probe, batch_size, device), np.load, write)
              for row in progress(rows)]
    return [str(r["model_id"]) for r in rows], np.stack(tokens).astype(np.float32), token_columns(probe)
