"""Transferability scorers: known answers, stated invariances, orderings, robustness, validation.

Small inputs only (N <= 120): the whole file runs in a few seconds.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg as sla
from scipy import optimize, stats
from scipy.special import log_softmax, softmax

from ptmrec import transferability as T

ALL = T.list_scorers()
FEATURE_SCORERS = [n for n in ALL if not T.SCORERS[n].needs_logits]


def blobs(n=90, d=12, c=3, sep=4.0, seed=0):
    """Gaussian blobs: c well-separated classes, balanced, in d dims."""
    r = np.random.default_rng(seed)
    y = np.arange(n) % c
    centers = r.normal(size=(c, d)) * sep / np.sqrt(2)
    return centers[y] + r.normal(size=(n, d)), y


def head_logits(x, n_src=15, seed=1):
    """A random linear source head on the features: its predictions follow the blobs."""
    w = np.random.default_rng(seed).normal(size=(x.shape[1], n_src))
    return x @ w


def run(name, x, y, logits=None, **kw):
    return T.SCORERS[name].fn(x, y, logits, **kw)


# --------------------------------------------------------------------------- registry

def test_registry_lists_every_scorer_with_citation():
    assert set(ALL) == {"logme", "leep", "nleep", "nce", "hscore", "regularized_hscore", "gbc",
                        "sfda", "transrate", "parc", "knn", "linear"}
    for name, s in T.SCORERS.items():
        assert isinstance(s, T.Scorer) and s.name == name and callable(s.fn)
        assert len(s.citation) > 20 and s.fn.__doc__
    assert {n for n in ALL if T.SCORERS[n].needs_logits} == {"leep", "nce"}


def test_register_duplicate_and_unknown_name():
    with pytest.raises(ValueError, match="already registered"):
        T.register_scorer("logme")(lambda f, y, l=None: 0.0)
    with pytest.raises(KeyError, match="unknown scorer .nope.; registered: .*logme"):
        T.get_scorer("nope")
    with pytest.raises(KeyError):
        T.score("nope", np.zeros((4, 2)), [0, 1, 0, 1])


def test_score_times_the_scorer_call():
    import time

    def slow(f, y, logits=None):
        time.sleep(0.05)
        return 1.0

    T.register_scorer("_test_slow")(slow)
    try:
        x, y = blobs(n=20, d=3)
        value, secs = T.score("_test_slow", x, y)
        assert value == 1.0 and 0.05 <= secs < 5.0
    finally:
        del T.SCORERS["_test_slow"]


def test_score_refuses_non_finite_result():
    T.register_scorer("_test_nan")(lambda f, y, l=None: float("nan"))
    try:
        x, y = blobs(n=20, d=3)
        with pytest.raises(ValueError, match="non-finite"):
            T.score("_test_nan", x, y)
    finally:
        del T.SCORERS["_test_nan"]


# --------------------------------------------------------------------------- orderings (all scorers)

@pytest.mark.parametrize("name", ALL)
def test_separated_labels_beat_shuffled_labels(name):
    x, y = blobs()
    logits = head_logits(x)
    shuffled = np.random.default_rng(7).permutation(y)
    good, secs = T.score(name, x, y, logits)
    bad, _ = T.score(name, x, shuffled, logits)
    assert isinstance(good, float) and isinstance(secs, float)
    assert good > bad, (name, good, bad)


@pytest.mark.parametrize("name", ALL)
def test_separated_clusters_beat_overlapping_clusters(name):
    """Same labels and noise, N > D: class centres 3 apart (per unit of noise) vs 0.3 apart. Every scorer
    must rank the features that separate the classes above those that barely do (the logit scorers see a
    source head on the same features)."""
    r = np.random.default_rng(0)
    y = np.arange(60) % 3
    centres, noise = r.normal(size=(3, 8)), r.normal(size=(60, 8))
    sep, overlap = 3.0 * centres[y] + noise, 0.3 * centres[y] + noise
    good = T.score(name, sep, y, head_logits(sep))[0]
    bad = T.score(name, overlap, y, head_logits(overlap))[0]
    assert good > bad, (name, good, bad)


# nleep (k-means initialisation of its GMM) and linear (CV folds) depend on the order of the examples
# through their seeded randomness; every other scorer is a function of the set of (example, label) pairs.
ORDER_FREE = [n for n in ALL if n not in ("nleep", "linear")]


@pytest.mark.parametrize("name", ORDER_FREE)
def test_invariant_to_example_order_and_class_names(name):
    x, y = blobs(n=60, d=8, sep=1.0)                         # overlapping classes: no saturated score
    logits = head_logits(x)
    v = T.score(name, x, y, logits)[0]
    p = np.random.default_rng(3).permutation(60)
    assert T.score(name, x[p], y[p], logits[p])[0] == pytest.approx(v, rel=1e-9, abs=1e-12)
    renamed = np.array([2, 0, 1])[y]
    assert T.score(name, x, renamed, logits)[0] == pytest.approx(v, rel=1e-9, abs=1e-12)
    # ...but two rows swapped without their labels (y[0] = 0, y[1] = 1) must change it: rows stay aligned
    q = np.r_[1, 0, np.arange(2, 60)]
    assert T.score(name, x[q], y, logits[q])[0] != pytest.approx(v, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- robustness (all scorers)

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_features_raise(name, bad, word):
    x, y = blobs(n=30, d=5)
    x[3, 2] = bad
    with pytest.raises(ValueError, match=word):
        T.score(name, x, y, head_logits(np.where(np.isfinite(x), x, 0.0)))
    with pytest.raises(ValueError, match="row"):
        run(name, x, y, head_logits(np.where(np.isfinite(x), x, 0.0)))


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_non_finite_logits_raise(name):
    x, y = blobs(n=30, d=5)
    logits = head_logits(x)
    logits[0, 0] = np.nan
    with pytest.raises(ValueError, match="logits contain non-finite"):
        T.score(name, x, y, logits)


CENTRING = ["hscore", "transrate", "gbc", "parc", "nleep"]  # unchanged by constant columns: next test


@pytest.mark.parametrize("name", [n for n in ALL if n not in CENTRING])
def test_constant_columns_are_handled(name):
    x, y = blobs(n=60, d=6, sep=1.5)
    xc = np.hstack([x, np.full((60, 2), 3.5), np.zeros((60, 1))])
    v, _ = T.score(name, xc, y, head_logits(x))
    if name in ("leep", "nce", "linear"):  # logits only; per-column standardisation
        assert v == pytest.approx(T.score(name, x, y, head_logits(x))[0], rel=1e-8, abs=1e-10)
    else:  # the rest see the constant columns (an intercept, a norm, a trace) but must still read the classes
        shuffled = np.random.default_rng(7).permutation(y)
        assert v > T.score(name, xc, shuffled, head_logits(x))[0]


@pytest.mark.parametrize("name", CENTRING)
def test_centring_scorers_ignore_constant_columns(name):
    x, y = blobs(n=60, d=6)
    xc = np.hstack([x[:, :3], np.full((60, 2), 3.5), x[:, 3:]])
    assert run(name, xc, y) == pytest.approx(run(name, x, y), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_single_example_class_gives_finite_score(name):
    x, y = blobs(n=60, d=6)
    y = y.copy()
    y[0] = 3                                   # class 3 has one example
    v, _ = T.score(name, x, y, head_logits(x))
    assert np.isfinite(v)
    if name not in ("nleep", "linear"):  # (the two slow ones; their labels are compared elsewhere)
        shuffled = np.r_[3, np.random.default_rng(7).permutation(y[1:])]
        assert v > T.score(name, x, shuffled, head_logits(x))[0]


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("hscore", "sfda")])
def test_more_dimensions_than_samples_still_ranks(name):
    """D = 120 > N = 30: every scorer documented to stay informative there must still tell real labels
    from shuffled ones (hscore and sfda saturate; their tests below pin the saturation)."""
    x, y = blobs(n=30, d=120, c=3)
    shuffled = np.random.default_rng(7).permutation(y)
    good, _ = T.score(name, x, y, head_logits(x))
    bad, _ = T.score(name, x, shuffled, head_logits(x))
    assert np.isfinite(good) and good > bad, (name, good, bad)


@pytest.mark.parametrize("name", FEATURE_SCORERS)
def test_all_constant_features_raise(name):
    x = np.ones((20, 4))
    with pytest.raises(ValueError, match="constant"):
        T.score(name, x, np.arange(20) % 2)


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_logit_scorers_do_not_need_feature_variance(name):
    y = np.arange(20) % 2
    v, _ = T.score(name, np.ones((20, 4)), y, 60.0 * np.eye(2)[y])
    assert v == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- input validation

def test_score_validates_inputs():
    x, y = blobs(n=30, d=4)
    with pytest.raises(ValueError, match="2-D"):
        T.score("logme", x[:, 0], y)
    with pytest.raises(ValueError, match="29 entries but features has 30 rows"):
        T.score("logme", x, y[:-1])
    with pytest.raises(ValueError, match="negative label -1"):
        T.score("logme", x, np.where(y == 0, -1, y))
    with pytest.raises(ValueError, match="non-integral"):
        T.score("logme", x, y + 0.5)
    with pytest.raises(ValueError, match="1-D"):
        T.score("logme", x, y[:, None])
    with pytest.raises(ValueError, match="at least 2 classes"):
        T.score("logme", x, np.zeros(30, int))
    with pytest.raises(ValueError, match="needs the source head's logits"):
        T.score("leep", x, y)
    with pytest.raises(ValueError, match="logits has 29 rows"):
        T.score("nce", x, y, head_logits(x)[:-1])
    with pytest.raises(ValueError, match="real numbers"):
        T.score("logme", x.astype(str), y)
    assert T.score("logme", x, y.astype(float))[0] == T.score("logme", x, y)[0]


@pytest.mark.parametrize("name", ALL)
def test_unused_label_ids_are_dropped(name):
    x, y = blobs(n=45, d=5)
    logits = head_logits(x)
    gapped = np.array([0, 2, 5])[y]            # classes 1, 3, 4 absent
    assert T.score(name, x, gapped, logits)[0] == pytest.approx(T.score(name, x, y, logits)[0], rel=1e-12)


# --------------------------------------------------------------------------- LEEP

def test_leep_one_hot_logits_equal_to_labels_is_zero():
    y = np.arange(12) % 3
    assert T.leep(np.zeros((12, 2)), y, 60.0 * np.eye(3)[y]) == pytest.approx(0.0, abs=1e-12)


def test_leep_uninformative_source_is_minus_label_entropy():
    y = np.array([0, 0, 0, 1])
    assert T.leep(np.zeros((4, 1)), y, np.zeros((4, 5))) == pytest.approx(0.75 * np.log(0.75) + 0.25 * np.log(0.25))


def test_leep_hand_computed():
    theta = np.array([[0.8, 0.2], [0.4, 0.6], [0.5, 0.5]])
    y = np.array([0, 1, 1])
    # P(y, z) = [[.8, .2], [.9, 1.1]] / 3, P(z) = [1.7, 1.3] / 3
    eep = [0.8 * 0.8 / 1.7 + 0.2 * 0.2 / 1.3,
           0.4 * 0.9 / 1.7 + 0.6 * 1.1 / 1.3,
           0.5 * 0.9 / 1.7 + 0.5 * 1.1 / 1.3]
    assert T.leep(np.zeros((3, 1)), y, np.log(theta)) == pytest.approx(np.mean(np.log(eep)), rel=1e-12)


def test_leep_invariant_to_permuting_source_classes():
    x, y = blobs(n=50, d=6)
    logits = head_logits(x)
    perm = np.random.default_rng(3).permutation(logits.shape[1])
    assert T.leep(x, y, logits[:, perm]) == pytest.approx(T.leep(x, y, logits), rel=1e-12)


def test_leep_bounds_nce_as_the_paper_proves():
    """The bound the LEEP paper proves (Nguyen et al., ICML 2020, the section relating LEEP to NCE):
    LEEP >= NCE(Y | Z) + 1/N sum_i log theta_i(z_i), z_i the source head's argmax; with a one-hot head
    (theta_i = onehot(z_i)) LEEP equals NCE."""
    r = np.random.default_rng(0)
    y = r.integers(0, 3, 50)
    logits = 2.0 * r.normal(size=(50, 6)) + 3.0 * np.eye(6)[2 * y]
    z = logits.argmax(1)
    f = np.zeros((50, 1))
    bound = T.nce(f, y, logits) + np.mean(log_softmax(logits, axis=1)[np.arange(50), z])
    assert T.leep(f, y, logits) >= bound
    assert T.leep(f, y, logits) < T.nce(f, y, logits) - 0.02   # this soft head: clearly below its hard limit
    assert T.leep(f, y, 200.0 * np.eye(6)[z]) == pytest.approx(T.nce(f, y, logits), rel=1e-10)


# --------------------------------------------------------------------------- NCE

def test_nce_perfect_mapping_is_zero_and_constant_source_is_minus_entropy():
    y = np.arange(20) % 4
    z = np.array([7, 2, 5, 0])[y]                 # injective source -> target relabelling
    assert T.nce(np.zeros((20, 1)), y, 5.0 * np.eye(9)[z]) == 0.0
    y2 = np.array([0, 0, 0, 1])
    assert T.nce(np.zeros((4, 1)), y2, np.tile([0.0, 1.0], (4, 1))) == pytest.approx(
        0.75 * np.log(0.75) + 0.25 * np.log(0.25))


def test_nce_hand_computed_and_source_permutation():
    y = np.array([0, 0, 1, 1])
    z = np.array([0, 0, 0, 1])
    expected = 0.5 * np.log(2 / 3) + 0.25 * np.log(1 / 3) + 0.25 * np.log(1.0)
    logits = 3.0 * np.eye(2)[z]
    assert T.nce(np.zeros((4, 1)), y, logits) == pytest.approx(expected, rel=1e-12)
    assert T.nce(np.zeros((4, 1)), y, logits[:, ::-1]) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- H-score and regularised H-score

def _hscore_dense(f, y):
    fc = f - f.mean(0)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    gc = g - g.mean(0)
    return np.trace(np.linalg.pinv(fc.T @ fc, rcond=1e-12) @ (gc.T @ gc))


def test_hscore_hand_computed_1d():
    # classes at -1 and +1, each {m - a, m + a}: cov(f) = 1 + a^2, cov(E[f|y]) = 1
    a = 0.5
    f = np.array([[-1 - a], [-1 + a], [1 - a], [1 + a]])
    assert T.hscore(f, [0, 0, 1, 1]) == pytest.approx(1 / (1 + a ** 2), rel=1e-12)


def test_hscore_matches_dense_formula_and_linear_invariance():
    x, y = blobs(n=80, d=7, sep=1.5)
    h = T.hscore(x, y)
    assert h == pytest.approx(_hscore_dense(x, y), rel=1e-9)
    r = np.random.default_rng(4)
    assert T.hscore(x[:, r.permutation(7)], y) == pytest.approx(h, rel=1e-10)
    assert T.hscore(x @ r.normal(size=(7, 7)) + 3.0, y) == pytest.approx(h, rel=1e-8)


def test_hscore_saturates_at_c_minus_1_when_d_exceeds_n():
    r = np.random.default_rng(5)
    y = np.arange(30) % 3
    assert T.hscore(r.normal(size=(30, 40)), y) == pytest.approx(2.0, rel=1e-9)   # random labels!
    assert T.regularized_hscore(r.normal(size=(30, 40)), y) < 1.5                 # the fix


def _regularized_hscore_dense(f, y):
    from sklearn.covariance import LedoitWolf

    fc = f - f.mean(0)
    lw = LedoitWolf(assume_centered=True).fit(fc)
    g = np.zeros_like(fc)
    for c in np.unique(y):
        g[y == c] = fc[y == c].mean(0)
    return np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * g.T @ g / len(f)))


@pytest.mark.parametrize("n,d", [(80, 7), (30, 45)])
def test_regularized_hscore_matches_ledoit_wolf_dense(n, d):
    from sklearn.covariance import ledoit_wolf_shrinkage

    r = np.random.default_rng(6)
    y = np.arange(n) % 3
    x = r.normal(size=(n, d)) + r.normal(size=(3, d))[y]
    xc = x - x.mean(0)
    assert T._ledoit_wolf_shrinkage(xc) == pytest.approx(ledoit_wolf_shrinkage(xc, assume_centered=True), rel=1e-10)
    assert T.regularized_hscore(x, y) == pytest.approx(_regularized_hscore_dense(x, y), rel=1e-8)
    assert T.regularized_hscore(x, y, shrinkage=0.0) == pytest.approx(T.hscore(x, y), rel=1e-10)
    assert T.regularized_hscore(x, y) <= T.hscore(x, y) + 1e-12


# --------------------------------------------------------------------------- LogME

def _log_evidence(f, yc, log_alpha, log_beta):
    """log N(yc | 0, I/beta + F F^T/alpha) / N: the evidence of the Bayesian linear model."""
    cov = np.eye(len(yc)) / np.exp(log_beta) + f @ f.T / np.exp(log_alpha)
    _, logdet = np.linalg.slogdet(cov)
    return (-0.5 * logdet - 0.5 * yc @ np.linalg.solve(cov, yc) - len(yc) / 2 * np.log(2 * np.pi)) / len(yc)


def _logme_brute_force(f, y):
    out = []
    for c in np.unique(y):
        yc = (y == c).astype(float)
        runs = [optimize.minimize(lambda p: -_log_evidence(f, yc, *p), x0, method="Nelder-Mead",
                                  options=dict(xatol=1e-9, fatol=1e-12, maxiter=4000))
                for x0 in ([0.0, 0.0], [3.0, 1.0], [-3.0, 2.0])]
        out.append(max(-r.fun for r in runs))
    return np.mean(out)


@pytest.mark.parametrize("n,d", [(45, 6), (20, 35)])
def test_logme_is_the_maximised_evidence(n, d):
    r = np.random.default_rng(8)
    y = np.arange(n) % 3
    x = r.normal(size=(n, d)) + r.normal(size=(3, d))[y]
    assert T.logme(x, y) == pytest.approx(_logme_brute_force(x, y), abs=1e-6)


def test_logme_invariances():
    x, y = blobs(n=60, d=8, sep=1.5)
    v = T.logme(x, y)
    perm = np.array([2, 0, 1])
    assert T.logme(x, perm[y]) == pytest.approx(v, rel=1e-10)                       # classes
    assert T.logme(x[:, ::-1], y) == pytest.approx(v, rel=1e-10)                    # feature columns
    assert T.logme(10.0 * x, y) == pytest.approx(v, rel=1e-8)                       # global scale
    assert T.logme(np.hstack([x, np.zeros((60, 5))]), y) == pytest.approx(v, rel=1e-10)  # null columns


# --------------------------------------------------------------------------- NLEEP

def _leep_by_loops(theta, y):
    """LEEP (Nguyen et al. 2020, eq. 2) written out: P(y, v) = 1/N sum_{i: y_i = y} theta_iv,
    P(y | v) = P(y, v) / sum_y' P(y', v), LEEP = 1/N sum_i log sum_v P(y_i | v) theta_iv."""
    n, v_count = theta.shape
    joint = np.zeros((y.max() + 1, v_count))
    for i in range(n):
        joint[y[i]] += theta[i] / n
    cond = joint / joint.sum(axis=0)
    return np.mean([np.log(sum(cond[y[i], v] * theta[i, v] for v in range(v_count))) for i in range(n)])


def _nleep_reference(x, y):
    """N-LEEP (Li et al., CVPR 2021) from scikit-learn parts: PCA keeping > 80% of the variance, scaled to unit
    mean variance, a full-covariance GMM of 5 components per class (seed 0), LEEP of its posteriors."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    z = PCA(n_components=0.8, svd_solver="full").fit_transform(x)
    z = z / np.sqrt(np.mean(z.var(axis=0)))
    gmm = GaussianMixture(5 * (y.max() + 1), covariance_type="full", random_state=0).fit(z)
    return _leep_by_loops(gmm.predict_proba(z), y)


