"""Stage 07's protocol: the folds, what each fitted component may see, and the learned methods' predictions.

Two kinds of fold (``make_folds``):

- **leave-datasets-out**: one fold per dataset of the target tasks; every task cut from the held-out
  dataset is a test task, and nothing fitted (ranker, early stopping, inner validation, priors) sees one.
- **leave-models-out** (``model_k`` > 0): those folds, or groups of them (``dataset_groups``), crossed with
  ``model_k`` folds of the zoo grouped by lineage (``lineage_groups``: a base model with its fine-tunes,
  one scratch architecture at one width over all its source tasks), so no sibling straddles. The standardiser and the
  autoencoder are refitted on the fold's training models only (``refit_tokens``, in the fold workers:
  ``start_refits``) and the held-out models are encoded by that autoencoder; the ranker trains on training
  tasks x training models and ranks the held-out models on the test tasks.

Choices made from ground truth, and where: the ranker's hyperparameters among ``evaluate.inner_grid``
are chosen per leave-datasets-out fold by inner leave-datasets-out validation on that fold's training
datasets (``inner_choice``), and so are the weight and temperature of the dataset-neighbour prior that the
token head moves towards (``ranker.set_neighbours``; its tables from the fold's training tasks x training
models), and with evidence how many models to probe and, per probe count, how much the token head counts
beside the evidence read-out (``ranker.set_trust``); early stopping holds out whole training datasets
(``ranker.validation_split``). Leave-models-out ranks models nobody measured, so the neighbour prior, which
reads their training accuracies, has nothing to say there and is not used.
Leave-models-out uses the parameter set's ranker settings as given (no grid; the probe count and the trust
are chosen as above, on the fold's training tasks and models, with the inner held datasets' lists made of
training models that the inner ranker never saw: ``inner_splits``), and the extractor design
and token kind are parameters, never chosen from ground truth. ``ptmrec.audit`` records what every
fitted component saw; tests/test_protocol.py proves no held-out id reaches one.

Learned predictions are tidy rows (method, fold, task_id, model_id, score, seconds); a ranker trained
with several seeds gives methods ``ranker#s<seed>``, which ``evaluate.collapse_seeds`` averages per task.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import time
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import audit
from .params import AutoEncoderParams, RankerParams, TrainParams
from .ranker import RankingData, fit_ranker, neighbour_tables, predict, set_neighbours, set_trust, standardize_evidence


@dataclass
class Fold:
    """One held-out set: test tasks x candidate models, and what fitted components may see."""

    name: str  # "mnist" (leave-datasets-out) or "mnist/m1" (crossed with model fold 1)
    dataset: str  # the held-out dataset
    train_tasks: list[str]
    test_tasks: list[str]
    train_models: np.ndarray  # int indices into data.model_ids that fitted components may see
    test_models: np.ndarray  # the candidates ranked on the test tasks
    # leave-models-out: the training models in lineage groups, which inner validation holds out in turn as the
    # fold holds out its test models (``inner_splits``); None: inner validation ranks the training models it saw
    inner_models: list[np.ndarray] | None = None

    @property
    def holds_out_models(self) -> bool:
        return len(np.intersect1d(self.train_models, self.test_models)) == 0


# ----------------------------------------------------------------------------- folds


def lineage_groups(zoo: pd.DataFrame) -> pd.Series:
    """model_id -> lineage group: siblings that must sit on one side of a model fold.

    A fine-tune joins the group of the base it descends from (followed to the root); a model
    trained from scratch joins the other models of its family and width (the same architecture
    on another source task); anything else (a pretrained base, a hub model) is its own root.
    """
    z = zoo.set_index("model_id")
    parent = {m: p for m, p in z.get("pretrained_from", pd.Series(dtype=object)).items() if isinstance(p, str) and p}

    def root(m: str) -> str:
        seen = {m}
        while parent.get(m) and parent[m] in z.index and parent[m] not in seen:
            m = parent[m]
            seen.add(m)
        return m

    def group(m: str) -> str:
        r = root(m)
        width = z.at[r, "width"] if "width" in z.columns else None
        scratch = pd.notna(width) and not parent.get(r)
        return f"{z.at[r, 'family']}-w{int(width)}" if scratch else r

    return pd.Series({m: group(m) for m in z.index}, name="lineage")


def model_folds(groups: pd.Series, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint sets of model indices (positions in ``groups``) covering all models, whole groups each.

    Groups go largest first (seeded order among equals) to the fold holding the fewest models, so the
    folds are as even as whole groups allow.
    """
    names = groups.unique()
    k = max(2, min(k, len(names)))
    rng = np.random.default_rng(seed)
    sizes = groups.value_counts()
    order = sorted(rng.permutation(names), key=lambda g: -sizes[g])
    folds: list[list[int]] = [[] for _ in range(k)]
    for g in order:
        target = min(range(k), key=lambda i: len(folds[i]))
        folds[target] += np.flatnonzero(groups.to_numpy() == g).tolist()
    return [np.sort(np.array(f, np.int64)) for f in folds if f]


