"""Stage 05: forward pass, scoring every pair, skipped rows with reasons, resume."""
import numpy as np
import pandas as pd
import pytest
import torch

from ptmrec import baselines, features
from ptmrec.nets import FAMILIES
from ptmrec.transferability import list_scorers
from ptmrec.zoo import logits_images


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_forward_gives_the_models_own_logits_from_one_pass():
    torch.manual_seed(0)
    model = FAMILIES["simplecnn"](width=8, num_classes=5, image_size=32)
    x = _images(12)
    feats, logits, secs = features.forward(model, 32, x, batch_size=5, device="cpu")
    assert feats.shape[0] == 12 and logits.shape == (12, 5)
    np.testing.assert_allclose(logits, logits_images(model, x, 32, batch_size=7), rtol=1e-5, atol=1e-5)


def test_forward_seconds_cover_the_pass(monkeypatch):
    import time

    from ptmrec import zoo

    real = zoo.embed_images

    def slow(*a, **kw):
        time.sleep(0.05)
        return real(*a, **kw)

    monkeypatch.setattr(zoo, "embed_images", slow)
    model = FAMILIES["simplecnn"](width=8, num_classes=5, image_size=32)
    _, _, secs = features.forward(model, 32, _images(4), 4, "cpu")
    assert 0.05 <= secs < 30


def test_forward_without_head_gives_no_logits():
    model = FAMILIES["simplecnn"](width=8, num_classes=5, image_size=32)
    model.head = None
    _, logits, _ = features.forward(model, 32, _images(4), 4, "cpu")
    assert logits is None


def test_score_pair_reports_missing_logits_and_degenerate_features_instead_of_nan():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    feats = rng.normal(size=(30, 16)) + y[:, None]
    rows = pd.DataFrame(baselines.score_pair(feats, y, None, list_scorers()))
    needs = rows.scorer.isin(["leep", "nce"])
    assert rows[needs].error.str.contains("no source head").all()
    assert (rows[~needs].error == "").all() and np.isfinite(rows[~needs].score).all()
    const = pd.DataFrame(baselines.score_pair(np.ones((30, 4)), y, rng.normal(size=(30, 3)), list_scorers()))
    on_logits = const.scorer.isin(["leep", "nce"])  # they read only the logits, which vary
    assert (const[~on_logits].error.str.contains("constant")).all()  # a reason, not a NaN
    assert (const[on_logits].error == "").all()
    scores, skipped = baselines.split_rows(pd.concat([rows, const]).assign(model_id="m", task_id="t"))
    assert np.isfinite(scores.score).all() and len(skipped) == 2 + len(list_scorers()) - 2
    assert "error" not in scores.columns and (skipped.error != "").all()


def test_random_reference_is_seeded_and_covers_every_pair():
    a = baselines.random_scores(["m1", "m2"], ["t1", "t2", "t3"], seed=0)
    b = baselines.random_scores(["m1", "m2"], ["t1", "t2", "t3"], seed=0)
    c = baselines.random_scores(["m1", "m2"], ["t1", "t2", "t3"], seed=1)
    assert len(a) == 6 and a.equals(b) and not np.allclose(a.score, c.score)


def test_run_baselines_resumes_from_parts_and_rejects_unknown_scorers(tmp_path):
    zoo = pd.DataFrame({"model_id": ["done"], "path": ["does-not-exist"]})
    planted = pd.DataFrame([dict(model_id="done", task_id="t", scorer="logme", score=1.5, seconds=0.1,
                                 forward_seconds=0.2, n=10, dim=4, classes=2, error="")])
    planted.to_csv(tmp_path / "done.csv", index=False)
    out = baselines.run_baselines(zoo, tmp_path, {}, [], ["logme"], tmp_path)  # loads nothing: part exists
    assert out.score.tolist() == [1.5] and out.error.tolist() == [""]
    with pytest.raises(ValueError, match="unknown \\['lgome'\\]"):
        baselines.run_baselines(zoo, tmp_path, {}, [], ["lgome"], tmp_path)


@pytest.mark.slow
def test_smoke_stage_scores_every_pair(smoke_runs):
    out = smoke_runs / "smoke" / "05_baselines"
    scores = pd.read_csv(out / "scores.csv")
    zoo = pd.read_csv(smoke_runs / "smoke/00_zoo_and_tasks/zoo/index.csv")
    tasks = pd.read_csv(smoke_runs / "smoke/00_zoo_and_tasks/tasks/index.csv")
    assert np.isfinite(scores.score).all()
    assert set(scores.scorer) == set(list_scorers()) | {"random"}
    counts = scores.groupby("scorer").size()
    assert (counts == len(zoo) * len(tasks)).all()  # every model in the smoke zoo has a head: nothing skipped
    timed = scores[scores.scorer != "random"]
    assert (timed.groupby(["model_id", "task_id"]).forward_seconds.nunique() == 1).all()
    assert (timed.seconds >= 0).all() and (timed.forward_seconds > 0).all()
