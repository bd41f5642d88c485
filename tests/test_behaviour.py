"""Behaviour tokens: the separability measures by hand, the probe set's hold-out rule, and resuming."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ptmrec import behaviour as B
from ptmrec import zoo
from ptmrec.data import load_pool
from ptmrec.nets import FAMILIES
from ptmrec.params import from_dict

SMALL = {"extract": {"probe_datasets": ["stamps", "silhouettes"], "probe_classes": 3, "probe_per_class": 4},
         "tasks": {"datasets": {"mnist": 2}, "image_size": 32}}


def test_separability_measures_by_hand():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    centres = np.eye(3, 8) * 10
    x = centres[y] + rng.normal(size=(30, 8))
    assert B.loo_1nn(x, y) == 1.0
    assert B.loo_1nn(x, rng.permutation(y)) < 0.6
    assert B.log_scatter_ratio(x, y) > 2.0 > B.log_scatter_ratio(x, rng.permutation(y))
    # a point's own copy is never its neighbour: two identical points of different classes both miss
    assert B.loo_1nn(np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]]), np.array([0, 1, 0, 1])) == 0.0
    assert B.log_participation_ratio(rng.normal(size=(500, 4))) == pytest.approx(np.log(4), abs=0.1)
    assert B.log_participation_ratio(np.outer(rng.normal(size=50), np.ones(6))) == pytest.approx(0.0, abs=1e-6)


def test_probe_set_never_uses_a_target_dataset_or_target_images():
    P = from_dict({**SMALL, "tasks": {"datasets": {"stamps": 2, "mnist": 1}, "image_size": 32}})
    probe = B.probe_set(P)
    assert probe.domain_names == ["silhouettes"] and probe.dropped == ["stamps"]
    assert len(probe.labels) == 3 * 4 and set(probe.domains) == {0}
    target = {im.tobytes() for im in load_pool("silhouettes", "target", 32).images}
    assert not any(im.tobytes() in target for im in probe.images)  # source-role images only
    with pytest.raises(ValueError, match="every one is a target dataset"):
        B.probe_set(from_dict({**SMALL, "tasks": {"datasets": {"stamps": 1, "silhouettes": 1}, "image_size": 32}}))


def test_token_tells_a_model_that_separates_a_domain_from_one_that_does_not():
    P = from_dict(SMALL)
    probe = B.probe_set(P)
    n = len(probe.labels)
    onehot = np.eye(8)[probe.labels + 4 * probe.domains]  # [n, 8]: class identity, per domain
    good = onehot * 5 + np.random.default_rng(0).normal(size=(n, 8))
    blind = np.random.default_rng(1).normal(size=(n, 8))
    tg, tb = B.behaviour_token(good, probe), B.behaviour_token(blind, probe)
    cols = B.token_columns(probe)
    assert tg.shape == (len(cols),) == (2 * 2 + 2,)
    assert tg[cols.index("stamps.knn")] == 1.0 > tb[cols.index("stamps.knn")]
    assert np.allclose(B.behaviour_token(good * np.arange(1, 9), probe), tg, atol=1e-5)  # per-feature scale free


def test_behaviour_tokens_of_a_zoo_resume_from_parts(tmp_path, monkeypatch):
    P = from_dict(SMALL)
    probe = B.probe_set(P)
    for i, fam in enumerate(["simplecnn", "resnet"]):
        torch.manual_seed(i)
        arch = dict(width=8, num_classes=3, image_size=16)
        zoo.save_model(tmp_path / "zoo" / fam, FAMILIES[fam](**arch),
                       dict(model_id=fam, family=fam, arch=arch, source_task="x", classes=list("abc"), image_size=16))
    index = pd.DataFrame({"model_id": ["simplecnn", "resnet"], "path": ["simplecnn", "resnet"]})
    ids, tokens, cols = B.behaviour_tokens(index, tmp_path / "zoo", probe, tmp_path / "parts")
    assert ids == ["simplecnn", "resnet"] and tokens.shape == (2, len(cols)) and np.isfinite(tokens).all()
    assert not np.allclose(tokens[0], tokens[1])
    monkeypatch.setattr(B, "model_behaviour", lambda *a, **k: pytest.fail("recomputed a token kept in parts"))
    again = B.behaviour_tokens(index, tmp_path / "zoo", probe, tmp_path / "parts")[1]
    assert np.array_equal(again, tokens)
