"""Ground truth: the accuracy of every zoo model on every target task after transfer.

Two transfer methods, each with a fixed schedule (``performance.csv`` names the method):

* ``linear_probe`` -- frozen penultimate features, standardised with the training split's
  mean and std, then multinomial logistic regression with L2 weight ``probe_l2`` fitted by
  L-BFGS for at most ``probe_steps`` iterations from zero weights (deterministic).
* ``finetune`` -- every parameter trained: a fresh linear head (seeded), AdamW with
  lr ``finetune_lr`` (head 10x), weight decay 1e-4, cosine decay to zero over
  ``finetune_steps`` steps of ``finetune_batch_size`` images (``zoo.batch_indices``: each
  pass over the training split a fresh permutation, its ragged tail dropped), BatchNorm in train mode; accuracy on the test split in eval mode. It costs
  two orders of magnitude more than a probe, so ``finetune_tasks`` > 0 restricts it to that
  many tasks, picked round-robin over datasets (every model is fine-tuned on each of them).

The noise ceiling: the same measurement with ``noise_seed``, where the training split is a
class-stratified bootstrap resample (and, for fine-tuning, the head init and batch order
change too), tested twice: on the same test split (``split == "test"``) and on a fresh test
split of other images of the same classes (``split == "fresh"``, ``Task.fresh_idx``). Kendall
tau between the two runs, per task, is the best agreement any ranking method can hope for;
the fresh split also counts the test images' own sampling noise, so it is the less optimistic
ceiling. ``performance.csv`` names the split of every row; read it with ``measured``.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from .params import GroundTruthParams, TrainParams
from .paths import resume, write_csv
from .registry import Registry
from .transferability import probe_predict


def finetune(model: torch.nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
             y_test: np.ndarray, image_size: int, gp: GroundTruthParams, seed: int) -> float:
    """Test accuracy after fine-tuning a copy of ``model`` with the fixed schedule above.

    x_* are uint8 images [n, S, S, 3]; the model's own ``head`` is replaced by a k-way one.
    """
    from .train import ClassifierTrainer
    from .zoo import batch_indices, memory_format, to_input

    torch.manual_seed(seed)
    k = int(max(y_train.max(), y_test.max())) + 1
    net = copy.deepcopy(model)
    net.head = torch.nn.Linear(net.num_features, k)
    fmt = memory_format(net)
    net.to(memory_format=fmt)
    schedule = TrainParams(epochs=gp.finetune_steps, lr=gp.finetune_lr, weight_decay=1e-4, scheduler="cosine",
                           grad_clip=0.0, early_stopping_patience=0)
    xtr = to_input(x_train, image_size).contiguous(memory_format=fmt)  # [n, 3, S, S]
    ytr = torch.as_tensor(y_train, dtype=torch.long)  # [n]
    order = batch_indices(len(ytr), min(gp.finetune_batch_size, len(ytr)), np.random.default_rng(seed))
    ClassifierTrainer(net, schedule, head_lr_scale=10.0).fit_steps((xtr[i], ytr[i]) for i in map(torch.as_tensor, order))
    with torch.inference_mode():
        xte = to_input(x_test, image_size).contiguous(memory_format=fmt)
        pred = torch.cat([net(xte[i:i + 256]).argmax(1) for i in range(0, len(xte), 256)]).numpy()
    return float((pred == y_test).mean())


def finetune_subset(tasks: list, n: int) -> set[str]:
    """Ids of the ``n`` tasks that are fine-tuned (all when n == 0): round-robin over datasets."""
    if n <= 0 or n >= len(tasks):
        return {t.task_id for t in tasks}
    by_dataset: dict[str, list] = {}
    for t in tasks:
        by_dataset.setdefault(t.dataset, []).append(t.task_id)
    queues = list(by_dataset.values())
    picked: list[str] = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return set(picked)


def bootstrap(y: np.ndarray, seed: int) -> np.ndarray:
    """Class-stratified bootstrap: indices into ``y`` [n], same count per class, drawn with replacement."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), size=(y == c).sum()) for c in np.unique(y)])


