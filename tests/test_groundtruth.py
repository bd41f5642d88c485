"""Ground truth on tiny cases: probes, fine-tuning, subsets, noise ceiling."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ptmrec import groundtruth as G
from ptmrec.params import GroundTruthParams
from ptmrec.transferability import linear_probe


def blobs(n_per_class: int, k: int, d: int, sep: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    y = np.repeat(np.arange(k), n_per_class)
    return centres[y] + rng.normal(size=(len(y), d)), y


def test_linear_probe_separable_vs_shuffled():
    x, y = blobs(20, 3, 16, sep=4.0, seed=0)
    xt, yt = blobs(30, 3, 16, sep=4.0, seed=0)  # same centres (same seed), fresh noise below
    xt = xt + np.random.default_rng(1).normal(size=xt.shape) * 0.1
    assert linear_probe(x, y, xt, yt) == 1.0
    shuffled = np.random.default_rng(2).permutation(y)
    assert linear_probe(x, shuffled, xt, yt) < 0.7


def test_linear_probe_scores_the_test_split_and_ignores_constant_or_rescaled_columns():
    x, y = blobs(10, 2, 8, sep=0.4, seed=3)
    xt, yt = blobs(40, 2, 8, sep=0.4, seed=3)
    xt = xt + np.random.default_rng(5).normal(size=xt.shape)
    a = linear_probe(x, y, xt, yt)
    assert 0.5 < a < 1.0  # a case where a mistake shows
    assert linear_probe(x, y, xt, 1 - yt) == pytest.approx(1 - a)  # accuracy on the test labels given
    # a constant feature is standardised away (no NaN, same predictions); features are standardised per column
    const = lambda f: np.c_[np.full((len(f), 1), 5.0), f]  # noqa: E731
    assert linear_probe(const(x), y, const(xt), yt) == a
    scale = np.linspace(0.01, 100.0, 8)
    assert linear_probe(x * scale + 3.0, y, xt * scale + 3.0, yt) == pytest.approx(a)


def test_one_probe_tested_on_two_splits_scores_each_split_as_its_own_probe_would():
    # the noise run fits one probe for its test and fresh splits; a misaligned cut of the joint prediction
    # would score one split's predictions against the other's labels
    x, y = blobs(10, 3, 8, sep=0.6, seed=7)
    tests = {s: blobs(n, 3, 8, sep=0.6, seed=7) for s, n in (("test", 15), ("fresh", 9))}
    tests = {s: (xt + np.random.default_rng(i).normal(size=xt.shape), yt) for i, (s, (xt, yt)) in enumerate(tests.items())}
    accs, secs = G._probe(x, y, tests, ["test", "fresh"], GroundTruthParams())
    assert accs == {s: linear_probe(x, y, *tests[s]) for s in ("test", "fresh")}
    assert accs["test"] != accs["fresh"] and secs > 0


def _images(n_per_class: int, seed: int):
    """Two visually distinct classes: dark vs bright 32 px images with noise, uint8 [n, 32, 32, 3]."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n_per_class)
    base = np.where(y[:, None, None, None] == 0, 60, 190)
    x = np.clip(base + rng.normal(0, 25, (len(y), 32, 32, 3)), 0, 255).astype(np.uint8)
    return x, y


def test_finetune_learns_a_trivial_task():
    from ptmrec.nets import FAMILIES

    import torch

    torch.manual_seed(0)
    model = FAMILIES["simplecnn"](width=8, num_classes=5, image_size=32)
    x, y = _images(16, 0)
    xt, yt = _images(20, 1)
    gp = GroundTruthParams(finetune_steps=30, finetune_batch_size=16, finetune_lr=3e-3)
    acc = G.finetune(model, x, y, xt, yt, 32, gp, seed=0)
    assert acc >= 0.9
    assert acc == G.finetune(model, x, y, xt, yt, 32, gp, seed=0)  # seeded: reproducible
    assert model.head.out_features == 5  # the zoo model itself is untouched


def test_bootstrap_is_stratified():
    y = np.array([0] * 5 + [1] * 7 + [2] * 3)
    idx = G.bootstrap(y, seed=4)
    assert np.bincount(y[idx]).tolist() == [5, 7, 3]
    assert not np.array_equal(np.sort(idx), np.arange(len(y)))  # resampled, with replacement


def test_finetune_subset_round_robin_over_datasets():
    tasks = [SimpleNamespace(task_id=f"{d}-{i}", dataset=d) for d in "abc" for i in range(3)]
    assert G.finetune_subset(tasks, 3) == {"a-0", "b-0", "c-0"}
    assert G.finetune_subset(tasks, 4) == {"a-0", "b-0", "c-0", "a-1"}
    assert G.finetune_subset(tasks, 0) == {t.task_id for t in tasks}


def test_noise_ceiling_and_spread():
    rows = []
    for t in ("t1", "t2"):
        for m, acc in zip("abcd", (0.9, 0.7, 0.5, 0.3)):
            rows.append(dict(model_id=m, task_id=t, method="linear_probe", seed=0, accuracy=acc, chance=0.5))
            noisy = acc if t == "t1" else 1 - acc  # t1: same ranking, t2: reversed
            rows.append(dict(model_id=m, task_id=t, method="linear_probe", seed=1, accuracy=noisy, chance=0.5))
    perf = pd.DataFrame(rows)
    noise = G.noise_ceiling(perf, "linear_probe", 0, 1).set_index("task_id")
    assert noise.kendall_tau["t1"] == pytest.approx(1.0) and noise.kendall_tau["t2"] == pytest.approx(-1.0)
    s = G.spread(perf[perf.seed == 0]).set_index("task_id")
    assert s["range"]["t1"] == pytest.approx(0.6) and s.best["t1"] == pytest.approx(0.9)
    assert G.method_agreement(perf[perf.seed == 0]).empty  # one method: nothing to compare
