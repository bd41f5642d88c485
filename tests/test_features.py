"""The feature store: each model runs once per image, and what reads the store sees what a fresh pass gives."""
import numpy as np
import pandas as pd
import pytest
import torch

from ptmrec import baselines, features, groundtruth, zoo
from ptmrec.data import Pool, Task, task_arrays, task_labels
from ptmrec.nets import FAMILIES
from ptmrec.params import GroundTruthParams

ARCH = dict(width=8, num_classes=3, image_size=16)


def _world(tmp_path):
    """A 4-class pool of 40 images, three tasks (two plain ones that share images, one inverted), a saved model."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    images = (rng.integers(0, 60, size=(40, 16, 16, 3)) + 45 * labels[:, None, None, None]).astype(np.uint8)
    pool = Pool("toy", images, labels, ["a", "b", "c", "d"])
    per = {c: np.flatnonzero(labels == c) for c in range(4)}
    pick = lambda cs, a, b: np.concatenate([per[c][a:b] for c in cs]).astype(np.int64)  # noqa: E731
    tasks = [Task("toy-ab", "toy", "plain", ["a", "b"], [0, 1], pick([0, 1], 0, 4), pick([0, 1], 4, 8), "",
                  pick([0, 1], 8, 10)),
             Task("toy-bc", "toy", "plain", ["b", "c"], [1, 2], pick([1, 2], 0, 4), pick([1, 2], 4, 8)),
             Task("toy-inverted-cd", "toy", "inverted", ["c", "d"], [2, 3], pick([2, 3], 0, 4), pick([2, 3], 4, 8))]
    torch.manual_seed(0)
    model = FAMILIES["simplecnn"](**ARCH)
    zoo.save_model(tmp_path / "zoo" / "m", model, dict(model_id="m", family="simplecnn", arch=ARCH, source_task="x",
                                                     classes=list("xyz"), image_size=16))
    return {"toy": pool}, tasks, model


def test_each_image_is_run_once_and_every_split_reads_back_as_a_fresh_pass(tmp_path, monkeypatch):
    pools, tasks, model = _world(tmp_path)
    seen = []
    real = zoo.embed_images
    monkeypatch.setattr(zoo, "embed_images", lambda m, x, *a, **k: seen.append(len(x)) or real(m, x, *a, **k))
    fs = features.model_store(tmp_path / "store", "m", tmp_path / "zoo" / "m", pools, tasks, batch_size=7)
    # the plain tasks share class b's images: one set of their union (a and b: 10 each with toy-ab's fresh split,
    # c: 8), and the inverted task's two splits apart; no image twice
    assert sorted(seen) == [8, 8, 28]
    for t in tasks:
        for split in ("train", "test"):
            x, _ = task_arrays(pools["toy"], t, split)
            want = real(model, x, 16, 5)
            np.testing.assert_allclose(fs.features(t, split), want, rtol=1e-2, atol=1e-3)  # float16 in the store
            np.testing.assert_allclose(fs.logits(t, split), model.head(torch.from_numpy(want)).detach().numpy(),
                                       rtol=1e-2, atol=1e-2)
    assert fs.arrays["toy|features"].dtype == np.float16


def test_a_stored_model_is_read_not_run_again_and_seconds_are_charged_by_share(tmp_path, monkeypatch):
    pools, tasks, _ = _world(tmp_path)
    features.model_store(tmp_path / "store", "m", tmp_path / "zoo" / "m", pools, tasks, batch_size=8)
    monkeypatch.setattr(zoo, "embed_images", lambda *a, **k: pytest.fail("ran a model whose features are stored"))
    fs = features.model_store(tmp_path / "store", "m", tmp_path / "zoo" / "m", pools, tasks, batch_size=8)
    table = features.forward_seconds(tmp_path / "store", ["m"], tasks)
    total = float(fs.arrays["toy|seconds"])
    plain = table[table.task_id != "toy-inverted-cd"]
    assert len(table) == 7 and (table.seconds > 0).all()  # toy-ab has a fresh split; the others do not
    # the plain tasks' splits are charged their images' share of the one pass over the union of 28 images
    # (toy-ab's 20 and toy-bc's 16 overlap: shares of one total, never the total twice)
    np.testing.assert_allclose(plain.seconds.to_numpy(), total * plain.images.to_numpy() / 28)


def test_a_killed_write_leaves_no_file_that_is_trusted(tmp_path, monkeypatch):
    pools, tasks, _ = _world(tmp_path)

    def killed(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        features.model_store(tmp_path / "store", "m", tmp_path / "zoo" / "m", pools, tasks, batch_size=8)
    monkeypatch.undo()
    assert not features.store_path(tmp_path / "store", "m").exists()
    assert not list((tmp_path / "store").glob("*.npz"))  # nothing half-written under a name a reader trusts
    fs = features.model_store(tmp_path / "store", "m", tmp_path / "zoo" / "m", pools, tasks, batch_size=8)
    assert fs.features(tasks[0], "train").shape[0] == 8


def test_a_store_for_other_tasks_is_an_error_that_names_the_model_and_the_set(tmp_path):
    pools, tasks, _ = _world(tmp_path)
    features.model_store(tmp_path / "store", "m", tmp_path / "zoo" / "m", pools, tasks[:1], batch_size=8)
    fs = features.load_store(tmp_path / "store", "m")
    with pytest.raises(KeyError, match="model m: image set toy lacks images of task toy-bc"):
        fs.features(tasks[1], "train")
    with pytest.raises(KeyError, match="model m: the feature store has no image set toy-inverted-cd.train"):
        fs.features(tasks[2], "train")
    with pytest.raises(FileNotFoundError, match="no stored features for model other; stage 01"):
        features.load_store(tmp_path / "store", "other")


def test_features_beyond_float16_are_refused_not_stored_as_inf(tmp_path, monkeypatch):
    pools, tasks, _ = _world(tmp_path)
    monkeypatch.setattr(zoo, "embed_images", lambda m, x, *a, **k: np.full((len(x), 64), 1e6, np.float32))
    with pytest.raises(ValueError, match="model m: features of image set .* exceed float16"):
        features.model_store(tmp_path / "store", "m", tmp_path / "zoo" / "m", pools, tasks, batch_size=8)


def test_ground_truth_and_estimators_read_the_store(tmp_path, monkeypatch):
    pools, tasks, model = _world(tmp_path)
    gp = GroundTruthParams(methods=["linear_probe"], noise_seed=0, probe_steps=50)
    perf = groundtruth.evaluate_model(tmp_path / "zoo" / "m", "m", pools, tasks, gp, 0, tmp_path / "store")
    assert features.store_path(tmp_path / "store", "m").exists() and len(perf) == 3
    fs = features.load_store(tmp_path / "store", "m")
    t = tasks[2]
    from ptmrec.transferability import linear_probe

    acc = linear_probe(fs.features(t, "train"), task_labels(pools["toy"], t, "train"), fs.features(t, "test"),
                       task_labels(pools["toy"], t, "test"), gp.probe_l2, gp.probe_steps)
    assert perf.set_index("task_id").accuracy[t.task_id] == acc
    assert perf.set_index("task_id").seconds[t.task_id] >= fs.seconds(t, "train") + fs.seconds(t, "test") - 1e-4
    monkeypatch.setattr(zoo, "load_model", lambda *a, **k: pytest.fail("stage 05 loaded a model"))
    rows = baselines.run_baselines(pd.DataFrame({"model_id": ["m"], "path": ["m"]}), tmp_path / "store", pools, tasks,
                                   ["logme", "leep"], tmp_path / "parts")
    assert len(rows) == 6 and (rows.error == "").all()
    assert np.allclose(rows[rows.task_id == t.task_id].forward_seconds, fs.seconds(t, "train"))