def measured(perf: pd.DataFrame, method: str, seed: int, split: str = "test") -> pd.DataFrame:
    """The rows of ``performance.csv`` measured by ``method`` with ``seed`` on test ``split`` ("test" | "fresh")."""
    splits = perf.split if "split" in perf.columns else pd.Series("test", index=perf.index)
    return perf[(perf.method == method) & (perf.seed == seed) & (splits == split)]


def _measurements(task, seed: int, gp: GroundTruthParams, has_fresh: bool) -> list[tuple[str, int, str]]:
    """(method, seed, test split) of every measurement of one task: the main run on every method, and the
    noise run (bootstrap training split) of the ranked method on the same and, where the task has one,
    on a fresh test split."""
    todo = [(m, seed, "test") for m in gp.methods]
    if gp.noise_seed != seed:
        todo += [(gp.target_method, gp.noise_seed, s) for s in ("test", "fresh") if s == "test" or has_fresh]
    return todo


def _probe(x_train: np.ndarray, y_train: np.ndarray, tests: dict[str, tuple[np.ndarray, np.ndarray]],
           splits: list[str], gp: GroundTruthParams) -> tuple[dict[str, float], float]:
    """The linear probe fitted once on x_train [n, D], y_train [n] and tested on each of ``splits`` of ``tests``
    (split -> features [m, D], labels [m]): ({split: accuracy}, seconds of the fit and predictions)."""
    t0 = time.perf_counter()
    xs = [tests[s][0] for s in splits]
    pred = probe_predict(x_train, y_train, np.concatenate(xs), gp.probe_l2, gp.probe_steps)  # [sum m]
    ends = np.cumsum([len(x) for x in xs])
    accs = {s: float((p == tests[s][1]).mean()) for s, p in zip(splits, np.split(pred, ends[:-1]))}
    return accs, time.perf_counter() - t0


# groundtruth.methods -> what measures it: the probe on stored features, or fine-tuning a copy of the model
# (``evaluate_model`` feeds each what it reads: features from the store, or images and the loaded model)
METHODS = Registry.of("ground-truth method", {"linear_probe": _probe, "finetune": finetune})


def evaluate_model(model_ref: str | Path, model_id: str, pools: dict, tasks: list, gp: GroundTruthParams,
                   seed: int, store: Path) -> pd.DataFrame:
    """Every method, seed and test split of ``gp`` for one model on every task: one row per measurement.

    The linear probe reads the model's features from the feature store in the folder ``store``
    (computed there first if missing: ``ptmrec.features``); its seconds are the probe's own plus the
    forward seconds the store charges to the task's training and test images. Fine-tuning loads the model.
    """
    from .data import task_arrays, task_labels
    from .features import model_store
    from .zoo import load_model

    fs = model_store(store, model_id, model_ref, pools, tasks, gp.batch_size)
    tuned = finetune_subset(tasks, gp.finetune_tasks)
    model = cfg = None
    rows = []
    for task in tasks:
        pool = pools[task.dataset]
        ytr = task_labels(pool, task, "train")
        ftr = fs.features(task, "train")  # float32 [n, D]
        tests = {s: (fs.features(task, s), task_labels(pool, task, s)) for s in ("test", "fresh")}  # [m, D], [m]
        todo = _measurements(task, seed, gp, len(tests["fresh"][1]) > 0)
        probes: dict[int, tuple[dict[str, float], float]] = {}  # seed -> one probe's accuracy per split, its seconds
        for method, s, split in todo:
            if method == "finetune" and task.task_id not in tuned:
                continue
            idx = np.arange(len(ytr)) if s == seed else bootstrap(ytr, s)
            if method == "linear_probe":
                if s not in probes:  # the noise run's probe is fitted once and tested on both of its splits
                    probes[s] = _probe(ftr[idx], ytr[idx], tests, [p for m, r, p in todo if m == method and r == s], gp)
                acc = probes[s][0][split]
                secs = probes[s][1] + fs.seconds(task, "train") + fs.seconds(task, split)
            else:
                t0 = time.perf_counter()
                if model is None:
                    model, cfg = load_model(model_ref)
                xtr, _ = task_arrays(pool, task, "train")
                xte, _ = task_arrays(pool, task, split)
                acc = finetune(model, xtr[idx], ytr[idx], xte, tests[split][1], cfg["image_size"], gp, s)
                secs = time.perf_counter() - t0
            rows.append(dict(model_id=model_id, task_id=task.task_id, method=method, seed=s, split=split,
                             accuracy=acc, chance=1.0 / len(task.classes), seconds=round(secs, 4)))
    return pd.DataFrame(rows)