def dataset_folds(data: RankingData) -> list[tuple[str, list[str], list[str]]]:
    """(held-out dataset, training task ids, test task ids), one fold per dataset."""
    names = sorted({data.datasets[t] for t in data.task_ids})
    if len(names) < 2:
        raise ValueError(f"leave-datasets-out needs target tasks from at least 2 datasets, got {names}")
    return [(d, [t for t in data.task_ids if data.datasets[t] != d], [t for t in data.task_ids if data.datasets[t] == d])
            for d in names]


def dataset_groups(data: RankingData, k: int) -> list[tuple[str, list[str], list[str]]]:
    """Like ``dataset_folds`` with the datasets dealt round-robin (sorted) into ``k`` held-out groups (0 or at
    least as many as there are datasets: one per dataset); a group's name joins its datasets with '+'."""
    folds = dataset_folds(data)
    if not k or k >= len(folds):
        return folds
    out = []
    for part in (folds[i::k] for i in range(k)):
        held = {d for d, _, _ in part}
        out.append(("+".join(sorted(held)), [t for t in data.task_ids if data.datasets[t] not in held],
                    [t for d, _, te in part for t in te]))
    return out


def make_folds(data: RankingData, zoo: pd.DataFrame | None = None, model_k: int = 0, seed: int = 0,
               groups_k: int = 0) -> list[Fold]:
    """Leave-datasets-out folds, or with ``model_k`` > 0 leave-models-out ones: ``groups_k`` groups of held-out
    datasets (0 = one per dataset, ``dataset_groups``) crossed with ``model_k`` lineage-grouped model folds.

    Every model fold then ranks its held-out models on every task once; grouping the datasets trains
    ``groups_k`` rankers per model fold instead of one per dataset, each on fewer training datasets.
    """
    every = np.arange(len(data.model_ids))
    if not model_k:
        return [Fold(d, d, tr, te, every, every) for d, tr, te in dataset_folds(data)]
    if zoo is None:
        raise ValueError("leave-models-out folds need the zoo index (lineage of every model)")
    groups = lineage_groups(zoo).reindex(data.model_ids)
    mfolds = model_folds(groups, model_k, seed)
    trains = [np.setdiff1d(every, held) for held in mfolds]
    inner = [[models[p] for p in model_folds(groups.iloc[models], 2, seed)] for models in trains]  # lineage-grouped too
    return [Fold(f"{d}/m{m}", d, tr, te, trains[m], held, inner[m])
            for d, tr, te in dataset_groups(data, groups_k) for m, held in enumerate(mfolds)]


# ----------------------------------------------------------------------------- what is fitted per fold


def refit_tokens(vectors: np.ndarray, data: RankingData, train_models: np.ndarray, ap: AutoEncoderParams,
                 tp: TrainParams, seed: int, out_dir: Path) -> np.ndarray:
    """Model tokens [N, code_dim] of every model of ``data`` from an autoencoder (and standardiser) fitted
    on ``train_models`` only; ``vectors`` [N, input_dim] follow ``data.model_ids``. Its epochs show progress
    (minutes on the default zoo, while stage 07's workers train)."""
    from .autoencoder import train_autoencoder

    ids = [data.model_ids[i] for i in train_models]
    ae, _ = train_autoencoder(ids, vectors[train_models], ap, tp, out_dir, seed=seed, progress=True)
    return ae.encode_numpy(vectors)


def start_refits(vectors: np.ndarray, data: RankingData, folds: list[Fold], ap: AutoEncoderParams, tp: TrainParams,
                 seed: int, out_dir: Path, pool: Executor | None = None) -> dict[str, Callable[[], np.ndarray]]:
    """``refit_tokens`` for every model fold of the leave-models-out ``folds`` (the ``m<i>`` ending their names:
    one autoencoder serves the model fold's dataset folds), started now in the workers of ``pool`` (submit these
    first: an autoencoder is minutes of memory-bound work that a third process beside two workers would only
    slow down), or run here when first asked for. Returns model fold -> its tokens [N, code_dim], the audit
    records of the refit filed here on the first call, under the first fold of ``folds`` that uses it."""
    getters: dict[str, Callable[[], np.ndarray]] = {}
    for fold in folds:
        key = fold.name.split("/")[-1]
        if key not in getters:
            unit = (vectors, data, fold.train_models, ap, tp, seed, Path(out_dir) / key, fold.name, audit.is_recording())
            getters[key] = _once(start([unit], pool, _refit_unit)[0])
    return getters


