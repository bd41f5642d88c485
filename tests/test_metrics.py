"""Ranking metrics on hand-worked cases."""
import numpy as np
import pandas as pd
import pytest

from ptmrec import metrics as M

truth = np.array([0.9, 0.7, 0.5, 0.3])


def test_perfect_and_reversed_orders():
    good = M.task_metrics(truth, truth * 10 + 1)
    assert good["weighted_tau"] == pytest.approx(1) and good["weighted_tau_gt"] == pytest.approx(1)
    assert good["top1_regret"] == 0 and good["top3_hit"] == 1 and good["ndcg@3"] == pytest.approx(1)
    bad = M.task_metrics(truth, -truth)
    assert bad["kendall"] == pytest.approx(-1) and bad["spearman"] == pytest.approx(-1)
    assert bad["top1_regret"] == pytest.approx(0.6)


def _weighted_tau_by_hand(x, y, rank_by):
    """Vigna (WWW 2015), no ties: pairs weighted w(r_i) + w(r_j), w(r) = 1 / (r + 1), r = rank by ``rank_by``
    (0 = highest); tau = sum w_ij sign(x_i - x_j) sign(y_i - y_j) / sum w_ij. A slow, explicit loop."""
    n = len(x)
    r = {i: pos for pos, i in enumerate(sorted(range(n), key=lambda i: -rank_by[i]))}
    num = den = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            w = 1 / (r[i] + 1) + 1 / (r[j] + 1)
            num += w * np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
            den += w
    return num / den


def test_weighted_tau_variants_by_hand():
    # pair weights by truth rank (w = 1, 1/2, 1/3, 1/4): 3/2, 4/3, 5/4, 5/6, 3/4, 7/12; total 6.25
    top_swap = np.array([0.7, 0.9, 0.5, 0.3])     # models 0 and 1 swapped: the pair of weight 3/2 is wrong
    bottom_swap = np.array([0.9, 0.7, 0.3, 0.5])  # models 2 and 3 swapped: the pair of weight 7/12 is wrong
    for fn in (M.weighted_tau, M.weighted_tau_gt):
        assert fn(truth, top_swap) == pytest.approx((6.25 - 2 * 1.5) / 6.25)
        assert fn(truth, bottom_swap) == pytest.approx((6.25 - 2 * 7 / 12) / 6.25)
    assert M.kendall(truth, top_swap) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    assert M.spearman(truth, top_swap) == pytest.approx(1 - 6 * 2 / (4 * (16 - 1)))  # rank differences 1, -1
    # pearson: centred x = [-1.5, -.5, .5, 1.5], centred y = [-1.75, -.75, .25, 2.25]
    assert M.pearson(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 5])) == pytest.approx(6.5 / np.sqrt(5 * 8.75))
    # weighted_tau averages the rankings by truth and by prediction; weighted_tau_gt uses the truth's only
    rng = np.random.default_rng(0)
    t, p = rng.random(9), rng.random(9)
    sym = (_weighted_tau_by_hand(t, p, t) + _weighted_tau_by_hand(t, p, p)) / 2
    assert M.weighted_tau(t, p) == pytest.approx(sym, abs=1e-12)
    assert M.weighted_tau_gt(t, p) == pytest.approx(_weighted_tau_by_hand(t, p, t), abs=1e-12)
    assert abs(M.weighted_tau_gt(t, p) - M.weighted_tau(t, p)) > 0.01  # the case tells the two apart
    assert M.weighted_tau_gt(t, p) != pytest.approx(M.weighted_tau_gt(p, t))  # weights follow the truth only


def test_constant_prediction_scores_zero_not_nan():
    out = M.task_metrics(truth, np.zeros(4))
    assert all(np.isfinite(v) for v in out.values())
    assert out["kendall"] == 0 and out["pearson"] == 0 and out["spearman"] == 0
    assert out["weighted_tau"] == 0 and out["weighted_tau_gt"] == 0