def run_groundtruth(zoo_index: pd.DataFrame, zoo_dir: Path, pools: dict, tasks: list, gp: GroundTruthParams,
                    seed: int, parts: Path, store: Path,
                    progress: Callable[[Iterable], Iterable] = iter) -> pd.DataFrame:
    """Measure every model in ``zoo_index`` on every task; resumes from the folder ``parts``.

    Each model's rows are written atomically to parts/<model_id>.csv as soon as they are
    measured, so a killed run redoes at most the model it was on; its features go to the store
    folder ``store`` first (one forward pass per model and image), where stage 05 reads them.
    """
    frames = [resume(parts / f"{row.model_id}.csv",
                     lambda: evaluate_model(Path(zoo_dir) / row.path, row.model_id, pools, tasks, gp, seed, store),
                     pd.read_csv, write_csv)
              for row in progress(list(zoo_index.itertuples()))]
    return pd.concat(frames, ignore_index=True)


def noise_ceiling(perf: pd.DataFrame, method: str, seed: int, noise_seed: int) -> pd.DataFrame:
    """Per task and noise test split: Kendall tau and weighted tau between the model rankings of the main
    run and the noise run (same test split, and fresh test split where measured)."""
    from scipy.stats import kendalltau, weightedtau

    main = measured(perf, method, seed).set_index(["task_id", "model_id"]).accuracy
    rows = []
    for split in ("test", "fresh"):
        noise = measured(perf, method, noise_seed, split).set_index(["task_id", "model_id"]).accuracy
        both = pd.concat([main.rename("a"), noise.rename("b")], axis=1).dropna()
        for task_id, g in both.groupby(level=0):
            rows.append(dict(task_id=task_id, split=split, kendall_tau=kendalltau(g.a, g.b).statistic,
                             weighted_tau=weightedtau(g.a, g.b).statistic))
    return pd.DataFrame(rows, columns=["task_id", "split", "kendall_tau", "weighted_tau"])


def spread(perf: pd.DataFrame) -> pd.DataFrame:
    """Per method and task: how far apart the zoo's accuracies are (range, std, best, worst, chance)."""
    g = perf.groupby(["method", "task_id"]).agg(best=("accuracy", "max"), worst=("accuracy", "min"),
                                                std=("accuracy", "std"), chance=("chance", "first"))
    g["range"] = g.best - g.worst
    return g.reset_index()


def method_agreement(perf: pd.DataFrame) -> pd.DataFrame:
    """Per task: Kendall tau between the zoo rankings by linear probe and by fine-tuning (empty if one method)."""
    from scipy.stats import kendalltau

    if perf.method.nunique() < 2:
        return pd.DataFrame(columns=["task_id", "kendall_tau"])
    wide = perf.pivot_table(index=["task_id", "model_id"], columns="method", values="accuracy").dropna()
    return pd.DataFrame([dict(task_id=t, kendall_tau=kendalltau(g["linear_probe"], g["finetune"]).statistic)
                         for t, g in wide.groupby(level=0)])