def autoencoder_refits(refits: dict[str, Callable[[], np.ndarray]],
                       progress: Callable[[Iterable], Iterable] = iter) -> dict[str, np.ndarray]:
    """Wait for every refit of ``start_refits`` (``progress``: how many are done, how long is left); model fold ->
    its tokens [N, code_dim]."""
    return {key: get() for key, get in progress(_Sized(iter(refits.items()), len(refits)))}


def _refit_unit(unit: tuple) -> tuple[np.ndarray, list[audit.Record]]:
    """``refit_tokens`` of one model fold and the audit records it made (when the caller records)."""
    vectors, data, train_models, ap, tp, seed, out_dir, name, recording = unit
    with audit.fold(name):
        return _recorded(recording, refit_tokens, vectors, data, train_models, ap, tp, seed, out_dir)


def _once(get: Callable[[], tuple[np.ndarray, list[audit.Record]]]) -> Callable[[], np.ndarray]:
    """The tokens of ``get()``, its records filed (``audit.extend``) the first time they are asked for."""
    done: list[np.ndarray] = []

    def tokens() -> np.ndarray:
        if not done:
            codes, records = get()
            audit.extend(records)
            done.append(codes)
        return done[0]
    return tokens


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values of ``grid`` (key -> candidate values), in order; [{}] for no grid."""
    keys = sorted(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def inner_groups(data: RankingData, tasks: list[str], k: int) -> list[list[str]]:
    """The training datasets of a fold in ``k`` (at most one per dataset) groups of task ids, round-robin."""
    names = sorted({data.datasets[t] for t in tasks})
    k = min(k, len(names))
    return [[t for t in tasks if data.datasets[t] in names[i::k]] for i in range(k)]


def inner_splits(fold: Fold, groups: list[list[str]]) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    """Inner validation's (held tasks, models its ranker trains on, models it ranks), one per group of ``groups``.

    Leave-datasets-out, both are the fold's training models. A leave-models-out fold also holds out, with its
    i-th group of datasets, the i-th lineage group of its training models (``fold.inner_models``): the choices
    are judged on models the inner ranker never saw, as the fold's own are. (Their tokens come from the fold's
    autoencoder, which did see them: one refit per fold, not per inner group.)"""
    parts = fold.inner_models or []
    if len(parts) < 2:
        return [(held, fold.train_models, fold.train_models) for held in groups]
    return [(held, np.setdiff1d(fold.train_models, part), part) for held, part in zip(groups, itertools.cycle(parts))]


PROBE_TOLERANCE = 0.02  # the chosen k: the fewest probed models within this inner weighted tau of the best k
TRUST_GRID = (0.0, 0.125, 0.25, 0.5, 1.0)  # weights of the token head beside the evidence read-out, tried per k
NEIGHBOUR_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # how far the head moves towards the dataset-neighbour prior
NEIGHBOUR_TEMPERATURES = (0.05, 0.1, 0.2, 0.5)  # its softmax over cosines of centred mean dataset tokens


@dataclass
class InnerChoice:
    """What ``inner_choice`` chose on a fold's training tasks, and the table it chose from."""

    rp: RankerParams  # the grid point
    table: pd.DataFrame  # per point: inner_weighted_tau (k = 0), neighbour_weight/_temperature, tau@<c>, trust@<c>
    probe_k: int = 0  # how many models to probe
    trust: list | None = None  # [[share c / N, weight], ...] from share 0 (weight 1) to 1; None without evidence
    neighbours: tuple[float, float] = (0.0, 1.0)  # (weight, temperature) of the dataset-neighbour prior


