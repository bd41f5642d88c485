"""Ranking metrics on hand-worked cases."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ptmrec import metrics as M

truth = np.array([0.9, 0.7, 0.5, 0.3])


def test_perfect_and_reversed_orders():
    good = M.task_metrics(truth, truth * 10 + 1)
    assert good["weighted_tau"] == pytest.approx(1) and good["weighted_tau_gt"] == pytest.approx(1)
    assert good["top1_regret"] == 0 and good["top3_hit"] == 1 and good["ndcg@3"] == pytest.approx(1)
    bad = M.task_metrics(truth, -truth)
    assert bad["kendall"] == pytest.approx(-1) and bad["spearman"] == pytest.approx(-1)
    assert bad["top1_regret"] == pytest.approx(0.6)


def test_weighted_tau_variants_are_scipys():
    rng = np.random.default_rng(0)
    t, p = rng.random(12), rng.random(12)
    assert M.weighted_tau(t, p) == pytest.approx(stats.weightedtau(t, p).statistic)
    assert M.weighted_tau_gt(t, p) == pytest.approx(stats.weightedtau(t, p, rank=None).statistic)
    assert M.weighted_tau_gt(t, p) != pytest.approx(M.weighted_tau_gt(p, t))  # weights follow the truth only


def test_constant_prediction_scores_zero_not_nan():
    out = M.task_metrics(truth, np.zeros(4))
    assert all(np.isfinite(v) for v in out.values())
    assert out["kendall"] == 0 and out["pearson"] == 0
    assert out["top1_regret"] == 0  # ties resolve to the first model, which here happens to be the best
    assert M.top1_regret(truth[::-1], np.zeros(4)) == pytest.approx(0.6)


def test_ndcg_by_hand():
    pred = np.array([0.0, 1.0, 0.5, 0.2])  # order: model 1, 2, 3
    gain = truth - truth.min()  # [0.6, 0.4, 0.2, 0]
    disc = 1 / np.log2([2, 3, 4])
    expected = (0.4 * disc[0] + 0.2 * disc[1] + 0 * disc[2]) / (0.6 * disc[0] + 0.4 * disc[1] + 0.2 * disc[2])
    assert M.ndcg_at_k(truth, pred, 3) == pytest.approx(expected)
    assert M.topk_hit(truth, pred, 3) == 0 and M.topk_hit(truth, pred, 4) == 1


def test_score_table_per_method_and_task():
    tr = pd.DataFrame(dict(task_id=["a"] * 4, model_id=list("wxyz"), accuracy=truth))
    pred = pd.concat([tr.rename(columns={"accuracy": "score"}).assign(method="oracle"),
                      tr.rename(columns={"accuracy": "score"}).assign(method="anti", score=-truth)])
    table = M.score_table(pred, tr)
    assert set(table.method) == {"oracle", "anti"} and (table.n_models == 4).all()
    assert table.set_index("method").loc["anti", "kendall"] == pytest.approx(-1)
