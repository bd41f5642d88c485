"""Probes over held-out models must read real structure and nothing from noise."""
import numpy as np
import pandas as pd

from ptmrec import probes


def _world(n_per_family: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    fams = np.repeat(["a", "b", "c"], n_per_family)
    centres = {f: rng.normal(size=40) * 3 for f in "abc"}
    x = np.stack([centres[f] for f in fams]) + rng.normal(size=(len(fams), 40))
    return x, fams


def test_family_probe_reads_structure_and_not_noise():
    x, fams = _world()
    assert probes.probe_labels(x, fams) >= 0.95
    noise = np.random.default_rng(1).normal(size=x.shape)
    assert probes.probe_labels(noise, fams) < 0.7
    assert probes.majority(fams) == 1 / 3


def test_accuracy_probe_ranks_held_out_models():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 20))
    acc = 0.5 + 0.1 * x[:, :3] @ rng.normal(size=(3, 4))  # [30 models, 4 tasks], linear in the vectors
    assert probes.probe_accuracy(x, acc) > 0.6
    assert abs(probes.probe_accuracy(rng.normal(size=(30, 20)), acc)) < 0.3


def test_probe_all_aligns_ids_with_tables():
    x, fams = _world(4)
    ids = np.array([f"m{i}" for i in range(len(fams))])
    zoo = pd.DataFrame(dict(model_id=ids[::-1], family=fams[::-1], source_task=np.tile(["s", "t"], 6)))
    # accuracy follows the family (which x encodes); the pivot sorts ids as strings (m0, m1, m10, m11, m2, ...),
    # so only a probe that re-aligns the table to ``ids`` can predict it
    level = {"a": 0.2, "b": 0.5, "c": 0.8}
    perf = pd.DataFrame([dict(model_id=m, task_id=t, method="linear_probe", accuracy=level[f] + 0.01 * j + 0.001 * i)
                         for i, (m, f) in enumerate(zip(ids, fams)) for j, t in enumerate(["t1", "t2"])])
    noise = perf.assign(method="finetune", accuracy=np.random.default_rng(0).random(len(perf)))
    out = probes.probe_all(x, ids, zoo, pd.concat([perf, noise]), "linear_probe")
    assert set(out) == {"family", "source_task", "transfer_tau"}
    assert out["family"] >= 0.9 and out["transfer_tau"] > 0.6
    assert out["source_task"] <= 0.6  # source_task alternates with no relation to x: nothing to read