def test_nleep_is_leep_of_the_gmm_posteriors():
    import warnings

    x, y = blobs(n=60, d=8, sep=1.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _nleep_reference(x, y)
    v = T.nleep(x, y)
    assert v == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert T.nleep(1e-4 * x, y) == pytest.approx(v, rel=1e-6, abs=1e-9)  # reg_covar 1e-6 matters here (Deviation 2)


def test_nleep_is_zero_when_every_component_sits_in_one_class():
    x, y = blobs(n=60, d=8, sep=40.0)          # far apart, tight classes: each GMM component inside one class
    assert T.nleep(x, y) == pytest.approx(0.0, abs=1e-6)
    assert T.nleep(x, np.random.default_rng(7).permutation(y)) < -0.5


# --------------------------------------------------------------------------- GBC

def test_gbc_hand_computed_1d():
    # class 0 = {-2, 0}, class 1 = {0, 2}: means -+1, variances 1 -> D_B = 2^2 / 8 = 0.5
    f = np.array([[-2.0], [0.0], [0.0], [2.0]])
    assert T.gbc(f, [0, 0, 1, 1]) == pytest.approx(-2 * np.exp(-0.5), rel=1e-12)


def test_gbc_hand_computed_diagonal_2d():
    # class 0: mean (-1, 0), variances (1, 1); class 1: mean (1, 0), variances (4, 1);
    # PCA axes are the coordinate axes (total variances 3.5 and 1, no covariance)
    s0, s1 = np.array([1.0, 1.0]), np.array([2.0, 1.0])
    signs = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    f = np.vstack([np.array([-1.0, 0.0]) + signs * s0, np.array([1.0, 0.0]) + signs * s1])
    db = (2.0 ** 2 / 2.5) / 8 + 0.5 * np.log(2.5 / 2.0)
    assert T.gbc(f, [0] * 4 + [1] * 4) == pytest.approx(-2 * np.exp(-db), rel=1e-10)


def _gbc_reference(x, y, spherical=False):
    """GBC (Pandy et al., CVPR 2022, eqs. 3-5) with dense matrices: scikit-learn PCA to min(64, N, D) dims,
    per-class Gaussians N(mu_c, Sigma_c), Sigma_c = diag(variances) floored at 1e-4 x the mean variance
    (or their mean times I if spherical), D_B = 1/8 d^T Sigma^-1 d + 1/2 log(det Sigma / sqrt(det Sigma_i
    det Sigma_j)), Sigma = (Sigma_i + Sigma_j) / 2, GBC = -sum over ordered pairs of exp(-D_B)."""
    from sklearn.decomposition import PCA

    z = PCA(n_components=min(64, *x.shape), svd_solver="full").fit_transform(x)
    floor = 1e-4 * z.var(axis=0).mean()
    classes = np.unique(y)
    mus = [z[y == c].mean(0) for c in classes]
    covs = [np.diag(np.maximum(z[y == c].var(0), floor)) for c in classes]
    if spherical:
        covs = [np.trace(s) / len(s) * np.eye(len(s)) for s in covs]
    total = 0.0
    for i in range(len(classes)):
        for j in range(len(classes)):
            if i != j:
                s = (covs[i] + covs[j]) / 2
                d = mus[i] - mus[j]
                db = d @ np.linalg.solve(s, d) / 8 + 0.5 * (np.linalg.slogdet(s)[1] - 0.5 * (
                    np.linalg.slogdet(covs[i])[1] + np.linalg.slogdet(covs[j])[1]))
                total += np.exp(-db)
    return -total


@pytest.mark.parametrize("n,d,c", [(60, 8, 3), (90, 70, 4)])   # the second keeps 64 of 70 PCA dims
def test_gbc_matches_dense_bhattacharyya_reference(n, d, c):
    x, y = blobs(n=n, d=d, c=c, sep=0.6, seed=2)
    v = T.gbc(x, y)
    assert v == pytest.approx(_gbc_reference(x, y), rel=1e-9)
    assert T.gbc(x, y, gaussian_type="spherical") == pytest.approx(_gbc_reference(x, y, spherical=True), rel=1e-9)
    assert T.gbc(1e-3 * x, y) == pytest.approx(v, rel=1e-8)
    with pytest.raises(ValueError, match="gaussian_type"):
        T.gbc(x, y, gaussian_type="full")


# --------------------------------------------------------------------------- SFDA

def _sfda_fit_dense(x, y, lam=None):
    """Regularised FDA as the official code states it: generalised eigenvectors of (S_b, S_w)."""
    pri = np.bincount(y) / len(y)
    m = np.stack([x[y == c].mean(0) for c in range(len(pri))])
    sw = sum(pri[c] * np.cov(x[y == c].T, bias=True).reshape(x.shape[1], -1) for c in range(len(pri)))
    if lam is None:
        lam = max(np.exp(-5 * np.linalg.eigvalsh(sw)[-1]), 1e-10)
    d = x.shape[1]

    def shrink(s):
        out = (1 - lam) * s
        out.flat[:: d + 1] += lam * np.trace(s) / d
        return out

    st, sws = shrink(np.cov(x.T, bias=True)), shrink(sw)
    ev, vec = sla.eigh(st - sws, sws)
    vec = vec[:, np.argsort(ev)[::-1]]
    coef = m @ vec @ vec.T
    return x @ coef.T - 0.5 * np.diag(m @ coef.T) + np.log(pri), lam, m


def _sfda_dense(x, y, lam=None):
    x = x.copy()
    k = y.max() + 1
    logits, lam, m = _sfda_fit_dense(x, y, lam)
    p = softmax(softmax(logits, axis=1), axis=1)
    other = (m.sum(0) - m) / (k - 1)
    for c in range(k):
        pc = p[y == c, c][:, None]
        x[y == c] = pc * x[y == c] + (1 - pc) * other[c]
    logits2, _, _ = _sfda_fit_dense(x, y, lam)
    return np.mean(log_softmax(logits2, axis=1)[np.arange(len(y)), y])


@pytest.mark.parametrize("n,d,lam", [(60, 8, None), (60, 8, 0.05), (30, 45, 0.1), (30, 45, 1e-3)])
def test_sfda_matches_generalised_eigen_reference(n, d, lam):
    r = np.random.default_rng(9)
    y = np.arange(n) % 3
    x = 0.4 * (r.normal(size=(n, d)) + 1.2 * r.normal(size=(3, d))[y])
    assert T.sfda(x, y, shrinkage=lam) == pytest.approx(_sfda_dense(x, y, lam), rel=1e-6, abs=1e-9)


def test_sfda_is_a_mean_log_probability_and_saturates_when_d_exceeds_n():
    x, y = blobs(n=60, d=8, sep=1.0)
    assert T.sfda(x, y) < 0.0
    wide = np.random.default_rng(10).normal(size=(30, 200))          # random labels, D >> N
    v = T.sfda(wide, np.arange(30) % 3)
    assert np.isfinite(v) and v == pytest.approx(0.0, abs=1e-3)        # documented saturation


# --------------------------------------------------------------------------- TransRate

def test_transrate_hand_computed_1d():
    f = np.array([[-2.0], [0.0], [1.0], [1.0]])                     # mean 0; classes of 1 and 3
    # R(Z) = 1/2 log(1 + 6/4), R(Z_0) = 1/2 log(1 + 4/1), R(Z_1) = 1/2 log(1 + 2/3)   (eps = 1),
    # R(Z|Y) is the plain mean over classes (not weighted by class size)
    expected = 0.5 * np.log(2.5) - 0.5 * (0.5 * np.log(5.0) + 0.5 * np.log(5 / 3))
    assert T.transrate(f, [0, 1, 1, 1], eps=1.0) == pytest.approx(expected, rel=1e-12)


def test_transrate_duplicated_examples_and_rotation():
    x, y = blobs(n=40, d=6, sep=1.5)
    v = T.transrate(x, y)
    assert T.transrate(np.vstack([x, x]), np.concatenate([y, y])) == pytest.approx(v, rel=1e-9)
    q, _ = np.linalg.qr(np.random.default_rng(11).normal(size=(6, 6)))
    assert T.transrate(x @ q, y) == pytest.approx(v, rel=1e-9)


def test_transrate_matches_dense_determinants_when_d_exceeds_n():
    r = np.random.default_rng(12)
    y = np.arange(20) % 2
    x = r.normal(size=(20, 50)) + r.normal(size=(2, 50))[y]
    z = x - x.mean(0)

    def rate(a):
        return 0.5 * np.linalg.slogdet(np.eye(50) + a.T @ a / (len(a) * 1e-2))[1]

    expected = rate(z) - 0.5 * (rate(z[y == 0]) + rate(z[y == 1]))
    assert T.transrate(x, y, eps=1e-2) == pytest.approx(expected, rel=1e-9)


# --------------------------------------------------------------------------- PARC

def test_parc_equals_spearman_of_explicit_rdms():
    x, y = blobs(n=50, d=40, c=4, sep=1.0)
    z = T._pca(x, n_components=32)
    z = z / z.std(0)
    rdm_f = 1 - np.corrcoef(z)
    rdm_y = np.round(1 - np.corrcoef(np.eye(4)[y]), 12)             # exact 0 / 4/3, without float noise
    iu = np.triu_indices(50, 1)
    assert T.parc(x, y) == pytest.approx(stats.spearmanr(rdm_f[iu], rdm_y[iu]).statistic, rel=1e-10)


def test_parc_invariant_to_scale_and_example_order():
    x, y = blobs(n=50, d=10, sep=1.0)
    v = T.parc(x, y)
    assert T.parc(25.0 * x, y) == pytest.approx(v, rel=1e-10)
    p = np.random.default_rng(13).permutation(50)
    assert T.parc(x[p], y[p]) == pytest.approx(v, rel=1e-10)
    with pytest.raises(ValueError, match="at least 2 feature directions"):
        T.parc(x[:, :1], y)
    with pytest.raises(ValueError, match="single example"):
        T.parc(x[:3], y[:3])


# --------------------------------------------------------------------------- kNN, linear

def test_knn_hand_computed():
    angles = np.deg2rad([0.0, 5.0, 20.0, 90.0, 95.0, 110.0])
    f = np.c_[np.cos(angles), np.sin(angles)]
    y = np.array([0, 0, 1, 1, 1, 1])
    # leave-one-out 1-NN: only the 20 degree point (label 1, nearest 5 degrees, label 0) is wrong
    assert T.knn(f, y, k=1) == pytest.approx(5 / 6)
    assert T.knn(3.0 * f, y, k=1) == pytest.approx(5 / 6)


def _knn_by_loops(f, y, k):
    """Leave-one-out k-NN by cosine similarity, majority vote, a tied vote to the tied class whose voters have
    the larger summed similarity (the documented rule), written as plain loops."""
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    hits = 0
    for i in range(len(y)):
        sims = sorted(((float(fn[i] @ fn[j]), j) for j in range(len(y)) if j != i), reverse=True)[:k]
        votes, mass = {}, {}
        for s, j in sims:
            votes[y[j]] = votes.get(y[j], 0) + 1
            mass[y[j]] = mass.get(y[j], 0.0) + s
        best = max(votes, key=lambda c: (votes[c], mass[c]))
        hits += best == y[i]
    return hits / len(y)


@pytest.mark.parametrize("k", [4, 5])          # k = 4 with 3 classes: many 2-2 vote ties
def test_knn_matches_a_loop_reference(k):
    x, y = blobs(n=45, d=6, c=3, sep=0.8, seed=4)
    expected = _knn_by_loops(x, y, k)
    assert 0.4 < expected < 0.95
    assert T.knn(x, y, k=k) == pytest.approx(expected)


def test_linear_pools_the_groundtruth_probe_over_stratified_folds():
    """The estimator is the ground-truth linear probe, cross-validated on the sample: pooled held-out accuracy."""
    from sklearn.model_selection import StratifiedKFold

    from ptmrec.transferability import linear_probe

    x, y = blobs(n=60, d=5, sep=2.5, seed=5)
    hits = 0.0
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        hits += linear_probe(x[tr], y[tr], x[te], y[te]) * len(te)
    assert 0.4 < hits / 60 < 0.95
    assert T.linear(x, y) == pytest.approx(hits / 60)


def test_linear_probe_separable_and_singleton_classes():
    x, y = blobs(n=60, d=5, sep=12.0)
    assert T.linear(x, y) == 1.0
    assert T.linear(x[:4], np.arange(4)) == 0.0                      # every class a singleton


# --------------------------------------------------------------------------- shared algebra

def test_pca_and_top_eigenvalue_fast_paths_match_dense():
    from sklearn.decomposition import PCA

    r = np.random.default_rng(14)
    x = r.normal(size=(150, 200)) * np.linspace(3.0, 0.1, 200)
    z = T._pca(x, n_components=32)                                     # index-subset eigensolver path
    ref = PCA(32, svd_solver="full").fit_transform(x)
    assert np.allclose(np.abs(z), np.abs(ref), atol=1e-8)
    a = r.normal(size=(300, 280))
    g = a @ a.T                                                        # 300 x 300: Lanczos path
    assert T._top_eigenvalue(g) == pytest.approx(np.linalg.eigvalsh(g)[-1], rel=1e-10)
