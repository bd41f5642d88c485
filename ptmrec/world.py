"""Stage 00: the world a run works in -- source pools, target tasks, and the zoo.

The same code builds the embedded default world (offline datasets, packaged weights) and a
cluster world (Hugging Face datasets and models named in the parameter set).
"""
from __future__ import annotations

from typing import Callable, Iterable

import pandas as pd

from .params import Params


def source_pools(P: Params, progress: Callable[[Iterable], Iterable] = iter) -> dict:
    """Source-role pools for every source task the zoo is pretrained or fine-tuned on."""
    from .data import load_pool

    names = sorted(set(P.zoo.sources) | {s for srcs in P.zoo.lite_finetune.values() for s in srcs}
                   | {s for srcs in P.zoo.finetune.values() for s in srcs})
    return {n: load_pool(n, "source", P.tasks.image_size, P.zoo.train_per_class, P.run.seed, P.data)
            for n in progress(names)}


def target_tasks(P: Params, progress: Callable[[Iterable], Iterable] = iter) -> tuple[dict, list]:
    """Target-role pools and the tasks sampled from them (never a source task: the roles are disjoint)."""
    from .data import dataset_info, load_pool, sample_tasks, split_sizes

    # twice a task's images per class: room for distinct class subsets and for the fresh test split; four times
    # that where the data has styles, so that one style (a theme, a deck) still holds a task's images of a class
    pools = {n: load_pool(n, "target", P.tasks.image_size, 2 * sum(split_sizes(P.tasks, n)) * (4 if dataset_info(n)["styles"] else 1),
                          P.run.seed, P.data)
             for n in progress(list(P.tasks.datasets))}
    return pools, sample_tasks(pools, P.tasks.datasets, P.tasks, P.run.seed)


def tasks_table(tasks: list) -> pd.DataFrame:
    """One row per task: id, dataset, domain, style, number of classes and images per split."""
    return pd.DataFrame([dict(task_id=t.task_id, dataset=t.dataset, domain=t.domain, style=t.style,
                              n_classes=len(t.classes), n_train=len(t.train_idx), n_test=len(t.test_idx),
                              n_fresh=len(t.fresh_idx), classes="|".join(t.classes)) for t in tasks])