def inner_choice(data: RankingData, fold: Fold, rp: RankerParams, tp: TrainParams, grid: dict[str, list[Any]],
                 k: int, seed: int, ks: list[int] | None = None, neighbours: bool = False,
                 progress: Callable[[Iterable], Iterable] = iter) -> InnerChoice:
    """Choices by inner leave-datasets-out validation on the fold's training tasks and models (never its test
    tasks), each by the best mean weighted tau of the held inner datasets (on a leave-models-out fold, over
    training models that the inner ranker did not see: ``inner_splits``):

    - the grid point, and with ``neighbours`` the weight and temperature of the dataset-neighbour prior
      (``ranker.set_neighbours``; its tables from the inner training tasks) among ``NEIGHBOUR_WEIGHTS`` x
      ``NEIGHBOUR_TEMPERATURES``, both with tokens only (k = 0);
    - with ``ks`` and evidence in ``data``, for every probe count c (``probe_ks(ks, N)``, the ``top`` c of that
      prior), the weight of the token head beside the evidence read-out (``ranker.set_trust``) among
      ``TRUST_GRID``;
    - how many models to probe: the fewest k (0 or one of those c) whose mean weighted tau, at its chosen
      weight, is within ``PROBE_TOLERANCE`` of the best k's (forward passes cost seconds; a gain below the
      tolerance is not worth them).
    ``progress`` wraps the trainings."""
    points = grid_points(grid)
    splits = inner_splits(fold, inner_groups(data, fold.train_tasks, k))
    n = min(len(cand) for _, _, cand in splits)  # models ranked per inner list; probing n of them = every one
    counts = [0] + probe_ks(ks, n) if ks and data.evidence is not None else [0]
    mixes = [(0.0, 1.0)] + ([(w, t) for w in NEIGHBOUR_WEIGHTS[1:] for t in NEIGHBOUR_TEMPERATURES] if neighbours else [])
    if (len(points) < 2 and len(counts) < 2 and len(mixes) < 2) or len(splits) < 2:
        return InnerChoice(rp, pd.DataFrame([dict(point=str(p), inner_weighted_tau=np.nan) for p in points]))
    fits: list[list[tuple]] = [[] for _ in points]  # per point, per split: (model, neighbour tables, held, ranked)
    taus: list[dict[tuple[float, float], list[float]]] = [{} for _ in points]  # per point: mix -> task taus
    for i, (held, seen, cand) in progress([(i, s) for i in range(len(points)) for s in splits]):
        train = [t for t in fold.train_tasks if t not in held]
        model, _ = fit_ranker(data, train, dataclasses.replace(rp, **points[i]), tp, models=seen, seed=seed)
        tables = neighbour_tables(data, train, seen) if neighbours else None
        # the measured accuracies behind every inner choice (grid point, prior, probe count, trust): training tasks
        audit.seen("inner validation", held, [data.model_ids[j] for j in cand])
        fits[i].append((model, tables, held, cand))
        for mix in mixes:
            set_neighbours(model, tables, *mix)
            for t, s in _inner_priors(model, data, cand, points[i], rp, held).items():
                taus[i].setdefault(mix, []).append(_inner_tau(data, cand, t, s))
    rows = []
    for point, t in zip(points, taus):
        mix = max(mixes[::-1], key=lambda m: np.mean(t[m]))  # ties: the head alone
        rows.append(dict(point=str(point), inner_weighted_tau=float(np.mean(t[mix])), **point,
                         neighbour_weight=mix[0], neighbour_temperature=mix[1]))
    table = pd.DataFrame(rows)
    best = int(np.argmax(table.inner_weighted_tau.to_numpy()))
    mix = (float(table.neighbour_weight[best]), float(table.neighbour_temperature[best]))
    chosen = dataclasses.replace(rp, **points[best])
    if len(counts) < 2:
        return InnerChoice(chosen, table, 0, None, mix)
    by_c: dict[tuple[int, float], list[float]] = {}
    for model, tables, held, cand in fits[best]:
        set_neighbours(model, tables, *mix)
        for key, values in _inner_probed_taus(model, data, cand, chosen, held, counts[1:]).items():
            by_c.setdefault(key, []).extend(values)
    for c in counts[1:]:
        # ties (the same ranking at several weights, as with one probed model, whose evidence is all zeros):
        # the most trust, the ranker as trained
        w = max(TRUST_GRID[::-1], key=lambda w: np.mean(by_c[c, w]))
        table.loc[best, [f"tau@{c}", f"trust@{c}"]] = [float(np.mean(by_c[c, w])), w]
    by_k = np.array([table.inner_weighted_tau[best]] + [table[f"tau@{c}"][best] for c in counts[1:]])
    probe_k = int(min(c for c, v in zip(counts, by_k) if v >= by_k.max() - PROBE_TOLERANCE))
    trust = [[0.0, 1.0]] + [[c / n, float(table[f"trust@{c}"][best])] for c in counts[1:]]
    # every inner candidate probed: every candidate of the fold (``_at_chosen_k`` reads the training models' count)
    return InnerChoice(chosen, table, len(fold.train_models) if probe_k == n else probe_k, trust, mix)


