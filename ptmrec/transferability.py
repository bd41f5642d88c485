"""Transferability estimators (stage 05 baselines): one plain function per metric.

Every scorer has the signature::

    fn(features [N, D] float, labels [N] int in 0..C-1, logits [N, C_s] | None = None) -> float

and returns a single float where **higher means "predicted to transfer better"**. Logarithms
are natural. ``logits`` are the source head's pre-softmax outputs on the same N target
examples; only LEEP and NCE need them (``Scorer.needs_logits``), the others ignore them.

Registry: ``SCORERS`` (name -> ``Scorer``), filled by the ``register_scorer`` decorator;
``list_scorers()`` gives the names in registration order, ``get_scorer(name)`` looks one up.
``score(name, features, labels, logits=None) -> (value, seconds)`` validates the inputs,
times the call, and returns a finite float or raises ``ValueError``.

Input rules shared by every scorer (``_prepare``; each function applies them too, so calling
a scorer directly is as safe as going through ``score``):

* features must be a finite 2-D numeric array: NaN or +-inf raise a ``ValueError`` that
  counts them and names the first bad rows (nothing is imputed silently). They are cast to
  float64. Features with zero variance in *every* column raise ``ValueError`` (nothing to
  score); individual constant columns are fine.
* labels must be 1-D, one per row, non-negative integers (integer-valued floats accepted).
  Classes are the labels that occur: they are re-indexed to 0..K-1 in sorted order, so an
  unused label id (a gap in 0..C-1) is simply absent rather than an empty class. At least two
  classes are required. A class with a single example is allowed everywhere (see per-scorer
  notes for what it contributes).
* logits, when needed, must be a finite [N, C_s] array with C_s >= 1.

More dimensions than samples (D > N) is supported by every scorer; the linear algebra is done
on the N x N Gram matrix when D > N and on the D x D scatter when D <= N, so a typical call
(N = 100..500, D = 64..1280) costs O(N^2 D) or O(N D^2). Behaviour in that regime, which
callers should know about when D >> N:

* ``hscore`` saturates at its maximum C - 1 once the centred features span all N - 1
  directions (D >= N - 1, generic features): every labelling is "perfectly" explained.
* ``sfda``'s regularisation exp(-5 sigma_max) is usually ~1e-10 for unnormalised features, so
  the within-class scatter is almost singular and the discriminant separates the training
  sample perfectly: the score saturates near its maximum 0 (finite, but uninformative).
* ``logme`` stays informative (the evidence is computed on the rank-k spectrum, see below);
  ``regularized_hscore``, ``gbc``, ``nleep``, ``parc``, ``transrate``, ``knn`` and ``linear``
  remain finite and vary with the data.

Where an implementation departs from the paper or its official code, the scorer's docstring
says so under "Deviations".
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import linalg as sla
from scipy import stats
from scipy.special import log_softmax, softmax

from .registry import Registry

__all__ = [
    "Scorer", "SCORERS", "register_scorer", "list_scorers", "get_scorer", "score",
    "logme", "leep", "nleep", "nce", "hscore", "regularized_hscore", "gbc", "sfda",
    "transrate", "parc", "knn", "linear",
]

ScorerFn = Callable[..., float]

# Eigenvalues of a Gram / scatter matrix below this fraction of the largest are treated as
# zero (singular values below ~1e-5 of the largest). Gram eigenvalues carry an absolute error of
# about 1e-16 * largest, so this is far above round-off and far below any real signal.
_EIG_RTOL = 1e-10


# --------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Scorer:
    """One registered transferability estimator."""

    name: str
    fn: ScorerFn
    needs_logits: bool
    citation: str

    def __call__(self, features, labels, logits=None) -> float:
        return self.fn(features, labels, logits)


SCORERS = Registry("scorer")  # name -> Scorer


def register_scorer(name: str, needs_logits: bool = False, citation: str = "") -> Callable[[ScorerFn], ScorerFn]:
    """Decorator: add ``fn`` to ``SCORERS`` under ``name`` (``ptmrec.registry``'s duplicate policy)."""

    def deco(fn: ScorerFn) -> ScorerFn:
        SCORERS.add(name, Scorer(name=name, fn=fn, needs_logits=needs_logits, citation=citation))
        return fn

    return deco


def list_scorers(pattern: str = "*") -> list[str]:
    """Registered scorer names (fnmatch ``pattern``), sorted."""
    return SCORERS.list(pattern)


def get_scorer(name: str) -> Scorer:
    """The ``Scorer`` registered as ``name``; an unknown name raises ``KeyError`` listing the valid ones."""
    return SCORERS.get(name)


# --------------------------------------------------------------------------- validation

def _nonfinite_message(what: str, a: np.ndarray) -> str:
    n_nan = int(np.isnan(a).sum())
    n_inf = int(np.isinf(a).sum())
    bad_rows = np.flatnonzero(~np.isfinite(a).all(axis=1))
    first = ", ".join(str(i) for i in bad_rows[:5]) + (", ..." if len(bad_rows) > 5 else "")
    return (f"{what} contain non-finite values: {n_nan} NaN and {n_inf} inf in {len(bad_rows)} "
            f"row(s) (first: {first}); remove or impute those rows before scoring")


def _as_float_matrix(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [N, D], got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise ValueError(f"{what} must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(_nonfinite_message(what, a))
    return a


def _as_labels(labels, n: int) -> tuple[np.ndarray, int]:
    """Validated labels re-indexed to 0..K-1 over the classes present, and K."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D array [N], got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"labels has {len(y)} entries but features has {n} rows")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise ValueError("labels must be integers in 0..C-1; got non-integral or non-finite floats")
        y = y.astype(np.int64)
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"labels must be integers in 0..C-1, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"labels must be integers in 0..C-1; found negative label {int(y.min())}")
    classes, y = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes to score transferability, labels contain only {classes.tolist()}")
    return y.astype(np.int64), len(classes)


def _prepare(features, labels, check_variance: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    f = _as_float_matrix(features, "features")
    y, k = _as_labels(labels, f.shape[0])
    if check_variance and not np.any(f.max(axis=0) > f.min(axis=0)):
        raise ValueError("features are constant (zero variance in every column): nothing to score")
    return f, y, k


def _prepare_logits(logits, n: int) -> np.ndarray:
    if logits is None:
        raise ValueError("this scorer needs the source head's logits [N, C_s]; got logits=None")
    z = _as_float_matrix(logits, "logits")
    if z.shape[0] != n:
        raise ValueError(f"logits has {z.shape[0]} rows but features has {n} rows")
    return z


# --------------------------------------------------------------------------- shared algebra

def _onehot(y: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), y] = 1.0
    return out


def _gram(x: np.ndarray) -> np.ndarray:
    """The smaller Gram matrix of x [N, D]: x x^T [N, N] if N <= D else x^T x [D, D]."""
    return x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x


def _left_spectrum(x: np.ndarray, rtol: float = _EIG_RTOL,
                   gram: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero spectrum of X X^T without forming the larger of the two Gram matrices.

    x [N, D] -> (w [k] eigenvalues of X X^T = squared singular values, descending, those above
    rtol * largest; u [N, k] the matching orthonormal left singular vectors). ``gram`` may pass
    ``_gram(x)`` if the caller already has it.
    """
    if gram is None:
        gram = _gram(x)
    w, vec = np.linalg.eigh(gram)
    w, vec = w[::-1], vec[:, ::-1]
    keep = w > rtol * w[0] if w[0] > 0 else np.zeros(len(w), bool)
    w, vec = w[keep], vec[:, keep]
    if x.shape[0] <= x.shape[1]:
        return w, vec                                        # eigenvectors of x x^T
    return w, (x @ vec) / np.sqrt(w)                         # u = x v / s from those of x^T x


def _top_spectrum(x: np.ndarray, gram: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Like ``_left_spectrum`` but only the k largest eigenpairs (LAPACK syevr on an index subset)."""
    m = gram.shape[0]
    w, vec = sla.eigh(gram, subset_by_index=[m - k, m - 1], driver="evr")
    w, vec = w[::-1], vec[:, ::-1]
    keep = w > _EIG_RTOL * w[0] if w[0] > 0 else np.zeros(len(w), bool)
    w, vec = w[keep], vec[:, keep]
    if x.shape[0] <= x.shape[1]:
        return w, vec
    return w, (x @ vec) / np.sqrt(w)


def _pca(x: np.ndarray, n_components: Optional[int] = None, variance: Optional[float] = None) -> np.ndarray:
    """PCA scores of x [N, D] -> [N, k] (centred; exact, via the smaller Gram matrix).

    k = min(n_components, rank) or, with ``variance`` in (0, 1), the fewest leading components
    whose explained-variance ratio exceeds ``variance`` (scikit-learn's rule). Component signs are
    fixed so that the largest-magnitude score of each component is positive (deterministic, and
    unchanged by rescaling or permuting feature columns).
    """
    xc = x - x.mean(axis=0)
    gram = _gram(xc)
    m = gram.shape[0]
    if variance is None and n_components is not None and m > 128 and n_components < m // 2:
        w, u = _top_spectrum(xc, gram, n_components)
    else:
        w, u = _left_spectrum(xc, gram=gram)
    if len(w) == 0:
        return np.zeros((x.shape[0], 0))
    if variance is not None:
        ratio = np.cumsum(w) / w.sum()
        k = int(np.searchsorted(ratio, variance, side="right")) + 1
    else:
        k = len(w) if n_components is None else n_components
    k = max(1, min(k, len(w)))
    s = u[:, :k] * np.sqrt(w[:k])
    rows = np.abs(s).argmax(axis=0)
    s *= np.sign(s[rows, np.arange(k)])
    return s


def _leep_from_probs(theta: np.ndarray, y: np.ndarray, k: int) -> float:
    """LEEP of source-label probabilities theta [N, Z] for target labels y [N] in 0..k-1."""
    n = len(y)
    joint = _onehot(y, k).T @ theta / n                          # P(y, z)  [k, Z]
    pz = joint.sum(axis=0)                                      # P(z)     [Z]
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)   # P(y | z) [k, Z]
    eep = np.einsum("nz,nz->n", theta, cond[y])                 # sum_z P(y_n | z) theta_nz  [N]
    return float(np.mean(np.log(np.maximum(eep, np.finfo(float).tiny))))


# --------------------------------------------------------------------------- scorers

@register_scorer("logme", citation=(
    "K. You, Y. Liu, J. Wang, M. Long. LogME: Practical Assessment of Pre-trained Models for "
    "Transfer Learning. ICML 2021."))
def logme(features, labels, logits=None, *, max_iter: int = 200, tol: float = 1e-7) -> float:
    """LogME: mean over classes of the maximised log evidence of a Bayesian linear model, / N.

    Reference: K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of Pre-trained
    Models for Transfer Learning", ICML 2021 (official code: github.com/thuml/LogME).

    F [N, D] features, y_c = 1[y == c] [N] for each class c. Model: w ~ N(0, alpha^-1 I_D),
    y_c | F, w ~ N(F w, beta^-1 I_N). With the SVD F = U diag(s) V^T (k = rank(F) nonzero
    sigma_i = s_i^2, x = U^T y_c [k]) and t = alpha / beta, MacKay's fixed point iterates::

        gamma = sum_i sigma_i / (sigma_i + t)
        |m|^2 = sum_i sigma_i x_i^2 / (sigma_i + t)^2          (posterior mean m = beta A^-1 F^T y)
        |F m - y|^2 = sum_i x_i^2 t^2 / (sigma_i + t)^2 + (|y|^2 - |x|^2)
        alpha <- gamma / |m|^2,   beta <- (N - gamma) / |F m - y|^2

    until |t_new - t| / t <= tol, then the log evidence is::

        L = k/2 log alpha + N/2 log beta - 1/2 sum_i log(alpha + beta sigma_i)
            - beta/2 |F m - y|^2 - alpha/2 |m|^2 - N/2 log 2 pi

    and LogME = mean_c L_c / N. (k/2 log alpha - 1/2 sum_{i<=k} equals the paper's
    D/2 log alpha - 1/2 log|alpha I + beta F^T F| since the D - k zero eigenvalues of F^T F each
    contribute log alpha.) All classes iterate together (vectorised over c). Features are used as
    given (no centring), as in the paper. The result is invariant to a global rescaling of F and
    to permuting classes or feature columns.

    Deviations: (1) the official fixed-point code writes D/2 log alpha but sums log(alpha + beta
    sigma_i) over the k nonzero singular values only, which over-counts (D - k)/2 log alpha when
    rank(F) < D (D > N, or constant/duplicated columns); we use the exact expression, so appending
    all-zero columns leaves the score unchanged. (2) The official code guards the alpha/beta
    updates with an absolute 1e-5 and stops after 11 iterations at tol 1e-3; we use scale-free
    guards (1e-12 relative) and iterate to tol 1e-7 (<= max_iter), i.e. closer to the true maximum.
    """
    f, y, k_cls = _prepare(features, labels)
    n = f.shape[0]
    sigma, u = _left_spectrum(f)                           # [k], [N, k]
    yy = _onehot(y, k_cls)                                 # [N, C]
    x2 = (u.T @ yy) ** 2                                   # [k, C]
    y2 = yy.sum(axis=0)                                    # |y_c|^2 = n_c   [C]
    res0 = np.maximum(y2 - x2.sum(axis=0), 0.0)            # part of y_c outside span(F)  [C]
    m2_guard = 1e-12 * y2 / sigma[0]
    r2_guard = 1e-12 * y2
    sig = sigma[:, None]

    def stats_at(t):
        den = sig + t                                      # [k, C]
        gamma = (sig / den).sum(axis=0)
        m2 = (sig * x2 / den ** 2).sum(axis=0)
        res2 = (x2 * (t / den) ** 2).sum(axis=0) + res0
        return gamma, m2, res2

    alpha = np.ones(k_cls)
    beta = np.ones(k_cls)
    active = np.ones(k_cls, bool)
    for _ in range(max_iter):
        t = alpha / beta
        gamma, m2, res2 = stats_at(t)
        new_alpha = gamma / (m2 + m2_guard)
        new_beta = (n - gamma) / (res2 + r2_guard)
        alpha = np.where(active, new_alpha, alpha)
        beta = np.where(active, new_beta, beta)
        active &= np.abs(alpha / beta - t) > tol * t
        if not active.any():
            break
    _, m2, res2 = stats_at(alpha / beta)
    evidence = (len(sigma) / 2 * np.log(alpha) + n / 2 * np.log(beta)
                - 0.5 * np.log(alpha[None, :] + beta[None, :] * sig).sum(axis=0)
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(np.mean(evidence / n))


@register_scorer("leep", needs_logits=True, citation=(
    "C. V. Nguyen, T. Hassner, M. Seeger, C. Archambeau. LEEP: A New Measure to Evaluate "
    "Transferability of Learned Representations. ICML 2020."))
def leep(features, labels, logits=None) -> float:
    """LEEP: log expected empirical prediction of the source head re-used through P(y | z).

    Reference: C. V. Nguyen, T. Hassner, M. Seeger, C. Archambeau, "LEEP: A New Measure to
    Evaluate Transferability of Learned Representations", ICML 2020.

    theta = softmax(logits) [N, Z] (source-label distribution per example)::

        P(y, z) = 1/N sum_{i: y_i = y} theta_iz        [C, Z]
        P(y | z) = P(y, z) / P(z),  P(z) = sum_y P(y, z)
        LEEP = 1/N sum_i log( sum_z P(y_i | z) theta_iz )   <= 0

    Features are validated but not used. A source class z that no example predicts (P(z) = 0)
    gets P(y | z) = 0; it is multiplied by theta_iz = 0 anyway.
    """
    f, y, k = _prepare(features, labels, check_variance=False)
    z = _prepare_logits(logits, f.shape[0])
    return _leep_from_probs(softmax(z, axis=1), y, k)


@register_scorer("nleep", citation=(
    "Y. Li, X. Jia, R. Sang, Y. Zhu, B. Green, L. Wang, B. Gong. Ranking Neural Checkpoints. "
    "CVPR 2021."))
def nleep(features, labels, logits=None, *, components_per_class: int = 5, variance: float = 0.8,
          seed: int = 0) -> float:
    """N-LEEP: LEEP with the source head replaced by a Gaussian mixture fitted to the features.

    Reference: Y. Li, X. Jia, R. Sang, Y. Zhu, B. Green, L. Wang, B. Gong, "Ranking Neural
    Checkpoints", CVPR 2021.

    1. PCA of F [N, D] keeping the fewest components that explain > ``variance`` (80%) of the
       variance -> Z [N, d].
    2. Z is divided by its root-mean-square per-dimension standard deviation (see Deviations).
    3. GMM with V = ``components_per_class`` * C components (5 C as in the paper and the
       google-research reference), full covariances, k-means init, ``random_state=seed``
       (scikit-learn ``GaussianMixture``, one init, at most 100 EM steps) -> posteriors
       theta [N, V] = P(v | x_i).
    4. NLEEP = LEEP(theta, y) (see ``leep``).

    Deterministic for a fixed seed. A single-example class is fine (it only enters P(y, v)).

    Deviations: (1) V is capped at N (scikit-learn needs at least as many samples as
    components). (2) Step 2 makes the score invariant to a global rescaling of the features;
    without it scikit-learn's absolute ``reg_covar`` = 1e-6 acts differently on features of
    different scale. Otherwise as in the reference. EM stopping early is not reported
    (ConvergenceWarning is silenced): the fixed budget is part of the definition here.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    f, y, k = _prepare(features, labels)
    z = _pca(f, variance=variance)
    z = z / np.sqrt(np.mean(z.var(axis=0)))
    n_comp = int(min(components_per_class * k, f.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm = GaussianMixture(n_components=n_comp, covariance_type="full", random_state=seed).fit(z)
        theta = gmm.predict_proba(z)
    return _leep_from_probs(theta, y, k)


@register_scorer("nce", needs_logits=True, citation=(
    "A. T. Tran, C. V. Nguyen, T. Hassner. Transferability and Hardness of Supervised "
    "Classification Tasks. ICCV 2019."))
def nce(features, labels, logits=None) -> float:
    """NCE: negative conditional entropy -H(Y | Z) of target labels given source labels.

    Reference: A. T. Tran, C. V. Nguyen, T. Hassner, "Transferability and Hardness of
    Supervised Classification Tasks", ICCV 2019.

    Z_i = argmax_z logits_iz (the source head's hard prediction, as in the LEEP paper's use of
    NCE when the target set has no source labels)::

        P(y, z) = #{i: y_i = y, Z_i = z} / N,   P(y | z) = P(y, z) / P(z)
        NCE = sum_{y, z} P(y, z) log P(y | z)  = -H(Y | Z)   in [-H(Y), 0]

    0 when the source prediction determines the target label. Ties in argmax go to the lowest z.
    """
    f, y, k = _prepare(features, labels, check_variance=False)
    logit = _prepare_logits(logits, f.shape[0])
    zs = logit.argmax(axis=1)
    n_src = logit.shape[1]
    joint = np.bincount(y * n_src + zs, minlength=k * n_src).reshape(k, n_src) / len(y)
    pz = joint.sum(axis=0)
    nz = joint > 0
    cond = joint[nz] / np.broadcast_to(pz, joint.shape)[nz]
    return float(np.sum(joint[nz] * np.log(cond)))


def _hscore_terms(xc: np.ndarray, y: np.ndarray, k: int,
                  gram: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """For centred features xc [N, D]: eigenvalues lam_i [r] of cov(f) (1/N normalisation,
    nonzero ones) and q_i = sum_c (u_i^T 1_c)^2 / n_c [r], the share of the class indicators in
    each direction."""
    w, u = _left_spectrum(xc, gram=gram)
    counts = np.bincount(y, minlength=k)
    yhat = _onehot(y, k) / np.sqrt(counts)                 # unit-norm class indicators [N, C]
    q = ((u.T @ yhat) ** 2).sum(axis=1)                    # [r]
    return w / xc.shape[0], q


@register_scorer("hscore", citation=(
    "Y. Bao, Y. Li, S.-L. Huang, L. Zhang, L. Zheng, A. Zamir, L. Guibas. An Information-"
    "Theoretic Approach to Transferability in Task Transfer Learning. ICIP 2019."))
def hscore(features, labels, logits=None) -> float:
    """H-score: tr( cov(f)^+ cov(E[f | y]) ).

    Reference: Y. Bao, Y. Li, S.-L. Huang, L. Zhang, L. Zheng, A. Zamir, L. Guibas, "An
    Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019.

    With f centred (Xc [N, D]), cov(f) = Xc^T Xc / N and cov(E[f|y]) = sum_c n_c/N
    (mu_c - mu)(mu_c - mu)^T. Because every centred class mean is a combination of the rows of
    Xc, the trace reduces exactly to::

        H = sum_c || Pi 1_c ||^2 / n_c        Pi = projector onto the column space of Xc in R^N

    (u_i the left singular vectors of Xc with nonzero singular value, Pi = sum_i u_i u_i^T),
    which needs no D x D inverse. 0 <= H <= C - 1; H = C - 1 whenever the centred features span
    all N - 1 directions, i.e. H saturates when D >= N - 1 (documented, expected).
    Invariant to any invertible linear map of the features (in particular permuting or
    rescaling columns) and to the normalisation (1/N or 1/(N-1)) used for both covariances.

    Deviations: the pseudo-inverse cut-off is eigenvalues of cov(f) below 1e-10 x the largest
    (the official code uses numpy's pinv with rcond=1e-15 on cov(f), i.e. at round-off level,
    where the result depends on numerical noise).
    """
    f, y, k = _prepare(features, labels)
    _, q = _hscore_terms(f - f.mean(axis=0), y, k)
    return float(q.sum())


def _ledoit_wolf_shrinkage(xc: np.ndarray, gram: Optional[np.ndarray] = None) -> float:
    """Ledoit-Wolf shrinkage of centred xc [N, D], identical to
    ``sklearn.covariance.ledoit_wolf_shrinkage(xc, assume_centered=True)`` but O(N^2 D) via
    ||X^T X||_F = ||X X^T||_F when D > N."""
    n, p = xc.shape
    if p == 1:
        return 0.0
    r = np.einsum("ij,ij->i", xc, xc)                       # |x_i|^2  [N]
    trace = r.sum() / n                                      # tr(S)
    mu = trace / p
    beta_ = np.sum(r ** 2)                                   # sum of entries of X2^T X2
    if gram is None:
        gram = _gram(xc)
    delta_ = np.sum(gram ** 2) / n ** 2                      # ||S||_F^2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace + p * mu ** 2) / p   # ||S - mu I||_F^2 / p
    if delta <= 0:
        return 0.0
    beta = min(beta, delta)
    return float(np.clip(beta / delta, 0.0, 1.0))


@register_scorer("regularized_hscore", citation=(
    "S. Ibrahim, N. Ponomareva, R. Mazumder. Newer is not always better: Rethinking "
    "transferability metrics, their peculiarities, stability and performance. arXiv:2110.06893, "
    "2021 (ICLR 2022 submission; archival venue believed ECML-PKDD 2022)."))
def regularized_hscore(features, labels, logits=None, *, shrinkage: Optional[float] = None) -> float:
    """Shrinkage-based H-score H_alpha = tr( cov_alpha(f)^-1 (1 - alpha) cov(E[f | y]) ).

    Reference: S. Ibrahim, N. Ponomareva, R. Mazumder, "Newer is not always better: Rethinking
    transferability metrics, their peculiarities, stability and performance", arXiv:2110.06893
    (2021); OpenReview submission (ICLR 2022). Archival venue believed to be ECML-PKDD 2022
    (not verified here).

    cov_alpha(f) = (1 - alpha) cov(f) + alpha mu I, mu = tr(cov(f)) / D, alpha the Ledoit-Wolf
    shrinkage of the centred features (``shrinkage`` overrides it; alpha = 0 gives ``hscore``).
    In the eigenbasis of cov(f) (eigenvalues lam_i, left singular vectors u_i of Xc) this is::

        H_alpha = sum_i (1 - alpha) lam_i / ((1 - alpha) lam_i + alpha mu) * sum_c (u_i^T 1_c)^2 / n_c

    so H_alpha <= H and it does not saturate for D > N the way H does. O(N^2 D), no D x D inverse.

    Deviations: both covariances use 1/N (the widely used Transfer-Learning-Library version mixes
    Ledoit-Wolf's 1/N with ``np.cov``'s 1/(N-1) for the class-mean covariance, a factor
    N/(N-1)). Ledoit-Wolf alpha is computed exactly as scikit-learn does, on centred features.
    """
    f, y, k = _prepare(features, labels)
    xc = f - f.mean(axis=0)
    d = f.shape[1]
    gram = _gram(xc)
    alpha = _ledoit_wolf_shrinkage(xc, gram) if shrinkage is None else float(shrinkage)
    lam, q = _hscore_terms(xc, y, k, gram)
    mu = lam.sum() / d
    wgt = (1 - alpha) * lam / ((1 - alpha) * lam + alpha * mu)
    return float(np.sum(wgt * q))


@register_scorer("gbc", citation=(
    "M. Pandy, A. Agostinelli, J. Uijlings, V. Ferrari, T. Mensink. Transferability Estimation "
    "using Bhattacharyya Class Separability. CVPR 2022."))
def gbc(features, labels, logits=None, *, n_components: int = 64, gaussian_type: str = "diagonal") -> float:
    """GBC: minus the summed Bhattacharyya coefficients between per-class Gaussians.

    Reference: M. Pandy, A. Agostinelli, J. Uijlings, V. Ferrari, T. Mensink, "Transferability
    Estimation using Bhattacharyya Class Separability", CVPR 2022 (reference code:
    google-research/stable_transfer/transferability/gbc.py).

    Features are PCA-reduced to min(64, rank) dims (64 as in the reference configuration).
    Class c gets N(mu_c, diag(v_c)), v_c the per-dimension (population) variance, floored. Then::

        D_B(i, j) = 1/8 sum_d (mu_i - mu_j)^2 / v_ij + 1/2 sum_d [log v_ij - (log v_i + log v_j)/2],
        v_ij = (v_i + v_j) / 2,     BC(i, j) = exp(-D_B(i, j)),
        GBC = - sum_i sum_{j != i} BC(i, j)        in [-C(C-1), 0]

    (ordered pairs, as in the reference code). ``gaussian_type="spherical"`` replaces v_c by its
    mean over dimensions (one variance per class).

    Deviations: (1) variance floor: max(v, 1e-4 x mean variance of the reduced features) instead
    of the reference's absolute 1e-4, so the score is invariant to rescaling the features; the
    floor is what a single-example class (zero variance) gets. (2) The reference configuration's
    ``gaussian_type`` is "spherical" (and its spherical log-det term omits the factor d); we
    default to "diagonal" (this project's choice; which one the paper's experiments use was not
    verified), and the spherical variant uses the correct d-dimensional log-det.
    """
    if gaussian_type not in ("diagonal", "spherical"):
        raise ValueError(f"gaussian_type must be 'diagonal' or 'spherical', got {gaussian_type!r}")
    f, y, k = _prepare(features, labels)
    z = _pca(f, n_components=n_components)                 # [N, d]
    d = z.shape[1]
    yy = _onehot(y, k)
    counts = yy.sum(axis=0)
    mu = (yy.T @ z) / counts[:, None]                        # [C, d]
    var = (yy.T @ z ** 2) / counts[:, None] - mu ** 2        # [C, d] population variance
    floor = 1e-4 * np.mean(z.var(axis=0))
    var = np.maximum(var, floor)
    if gaussian_type == "spherical":
        var = np.repeat(var.mean(axis=1, keepdims=True), d, axis=1)
    logv = np.log(var)
    vij = (var[:, None, :] + var[None, :, :]) / 2            # [C, C, d]
    diff2 = (mu[:, None, :] - mu[None, :, :]) ** 2
    db = (diff2 / vij).sum(axis=2) / 8 + 0.5 * (
        np.log(vij).sum(axis=2) - 0.5 * (logv.sum(axis=1)[:, None] + logv.sum(axis=1)[None, :]))
    bc = np.exp(-db)
    np.fill_diagonal(bc, 0.0)
    return float(-bc.sum())


def _top_eigenvalue(s: np.ndarray) -> float:
    """Largest eigenvalue of a symmetric PSD matrix s [m, m] (exact; Lanczos when m is large)."""
    m = s.shape[0]
    if m <= 256:
        return float(np.linalg.eigvalsh(s)[-1])
    from scipy.sparse.linalg import eigsh
    v0 = s.sum(axis=1) + 1.0 / np.sqrt(m)                     # deterministic start (as the official power step)
    return float(eigsh(s, k=1, which="LA", v0=v0, tol=1e-12, return_eigenvectors=False)[0])


def _psd_solve(b: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """b^-1 rhs for a symmetric positive definite b: Cholesky, or if round-off makes b look
    indefinite, an eigendecomposition with eigenvalues floored at 1e-15 x the largest."""
    try:
        return sla.cho_solve(sla.cho_factor(b, lower=True), rhs)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(b)
        w = np.maximum(w, 1e-15 * w[-1])
        return v @ ((v.T @ rhs) / w[:, None])


def _sfda_discriminant(x: np.ndarray, y: np.ndarray, k: int, shrinkage: Optional[float]):
    """Regularised-FDA class scores of SFDA for x [N, D]: (logits [N, C], shrinkage, means [C, D]).

    S_w = sum_c pi_c cov_c (population covariances) = A^T A with A = (x - mu_{y}) / sqrt(N),
    mu = tr(S_w)/D, S_w,lam = (1 - lam) S_w + lam mu I, lam = max(exp(-5 sigma_max(S_w)), 1e-10)
    unless given. The official code takes all D generalised eigenvectors V of (S_b, S_w,lam),
    which satisfy V V^T = S_w,lam^{-1}; its discriminant x^T V V^T mu_c - 1/2 mu_c^T V V^T mu_c
    + log pi_c is therefore computed as x^T W_c - 1/2 mu_c^T W_c + log pi_c, W = S_w,lam^{-1} M^T:
    a D x D Cholesky solve when D <= N, else Woodbury with an N x N Cholesky::

        S_w,lam^{-1} = (I - A^T (kappa I + A A^T)^{-1} A) / (lam mu),   kappa = lam mu / (1 - lam)
    """
    n, d = x.shape
    yy = _onehot(y, k)
    counts = yy.sum(axis=0)
    priors = counts / n
    means = (yy.T @ x) / counts[:, None]                     # [C, D]
    a = (x - means[y]) / np.sqrt(n)                          # S_w = a^T a  [N, D]
    xc = x - x.mean(axis=0)
    total = np.einsum("ij,ij->", xc, xc) / n / d             # tr(S_t) / D, > 0 after _prepare
    gram = _gram(a)                                          # S_w, or the N x N Gram with the same spectrum
    mu = np.trace(gram) / d
    lam = max(np.exp(-5.0 * _top_eigenvalue(gram)), 1e-10) if shrinkage is None else float(shrinkage)
    mu = max(mu, 1e-12 * total)                              # every class a single point: S_w = 0
    if d <= n:
        b = (1.0 - lam) * gram
        b.flat[:: d + 1] += lam * mu
        wmat = _psd_solve(b, means.T)                        # [D, C]
    elif lam >= 1.0:
        wmat = means.T / mu
    else:
        g = gram.copy()
        g.flat[:: n + 1] += lam * mu / (1.0 - lam)
        inner = _psd_solve(g, a @ means.T)                   # [N, C]
        wmat = (means.T - a.T @ inner) / (lam * mu)
    logits = x @ wmat - 0.5 * np.einsum("dc,cd->c", wmat, means) + np.log(priors)
    return logits, lam, means


@register_scorer("sfda", citation=(
    "W. Shao, X. Zhao, Y. Ge, Z. Zhang, L. Yang, X. Wang, Y. Shan, P. Luo. Not All Models Are "
    "Equal: Predicting Model Transferability in a Self-challenging Fisher Space. ECCV 2022."))
def sfda(features, labels, logits=None, *, shrinkage: Optional[float] = None) -> float:
    """SFDA: self-challenging Fisher discriminant analysis (regularised FDA + ConfMix).

    Reference: W. Shao, X. Zhao, Y. Ge, Z. Zhang, L. Yang, X. Wang, Y. Shan, P. Luo, "Not All
    Models Are Equal: Predicting Model Transferability in a Self-challenging Fisher Space",
    ECCV 2022 (official code: github.com/TencentARC/SFDA, metrics.py).

    1. Regularised FDA on F [N, D] (see ``_sfda_discriminant``): lam = exp(-5 sigma_max(S_w))
       (floored at 1e-10), class scores delta_c(x) and p(y | x) = softmax(delta(x)).
    2. Self-challenging ConfMix: confidences are softened once more, p~ = softmax(p(y | x_i)),
       and each example is mixed towards the mean of the *other* classes' means::

           x~_i = p~_{i, y_i} x_i + (1 - p~_{i, y_i}) * mean_{c != y_i} mu_c

    3. Regularised FDA again on X~ with the same lam; SFDA = 1/N sum_i log p(y_i | x~_i) <= 0.

    Exactly the official pipeline (both softmaxes, the other-class-mean target, lam reused),
    computed without the D x D generalised eigenproblem (equivalent, see ``_sfda_discriminant``).
    D > N: S_w has rank <= N - C, lam is usually ~1e-10, so the discriminant separates the
    sample perfectly and the score saturates near 0 (finite; not informative there).
    A single-example class contributes nothing to S_w (its covariance is 0).

    Deviations: (1) the score is the mean *log*-probability of the true class (the LEEP-style
    definition this project specifies); the official code returns the mean probability ("the log
    function is ignored in case of instability") -- log_softmax is computed stably here, and the
    two agree on rankings only approximately. The constant 5 in lam, the second softmax and the
    other-class-mean target are taken from the official code (the paper text was not available
    to check them). (2) sigma_max(S_w) is the exact
    largest eigenvalue; the official code approximates it with 3 power iterations.
    (3) If S_w = 0 (every class a single point) mu is floored at 1e-12 x tr(S_t)/D.
    """
    f, y, k = _prepare(features, labels)
    logits1, lam, means = _sfda_discriminant(f, y, k, shrinkage)
    p_soft = softmax(softmax(logits1, axis=1), axis=1)
    conf = p_soft[np.arange(len(y)), y][:, None]             # [N, 1]
    other_mean = (means.sum(axis=0) - means) / (k - 1)       # [C, D]
    mixed = conf * f + (1.0 - conf) * other_mean[y]
    logits2, _, _ = _sfda_discriminant(mixed, y, k, lam)
    return float(np.mean(log_softmax(logits2, axis=1)[np.arange(len(y)), y]))


def _coding_rate(z: np.ndarray, eps: float) -> float:
    """R(Z, eps) = 1/2 log det(I_D + Z^T Z / (n eps)) for z [n, D], via the smaller Gram."""
    n, d = z.shape
    w = np.clip(np.linalg.eigvalsh(_gram(z)), 0.0, None)
    return 0.5 * float(np.sum(np.log1p(w / (n * eps))))


@register_scorer("transrate", citation=(
    "L.-K. Huang, J. Huang, Y. Rong, Q. Yang, Y. Wei. Frustratingly Easy Transferability "
    "Estimation. ICML 2022."))
def transrate(features, labels, logits=None, *, eps: float = 1e-4) -> float:
    """TransRate: coding rate of the features minus their coding rate given the labels.

    Reference: L.-K. Huang, J. Huang, Y. Rong, Q. Yang, Y. Wei, "Frustratingly Easy
    Transferability Estimation", ICML 2022 (the reference code is printed in the paper).

    Z = F - mean(F) [N, D] (centred once, globally), Z_c its rows of class c (n_c of them)::

        R(Z, eps) = 1/2 log det(I_D + Z^T Z / (N eps))
        R(Z, eps | Y) = 1/C sum_c R(Z_c, eps)          (Z_c not re-centred)
        TransRate = R(Z, eps) - R(Z, eps | Y)

    with eps = 1e-4 as in the reference code (there eps stands for eps^2 / d of the paper's
    d / (n eps^2)). Determinants via the smaller Gram matrix (det(I + A^T A) = det(I + A A^T)).
    Depends on the feature scale through eps (as in the paper). Unchanged by duplicating every
    example, by constant columns, and by orthogonal rotations of the features.
    """
    f, y, k = _prepare(features, labels)
    z = f - f.mean(axis=0)
    r_z = _coding_rate(z, eps)
    r_zy = np.mean([_coding_rate(z[y == c], eps) for c in range(k)])
    return float(r_z - r_zy)


@register_scorer("parc", citation=(
    "D. Bolya, R. Mittapalli, J. Hoffman. Scalable Diverse Model Selection for Accessible "
    "Transfer Learning. NeurIPS 2021."))
def parc(features, labels, logits=None, *, n_components: int = 32) -> float:
    """PARC: Spearman correlation between feature and label dissimilarity matrices.

    Reference: D. Bolya, R. Mittapalli, J. Hoffman, "Scalable Diverse Model Selection for
    Accessible Transfer Learning", NeurIPS 2021 (PARC = Pairwise Annotation Representation
    Comparison; reference code: github.com/dbolya/parc, also in TencentARC/SFDA).

    1. PCA to min(32, rank) dims (32 as in the reference code), each dim standardised.
    2. RDM_f = 1 - corr(z_i, z_j) (Pearson correlation between the examples' feature vectors),
       RDM_y = 1 - corr(onehot(y_i), onehot(y_j)).
    3. PARC = Spearman rank correlation of the upper triangles (i < j) of the two RDMs, in [-1, 1].

    Invariant to a global rescaling of the features. Needs >= 2 feature directions with variance
    and not every class a singleton (else RDM_y is constant): otherwise ``ValueError``. An example
    whose standardised feature vector is constant has correlation 0 (distance 1) to all others.

    Deviations: the reference code multiplies by 100 (we return the plain correlation) and uses
    randomised PCA (we use exact PCA with a deterministic sign convention, see ``_pca``).
    """
    f, y, _ = _prepare(features, labels)
    n = f.shape[0]
    z = _pca(f, n_components=n_components)
    if z.shape[1] < 2:
        raise ValueError("PARC needs at least 2 feature directions with nonzero variance "
                         f"(features have rank {z.shape[1]} after centring)")
    if np.bincount(y).max() < 2:
        raise ValueError("PARC is undefined when every class has a single example (label RDM is constant)")
    z = z / z.std(axis=0)
    zr = z - z.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(zr, axis=1, keepdims=True)
    zr = np.divide(zr, norms, out=np.zeros_like(zr), where=norms > 0)
    rdm_f = 1.0 - zr @ zr.T
    iu = np.triu_indices(n, 1)
    # RDM_y takes two values: 0 for a same-class pair, 1 + 1/(C-1) otherwise, so its average
    # ranks are an increasing affine function of the "different class" indicator and Spearman's
    # rho = Pearson(rank(RDM_f), indicator) exactly (ties in RDM_f get average ranks).
    ranks = stats.rankdata(rdm_f[iu])
    diff = (y[iu[0]] != y[iu[1]]).astype(np.float64)
    ranks -= ranks.mean()
    diff -= diff.mean()
    den = np.sqrt(np.dot(ranks, ranks) * np.dot(diff, diff))
    if den == 0:                                             # feature RDM constant (degenerate)
        return 0.0
    return float(np.dot(ranks, diff) / den)


@register_scorer("knn", citation=(
    "Leave-one-out k-NN accuracy; cf. M. Sorkhei, C. Matsoukas, J. Fredin Haslum, E. Konuk, "
    "K. Smith. k-NN as a Simple and Effective Estimator of Transferability. arXiv:2503.18528, 2025."))
def knn(features, labels, logits=None, *, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy under cosine similarity (k = 5).

    Reference (use as a transferability estimator): M. Sorkhei, C. Matsoukas, J. Fredin Haslum,
    E. Konuk, K. Smith, "k-NN as a Simple and Effective Estimator of Transferability",
    arXiv:2503.18528 (2025).

    Rows are L2-normalised (an all-zero row stays zero: similarity 0 to everything); each example
    is classified by majority vote of its k most similar *other* examples (k = min(k, N - 1));
    a tied vote goes to the class with the larger summed similarity. Returns accuracy in [0, 1].
    A single-example class can never be predicted correctly (its one example is left out).
    """
    f, y, n_cls = _prepare(features, labels)
    n = f.shape[0]
    kk = int(min(k, n - 1))
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    fn = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)
    sim = fn @ fn.T
    np.fill_diagonal(sim, -np.inf)
    nb = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]      # [N, k]
    nb_sim = np.take_along_axis(sim, nb, axis=1)
    votes = np.zeros((n, n_cls))
    rows = np.repeat(np.arange(n), kk)
    np.add.at(votes, (rows, y[nb].ravel()), 1.0 + 1e-6 * nb_sim.ravel() / kk)
    return float(np.mean(votes.argmax(axis=1) == y))


def probe_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float = 1e-3,
                  steps: int = 100) -> np.ndarray:
    """The linear probe: predicted labels [m] of x_test [m, D] after fitting on x_train [n, D], y_train [n].

    Standardise with the training features' mean and std (+1e-6), then L2-regularised softmax
    regression: mean cross-entropy + l2 * ||W||^2 (scikit-learn's C = 1 / (2 n l2)), L-BFGS from
    zero weights for at most ``steps`` iterations; deterministic. The ground truth's
    ``linear_probe`` method and the ``linear`` scorer both use it.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6  # [D]
    clf = LogisticRegression(C=1.0 / (2 * len(y_train) * l2), max_iter=steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed budget is part of the schedule
        clf.fit((x_train - mu) / sd, y_train)
    return clf.predict((x_test - mu) / sd)


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 l2: float = 1e-3, steps: int = 100) -> float:
    """Test accuracy in [0, 1] of ``probe_predict`` fitted on (x_train [n, D], y_train [n]), tested on (x_test, y_test)."""
    return float((probe_predict(x_train, y_train, x_test, l2, steps) == y_test).mean())


@register_scorer("linear", citation=(
    "Cross-validated linear probe (logistic regression on frozen features), the standard "
    "transfer baseline; cf. S. Kornblith, J. Shlens, Q. V. Le. Do Better ImageNet Models "
    "Transfer Better? CVPR 2019."))
def linear(features, labels, logits=None, *, folds: int = 5, l2: float = 1e-3, max_iter: int = 100,
           seed: int = 0) -> float:
    """Cross-validated accuracy of the linear probe (``probe_predict``) on the sample itself.

    Reference (linear probe as transfer baseline): S. Kornblith, J. Shlens, Q. V. Le, "Do Better
    ImageNet Models Transfer Better?", CVPR 2019.

    Stratified ``folds``-fold CV (shuffled, ``random_state=seed``; fewer folds if even the
    largest class has fewer examples); each held-out fold is predicted by the probe fitted on the
    others. Returns the pooled held-out accuracy in [0, 1]; deterministic.
    A training fold holding one class only predicts that class; if every class is a single example
    no example can be predicted (its class is never in training) and the score is 0.
    """
    from sklearn.model_selection import StratifiedKFold

    f, y, _ = _prepare(features, labels)
    counts = np.bincount(y)
    n_splits = int(min(folds, counts.max()))
    if n_splits < 2:
        return 0.0
    pred = np.empty_like(y)
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        for tr, te in cv.split(f, y):
            pred[te] = y[tr][0] if len(np.unique(y[tr])) < 2 else probe_predict(f[tr], y[tr], f[te], l2, max_iter)
    return float(np.mean(pred == y))


# --------------------------------------------------------------------------- wrapper

def score(name: str, features, labels, logits=None) -> tuple[float, float]:
    """Run scorer ``name`` on validated inputs -> (score, seconds spent in the scorer).

    Raises ``KeyError`` for an unknown name, ``ValueError`` for bad inputs (shape, NaN/inf,
    label range, missing logits for a scorer that needs them) and ``ValueError`` if the
    scorer's result is not a finite float. Logits passed to a scorer that does not use them
    are validated and ignored.
    """
    scorer = get_scorer(name)
    f = _as_float_matrix(features, "features")
    _as_labels(labels, f.shape[0])
    if scorer.needs_logits:
        if logits is None:
            raise ValueError(f"scorer {name!r} needs the source head's logits [N, C_s]; got logits=None")
        _prepare_logits(logits, f.shape[0])
    elif logits is not None:
        _prepare_logits(logits, f.shape[0])
    t0 = time.perf_counter()
    value = scorer.fn(f, labels, logits)
    seconds = time.perf_counter() - t0
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"scorer {name!r} returned {value!r}, not a float") from None
    if not np.isfinite(value):
        raise ValueError(f"scorer {name!r} produced a non-finite score ({value}) on features of shape "
                         f"{f.shape}; refusing to return it")
    return value, seconds
