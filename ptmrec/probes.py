"""What a model representation knows: cross-validated probes over held-out models.

Given one vector per model (a parameter vector or a model token), how well do simple probes
fitted on the other models predict a held-out model's (a) architecture family, (b) source task
and (c) transfer accuracy on the target tasks? Every probe standardises, reduces with PCA to
at most ``PCA_DIM`` components (fitted on the training folds only) and fits a linear model.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

PCA_DIM = 16
FOLDS = 5


def _folds(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded K-fold split of n models (leave-one-out when n <= FOLDS)."""
    from sklearn.model_selection import KFold

    k = min(FOLDS, n)
    return list(KFold(k, shuffle=True, random_state=seed).split(np.arange(n)))


def _reducer(n_train: int, dim: int):
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), PCA(min(PCA_DIM, n_train - 1, dim), random_state=0))


def probe_labels(x: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of predicting ``labels`` [n] (str or int) from ``x`` [n, d]: logistic regression."""
    from sklearn.linear_model import LogisticRegression

    pred = np.empty(len(labels), dtype=object)
    for tr, te in _folds(len(labels), seed):
        if len(set(labels[tr])) < 2:  # a single class in training: predict it
            pred[te] = labels[tr][0]
            continue
        red = _reducer(len(tr), x.shape[1]).fit(x[tr])
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(red.transform(x[tr]), labels[tr])
        pred[te] = clf.predict(red.transform(x[te]))
    return float(np.mean(pred == labels))


def probe_accuracy(x: np.ndarray, acc: np.ndarray, seed: int = 0) -> float:
    """Mean per-task Kendall tau between true and predicted transfer accuracy of held-out models.

    x [n, d] model vectors, acc [n, T] accuracy of each model on each task; ridge regression
    predicts all T at once; tau is computed per task over all n out-of-fold predictions.
    """
    from scipy.stats import kendalltau
    from sklearn.linear_model import Ridge

    pred = np.zeros_like(acc)
    for tr, te in _folds(len(acc), seed):
        red = _reducer(len(tr), x.shape[1]).fit(x[tr])
        pred[te] = Ridge(alpha=1.0).fit(red.transform(x[tr]), acc[tr]).predict(red.transform(x[te]))
    taus = [kendalltau(acc[:, t], pred[:, t]).statistic for t in range(acc.shape[1])]
    return float(np.nanmean(taus))


def majority(labels: np.ndarray) -> float:
    """Accuracy of always predicting the most common label: the floor a probe must beat."""
    _, counts = np.unique(labels, return_counts=True)
    return float(counts.max() / counts.sum())


def probe_all(x: np.ndarray, ids: np.ndarray, zoo: pd.DataFrame, perf: pd.DataFrame, method: str,
              seed: int = 0) -> dict[str, float]:
    """The three probes for representations ``x`` [n, d] of models ``ids`` [n].

    zoo: index.csv (model_id, family, source_task); perf: performance.csv rows of one seed.
    """
    meta = zoo.set_index("model_id").loc[ids]
    acc = perf[perf.method == method].pivot_table(index="model_id", columns="task_id", values="accuracy").loc[ids]
    return dict(family=probe_labels(x, meta.family.to_numpy(), seed),
                source_task=probe_labels(x, meta.source_task.to_numpy(), seed),
                transfer_tau=probe_accuracy(x, acc.to_numpy(), seed))


def compare_extractors(index: pd.DataFrame, zoo_dir, perf: pd.DataFrame, method: str, extract_params,
                       out_dir, seed: int = 0, parts=None) -> pd.DataFrame:
    """Extract the zoo with every registered design and probe each: one row per design.

    ``parts``: a folder of per-model vectors by design (``extract.extract_parts``, a sharded stage 02).
    """
    import dataclasses
    from pathlib import Path

    from .extract import extract_zoo, list_extractors, load_vectors

    rows = []
    for name in list_extractors():
        folder = Path(out_dir) / name
        extract_zoo(index, zoo_dir, dataclasses.replace(extract_params, extractor=name), folder, progress=False,
                    parts=None if parts is None else Path(parts) / name)
        ids, x = load_vectors(folder)
        rows.append(dict(extractor=name, **probe_all(x, ids, index, perf, method, seed)))
    return pd.DataFrame(rows)