def _inner_priors(model: nn.Module, data: RankingData, models: np.ndarray, point: dict[str, Any], rp: RankerParams,
                  held: list[str]) -> dict[str, np.ndarray]:
    """The k = 0 scores [N] of ``models`` on every ``held`` task, in one batch (no seconds are read)."""
    cut = dataclasses.replace(rp, **point).max_dataset_tokens
    prior = predict(model, data, held, models, cut, batch_size=len(held))
    return {t: g.score.to_numpy() for t, g in prior.groupby("task_id")}


def _inner_tau(data: RankingData, models: np.ndarray, task: str, scores: np.ndarray) -> float:
    """The weighted tau of ``scores`` [N] against a held inner task's measured accuracies of ``models`` (a training
    task, training models)."""
    from .metrics import weighted_tau

    return weighted_tau(data.accuracy_of(task)[models], scores)


def _inner_probed_taus(model: nn.Module, data: RankingData, models: np.ndarray, rp: RankerParams, held: list[str],
                       counts: list[int]) -> dict[tuple[int, float], list[float]]:
    """The weighted tau of each ``held`` task over ``models`` with the ``top`` c of them probed by the prior, for
    every c of ``counts`` (the last: every one) and every weight of ``TRUST_GRID``: keys (c, weight)."""
    from .probing import choose_probes

    priors = _inner_priors(model, data, models, {}, rp, held)
    out: dict[tuple[int, float], list[float]] = {}
    for c in counts:
        k = len(models) if c == counts[-1] else c
        probed = {t: choose_probes("top", k, priors[t]) for t in held}
        pred = predict(model, data, held, models, rp.max_dataset_tokens, probed, batch_size=len(held))
        for t, g in pred.groupby("task_id"):  # score = head + read-out (trust 1): re-weigh the head
            ev = standardize_evidence(data.evidence[data.task_ids.index(t)][models], probed[t])
            with torch.no_grad():
                readout = model.inputs.evidence_score(torch.from_numpy(ev)[None], torch.from_numpy(probed[t])[None])
            readout, score = readout[0].numpy().astype(float), g.score.to_numpy()
            for w in TRUST_GRID:
                out.setdefault((c, w), []).append(_inner_tau(data, models, t, readout + w * (score - readout)))
    return out


def probe_ks(ks: list[int], n: int) -> list[int]:
    """The probe counts of a frontier: ``ks`` below ``n`` (the zoo), then ``n`` itself (every model probed)."""
    return sorted({k for k in ks if 0 < k < n} | {n})


def probed_predictions(model: nn.Module, data: RankingData, fold: Fold, max_tokens: int, ks: list[int],
                       method: str, seed: int, prior: pd.DataFrame, references: bool = False) -> list[pd.DataFrame]:
    """The ranker with ``k`` probed models for every k and policy of ``probing.POLICIES`` (methods
    ``<method>+<policy>@<k>#s<seed>``; k equal to the number of candidates is written ``all``), and, with
    ``references``, the matching single-estimator references (``<estimator>@<k>`` on the ``top`` probes) and
    their ceiling ``oracle@<k>``: the measured accuracy itself as the estimator on the same probes (what a
    perfect estimator would give; it costs the probes' forward passes). A reference, never a method: it reads
    the held-out truth, as ``oracle`` and the noise ceilings do.

    Seconds per recommendation: the ranker's passes (prior, dropout spread for ``uncertain``, posterior)
    plus the forward pass and the evidence estimators of each probed model (``data.probe_seconds``).
    ``prior``: the model's own k = 0 predictions on the fold (``predict``, one task at a time: its seconds are
    one pass of a recommendation).
    """
    from .probing import DROPOUT_PASSES, POLICIES, choose_probes, estimator_at_k, prior_scores

    n, cand, b = len(fold.test_models), fold.test_models, len(fold.test_tasks)
    priors = {t: g.score.to_numpy() for t, g in prior.groupby("task_id")}  # [N] each, in ``cand`` order
    prior_seconds = prior.groupby("task_id").seconds.first().to_dict()  # the posterior passes below are batched
    spreads = {t: prior_scores(model, data, t, cand, max_tokens, DROPOUT_PASSES).std(0) for t in fold.test_tasks}
    rows = {t: data.task_ids.index(t) for t in fold.test_tasks}
    # the references' (name, scores [T, N], seconds [T, N]): each estimator costs its forward passes and itself, no
    # other estimator; the oracle (the measured accuracy, their ceiling) the forward passes alone
    references_at_k = ([(est, data.evidence[:, :, f], data.forward_seconds + data.evidence_seconds[:, :, f])
                        for f, est in enumerate(data.evidence_names)] + [("oracle", data.accuracy, data.forward_seconds)]
                       if references else [])
    out = []
    for policy in POLICIES:
        passes = 2 + (DROPOUT_PASSES if policy == "uncertain" else 0)
        for k in probe_ks(ks, n):
            label = "all" if k == n else str(k)
            probed = {t: choose_probes(policy, k, priors[t], spreads[t]) for t in fold.test_tasks}
            probe_cost = {t: float(data.probe_seconds[rows[t]][cand][probed[t]].sum()) for t in fold.test_tasks}
            pred = predict(model, data, fold.test_tasks, cand, max_tokens, probed, batch_size=b)
            seconds = pred.task_id.map(lambda t: passes * prior_seconds[t] + probe_cost[t])
            out.append(pred.assign(method=f"{method}+{policy}@{label}#s{seed}", fold=fold.name, seconds=seconds))
            if not references or policy != "top":
                continue
            for est, scores, cost in references_at_k:
                out.append(pd.DataFrame([
                    dict(method=f"{est}@{label}", fold=fold.name, task_id=t, model_id=data.model_ids[j], score=float(v),
                         seconds=float(cost[rows[t]][cand][probed[t]].sum()))
                    for t in fold.test_tasks
                    for j, v in zip(cand, estimator_at_k(scores[rows[t]][cand], priors[t], probed[t]))]))
    return out