def test_top1_regret_of_a_tie_is_the_mean_over_the_tied_models():
    # a constant predictor picks a random model: expected regret mean(0, .2, .4, .6) = 0.3, whatever the order
    assert M.top1_regret(truth, np.zeros(4)) == pytest.approx(0.3)
    assert M.top1_regret(truth[::-1], np.zeros(4)) == pytest.approx(0.3)
    assert M.top1_regret(truth, np.array([1.0, 0.0, 1.0, 0.5])) == pytest.approx((0 + 0.4) / 2)
    assert M.top1_regret(truth, np.array([0.0, 1.0, 1.0, 1.0])) == pytest.approx((0.2 + 0.4 + 0.6) / 3)
    assert M.top1_regret(truth, np.array([0.0, 1.0, 0.2, 0.3])) == pytest.approx(0.2)  # no tie: model 1
    assert M.top1_regret(truth, np.array([0.0, 0.3, 0.2, 1.0])) == pytest.approx(0.6)
    assert M.task_metrics(truth, np.zeros(4))["top1_regret"] == pytest.approx(0.3)


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


def test_score_table_equals_pandas_groups_on_shuffled_rows():
    """score_table slices its lists from sorted numpy arrays: the lists, their order (first appearance), the
    order of models within each list and every metric must be pandas' groupby(sort=False) loop's, exactly; a
    list cut at the wrong row, or models reordered within one (weighted tau breaks ties by position), differ."""
    rng = np.random.default_rng(0)
    tr = pd.DataFrame([dict(task_id=f"t{t}", model_id=f"m{m}", accuracy=round(rng.random(), 1))
                       for t in range(6) for m in range(7)])
    pred = pd.concat([tr.assign(method=f"x{i}", score=rng.integers(0, 3, len(tr)).astype(float)) for i in range(4)])
    pred = pred.drop(columns="accuracy").sample(frac=1.0, random_state=1).reset_index(drop=True)  # interleaved
    pred = pred[~((pred.method == "x1") & (pred.model_id == "m3"))]  # one method scores fewer models
    merged = pred.merge(tr, on=["task_id", "model_id"])
    want = pd.DataFrame([dict(method=m, task_id=t, n_models=len(g), **M.task_metrics(g.accuracy.to_numpy(),
                                                                                      g.score.to_numpy()))
                         for (m, t), g in merged.groupby(["method", "task_id"], sort=False)])
    pd.testing.assert_frame_equal(M.score_table(pred, tr), want)
    assert M.score_table(pred.iloc[:0], tr).empty


def test_numpy_correlations_equal_scipy_on_ties_nans_and_constants():
    """kendall (tau-b), spearman, pearson and both weighted taus are our own fast paths: each must give scipy's
    value (NaN or a constant input -> 0) on lists with heavy ties, a NaN score, an infinite score and a
    constant list; a tie-handling slip (tau-a for tau-b, ordinal ranks for average ranks) fails here."""
    import warnings

    from scipy import stats

    refs = {"kendall": stats.kendalltau, "spearman": stats.spearmanr, "pearson": stats.pearsonr,
            "weighted_tau": stats.weightedtau, "weighted_tau_gt": lambda x, y: stats.weightedtau(x, y, rank=None)}
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(400):
            n = int(rng.integers(2, 60))
            x = rng.integers(0, 4, n).astype(float) if i % 2 else rng.normal(size=n)
            y = rng.integers(0, 3, n).astype(float) if i % 3 == 0 else rng.normal(size=n)
            if i % 25 == 0:
                y[0] = np.nan
            if i % 37 == 0:
                y[:] = 1.0
            if i % 41 == 0:
                y[-1] = np.inf
            for name, ref in refs.items():
                want = ref(x, y).statistic
                want = float(want) if np.isfinite(want) and np.ptp(x) > 0 and np.ptp(y) > 0 else 0.0
                if name.startswith("weighted"):  # weightedtau has a value for a constant list too
                    want = float(ref(x, y).statistic)
                    want = want if np.isfinite(want) else 0.0
                assert getattr(M, name)(x, y) == pytest.approx(want, abs=1e-12), (name, i)