def _at_chosen_k(prior: pd.DataFrame, probed: list[pd.DataFrame], probe_k: int, fold: Fold, method: str,
                 seed: int) -> pd.DataFrame:
    """The ranker at its inner-validated k (``<method>+top@k*#s<seed>``): the prior's predictions for k = 0,
    else those of ``top`` with the k probed models of the fold's frontier; a k that probed every training model
    in the inner validation, or one beyond the fold's candidates, means all of them."""
    if probe_k == 0:
        return prior.assign(method=f"{method}+top@k*#s{seed}")
    every = probe_k >= len(fold.train_models) or probe_k >= len(fold.test_models)
    label = "all" if every else str(probe_k)
    frame = next(p for p in probed if p.method.iloc[0] == f"{method}+top@{label}#s{seed}")
    return frame.assign(method=f"{method}+top@k*#s{seed}")


def ranker_predictions(data: RankingData, folds: list[Fold], rp: RankerParams, tp: TrainParams, seeds: list[int],
                       method: str = "ranker", grid: dict[str, list[Any]] | None = None, inner_k: int = 2,
                       tokens_of: Callable[[Fold], np.ndarray] | None = None, ks: list[int] | None = None,
                       progress: Callable[[Iterable], Iterable] = iter,
                       pool: Executor | None = None, neighbours: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions of one ranker variant on every fold, for every seed (methods ``<method>#s<seed>``).

    ``grid``: choose the ranker's hyperparameters per fold by ``inner_choice`` (with the first seed);
    ``tokens_of(fold)``: the fold's model tokens [N, D] (leave-models-out: a refitted autoencoder's);
    ``ks``: with evidence in ``data``, also rank with k probed models (``probed_predictions``; the
    single-estimator references with the first seed's probes); ``pool`` (``worker_pool``): the folds in its
    worker processes, with the same predictions and the same ``audit`` records as in this one.
    Returns (predictions, log: one row per trained ranker with the chosen point, epochs, seconds).
    """
    units = fold_units(data, folds, rp, tp, seeds, method, grid, inner_k, tokens_of, ks, neighbours)
    return fold_results(start(units, pool), progress)


def fold_units(data: RankingData, folds: list[Fold], rp: RankerParams, tp: TrainParams, seeds: list[int],
               method: str = "ranker", grid: dict[str, list[Any]] | None = None, inner_k: int = 2,
               tokens_of: Callable[[Fold], np.ndarray] | None = None, ks: list[int] | None = None,
               neighbours: bool = False) -> list[tuple]:
    """The work of ``ranker_predictions`` (same arguments), one unit per fold, for ``start``; a fold's tokens
    (``tokens_of``: a refitted autoencoder's, ``start_refits``) are asked for here, in this process."""
    setting = dict(rp=rp, tp=tp, seeds=seeds, method=method, grid=grid or {}, inner_k=inner_k, ks=ks,
                   neighbours=neighbours)
    units = []
    for fold in folds:
        with audit.fold(fold.name):  # a refitted autoencoder belongs to the fold it serves
            units.append((data, fold, None if tokens_of is None else tokens_of(fold), setting, audit.is_recording()))
    return units


def start(units: list[tuple], pool: Executor | None = None,
          fn: Callable[[tuple], tuple] | None = None) -> list[Callable[[], tuple]]:
    """Start ``fn`` (default: a fold unit, ``_fold_unit``) on each of ``units`` in the workers of ``pool`` now, in
    order (or, without a pool, run each here when its result is asked for): one result getter per unit, for
    ``fold_results``. Units of several variants started before one ``fold_results`` share the workers, so no
    worker waits for the slowest fold of a variant."""
    fn = fn or _fold_unit
    if pool is None:
        return [functools.partial(fn, u) for u in units]
    return [pool.submit(fn, u).result for u in units]


def fold_results(pending: list[Callable[[], tuple]],
                 progress: Callable[[Iterable], Iterable] = iter) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The results of started units, in order, as (predictions, log); their audit records filed here."""
    preds, log = [], []
    for p, rows, records in progress(_Sized((get() for get in pending), len(pending))):
        preds += p
        log += rows
        audit.extend(records)
    cols = ["method", "fold", "task_id", "model_id", "score", "seconds"]
    return pd.concat(preds, ignore_index=True)[cols], pd.DataFrame(log)


class _Sized:
    """An iterator with a length: progress reports n of N for results that arrive one by one."""

    def __init__(self, it: Iterable, n: int):
        self.it, self.n = it, n

    def __iter__(self) -> Iterator:
        return iter(self.it)

    def __len__(self) -> int:
        return self.n


@contextmanager
def worker_pool(jobs: int) -> Iterator[Executor | None]:
    """``jobs`` spawned worker processes (one torch thread each: they share the machine's cores) for
    ``ranker_predictions``, or None for ``jobs`` <= 1; this process too runs torch on one thread while they
    live. Spawned, not forked: a fork of a process whose torch already ran threads may hang."""
    if jobs <= 1:
        yield None
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # whatever this process runs meanwhile shares the cores with them
    try:
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            yield pool
    finally:
        torch.set_num_threads(before)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _fold_unit(unit: tuple) -> tuple[list[pd.DataFrame], list[dict], list[audit.Record]]:
    """``fold_predictions`` of one unit, with the audit records it made (``_recorded``)."""
    data, fold, tokens, setting, recording = unit
    (preds, log), records = _recorded(recording, fold_predictions, data, fold, tokens, **setting)
    return preds, log, records


def _recorded(recording: bool, fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, list[audit.Record]]:
    """(``fn(*args, **kw)``, the audit records it made, when the caller records): a worker process sends them
    back, and in this process they reach the caller's list through ``audit.extend`` all the same."""
    with (audit.recording() if recording else contextlib.nullcontext([])) as records:
        return fn(*args, **kw), records


def fold_predictions(data: RankingData, fold: Fold, tokens: np.ndarray | None, rp: RankerParams, tp: TrainParams,
                     seeds: list[int], method: str, grid: dict[str, list[Any]], inner_k: int,
                     ks: list[int] | None, neighbours: bool = False) -> tuple[list[pd.DataFrame], list[dict]]:
    """One fold of ``ranker_predictions`` (``tokens``: the fold's model tokens [N, D], None = data's own):
    (prediction frames, log rows). With ``neighbours``, the dataset-neighbour prior (``inner_choice``) joins
    the ranker, and its first seed also gives the prior alone as the reference ``neighbours``."""
    preds, log = [], []
    with audit.fold(fold.name):
        d = data if tokens is None else dataclasses.replace(data, model_tokens=tokens)
        t0 = time.perf_counter()
        inner = inner_choice(d, fold, rp, tp, grid, inner_k, seeds[0], ks, neighbours)
        chosen, table, probe_k, trust = inner.rp, inner.table, inner.probe_k, inner.trust
        choose_seconds = time.perf_counter() - t0
        tables = neighbour_tables(d, fold.train_tasks, fold.train_models) if neighbours else None
        for s in seeds:
            t0 = time.perf_counter()
            model, trainer = fit_ranker(d, fold.train_tasks, chosen, tp, models=fold.train_models, seed=s)
            set_trust(model, trust)
            secs = time.perf_counter() - t0
            if neighbours and s == seeds[0]:  # the prior alone: weight 1 at the chosen temperature
                set_neighbours(model, tables, 1.0, inner.neighbours[1])
                alone = predict(model, d, fold.test_tasks, fold.test_models, chosen.max_dataset_tokens)
                preds.append(alone.assign(method="neighbours", fold=fold.name))
            set_neighbours(model, tables, *inner.neighbours)
            pred = predict(model, d, fold.test_tasks, fold.test_models, chosen.max_dataset_tokens)
            preds.append(pred.assign(method=f"{method}#s{s}", fold=fold.name))
            if ks and d.evidence is not None:
                probed = probed_predictions(model, d, fold, chosen.max_dataset_tokens, ks, method, s, pred,
                                            s == seeds[0])
                preds += probed + [_at_chosen_k(pred, probed, probe_k, fold, method, s)]
            log.append(dict(method=method, fold=fold.name, seed=s, epochs=len(trainer.history),
                            kind="leave_models_out" if fold.holds_out_models else "leave_datasets_out",
                            best_epoch=trainer.best_epoch, val_loss=trainer.best_loss, seconds=secs,
                            choice={k: getattr(chosen, k) for k in sorted(grid)}, probe_k=probe_k, trust=trust,
                            neighbour_weight=inner.neighbours[0], neighbour_temperature=inner.neighbours[1],
                            inner_scores=table.to_dict("records") if s == seeds[0] else None,
                            choice_seconds=choose_seconds if s == seeds[0] else 0.0,
                            n_train_tasks=len(fold.train_tasks), n_train_models=len(fold.train_models),
                            n_test_models=len(fold.test_models)))
    return preds, log


def stacking_predictions(data: RankingData, folds: list[Fold]) -> pd.DataFrame:
    """The stacking reference on every fold: ``probing.fit_stacking`` on the fold's training tasks x training
    models, scored on its test tasks x candidates with every candidate probed (k = all)."""
    from .probing import fit_stacking, stack_scores

    rows = []
    for fold in folds:
        with audit.fold(fold.name):
            w = fit_stacking(data, fold.train_tasks, fold.train_models)
        for t in fold.test_tasks:
            r = data.task_ids.index(t)
            scores = stack_scores(w, data.evidence[r][fold.test_models])
            secs = float(data.probe_seconds[r][fold.test_models].sum())
            rows += [dict(method="stacking", fold=fold.name, task_id=t, model_id=data.model_ids[j], score=float(v),
                          seconds=secs) for j, v in zip(fold.test_models, scores)]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- static priors


def static_priors(data: RankingData, zoo: pd.DataFrame, folds: list[Fold]) -> pd.DataFrame:
    """Priors that need no target data, on every fold's test tasks x candidates (tidy predictions).

    - ``popularity``: mean accuracy of each model over the fold's training tasks;
    - ``popularity_z``: the mean of its accuracy z-scored within each training task (every task counts
      alike, whatever its spread);
    - ``most_params``: more parameters first;
    - ``imagenet_first``: ImageNet-pretrained bases first, then their fine-tunes, then the rest, ties
      by parameters.
    The two popularity priors read measured accuracies of the candidates, so they are only scored
    where the candidates were seen in training (leave-datasets-out).
    """
    z = zoo.set_index("model_id").reindex(data.model_ids)
    params = z.num_params.astype(float).to_numpy()  # [N]
    parent = z.pretrained_from.fillna("") if "pretrained_from" in z else pd.Series("", index=z.index)
    imagenet = (z.source_task == "imagenet").to_numpy()
    from_imagenet = parent.isin(z.index[z.source_task == "imagenet"]).to_numpy()
    tier = 2.0 * imagenet + 1.0 * from_imagenet  # [N]
    static = {"most_params": params, "imagenet_first": tier + params / (10 * params.max())}
    rows = []
    for fold in folds:
        t0 = time.perf_counter()
        scores = dict(static)
        if not fold.holds_out_models:
            with audit.fold(fold.name):
                audit.seen("popularity", fold.train_tasks, [data.model_ids[i] for i in fold.train_models])
            acc = data.accuracy[[data.task_ids.index(t) for t in fold.train_tasks]]  # [T_train, N]
            scores["popularity"] = np.nanmean(acc, axis=0)
            zs = (acc - np.nanmean(acc, 1, keepdims=True)) / np.maximum(np.nanstd(acc, 1, keepdims=True), 1e-9)
            scores["popularity_z"] = np.nanmean(zs, axis=0)
        secs = time.perf_counter() - t0
        for method, s in scores.items():
            rows += [dict(method=method, fold=fold.name, task_id=t, model_id=data.model_ids[i], score=float(s[i]),
                          seconds=secs) for t in fold.test_tasks for i in fold.test_models]
    return pd.DataFrame(rows)


def restrict(pred: pd.DataFrame, folds: list[Fold], model_ids: list[str]) -> pd.DataFrame:
    """Predictions of fold-free methods (scored once on every task x model) cut to each fold's lists:
    one copy per fold of its test tasks x candidates, named by the fold."""
    parts = []
    for fold in folds:
        cand = {model_ids[i] for i in fold.test_models}
        sel = pred.task_id.isin(fold.test_tasks) & pred.model_id.isin(cand)
        parts.append(pred[sel].assign(fold=fold.name))
    return pd.concat(parts, ignore_index=True)
