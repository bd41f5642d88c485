"""Hardware budgets (stage 08): constrained ranking, Pareto fronts, top-1 regret, a latency model.

Built on the measured profiles of ``ptmrec.hardware`` (one row per model, indexed by model).

    >>> fits, nearest = apply_budget(ranked, load_profile(run, "cpu"), max_latency_ms=10.0, max_memory_mb=1.0)
    >>> budget_regret(predictions, perf, profile, {"edge": {"max_latency_ms": 10.0}})   # per method and budget
    >>> predict_latency(fit_latency(profile), flops=2e8, params=3e6)                  # ms, a model not profiled

Latency model: ``log latency = a + b log FLOPs + c log params`` (a power law, fitted by least
squares with b, c >= 0), after the roofline view (Williams, Waterman & Patterson, CACM 2009): a forward is bound
by arithmetic (FLOPs) or by moving its weights (params); tiny models on a CPU are often bound by
per-operator overhead instead, which ``ops`` can add. ``predict_latency`` estimates models not yet
profiled; ``latency_loo`` measures its error leave-one-model-out.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from .hardware import HardwareError, check_device, device_tag

BUDGET_KEYS = ("max_latency_ms", "max_memory_mb")


def within_budget(profile: pd.DataFrame, max_latency_ms: float | None = None, max_memory_mb: float | None = None,
                  latency: str = "latency_p50_ms") -> pd.Series:
    """Boolean per model (profile index): measured latency and peak memory within the budget (None: no limit)."""
    ok = pd.Series(True, index=profile.index)
    if max_latency_ms is not None:
        ok &= profile[latency] <= max_latency_ms
    if max_memory_mb is not None:
        ok &= profile["peak_memory_mb"] <= max_memory_mb
    return ok


def _model_column(df: pd.DataFrame) -> pd.Series:
    for col in ("model", "model_id"):
        if col in df.columns:
            return df[col].astype(str)
    return pd.Series(df.index.astype(str), index=df.index)


def apply_budget(ranked: pd.DataFrame, profile: pd.DataFrame, max_latency_ms: float | None = None,
                 max_memory_mb: float | None = None, nearest_k: int = 3,
                 latency: str = "latency_p50_ms") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Filter a ranked list (best first; a ``model``/``model_id`` column or the index) by a budget.

    Returns (fits, nearest): ``fits`` keeps the models within budget in rank order, with the measured
    latency and memory beside each and ``overall_rank`` (the place in ``ranked`` before the budget);
    ``nearest`` is empty unless nothing fits, then it holds the
    ``nearest_k`` models that exceed the budget least (``over_by``: the largest ratio measured / limit).
    Models without a profile row are dropped and listed in ``fits.attrs['unprofiled']``.
    """
    models = _model_column(ranked)
    cols = [c for c in ("latency_p50_ms", "latency_p95_ms", "peak_memory_mb", "throughput_ips", "params", "flops",
                        "weight_mb") if c in profile.columns]
    known = models.isin(profile.index.astype(str))
    table = ranked[known.values].copy()
    table["overall_rank"] = np.arange(1, len(ranked) + 1)[known.values]
    prof = profile.set_axis(profile.index.astype(str))
    for c in cols:
        table[c] = prof.loc[models[known].values, c].values
    ok = within_budget(table.set_axis(range(len(table))), max_latency_ms, max_memory_mb, latency).values
    fits = table[ok]
    fits.attrs["unprofiled"] = sorted(models[~known])
    nearest = table.iloc[:0].assign(over_by=pd.Series(dtype=float))
    if not ok.any() and len(table):
        ratio = np.ones(len(table))
        if max_latency_ms is not None:
            ratio = np.maximum(ratio, table[latency].values / max_latency_ms)
        if max_memory_mb is not None:
            ratio = np.maximum(ratio, table["peak_memory_mb"].values / max_memory_mb)
        nearest = table.assign(over_by=ratio).sort_values(["over_by", "overall_rank"]).head(nearest_k)
    return fits, nearest


def hardware_budgets(profiles: dict[str, dict[str, Any]], measured: Iterable[str]) -> tuple[dict, pd.DataFrame]:
    """Split named hardware profiles (hardware.profiles) into those whose device was measured and the rest.

    Returns ({device: {profile: {max_latency_ms, max_memory_mb}}}, a table of every profile with its
    status: 'measured' or why not).
    """
    measured = {device_tag(m) for m in measured}
    by_device, rows = {}, []
    for name, spec in profiles.items():
        dev = str(spec["device"])
        budget = {k: (float(spec[k]) if k in spec else None) for k in BUDGET_KEYS}
        if device_tag(dev) in measured:
            by_device.setdefault(dev, {})[name] = budget
            status = "measured"
        else:
            try:
                check_device(dev)
                status = f"not measured: {dev} is not in hardware.devices"
            except HardwareError:
                status = f"not measured: {dev} is not present on this machine"
        rows.append(dict(profile=name, device=dev, **budget, status=status))
    return by_device, pd.DataFrame(rows, columns=["profile", "device", *BUDGET_KEYS, "status"])


def budget_fits(profiles: dict[str, pd.DataFrame], by_device: dict[str, dict], mean_accuracy: pd.Series,
                latency: str = "latency_p50_ms") -> pd.DataFrame:
    """Per measured hardware profile: how many models fit, and the best of them by ``mean_accuracy`` (per model)."""
    rows = []
    for d, budgets in by_device.items():
        for name, b in budgets.items():
            ok = within_budget(profiles[d], b.get("max_latency_ms"), b.get("max_memory_mb"), latency)
            acc = mean_accuracy[mean_accuracy.index.isin(ok.index[ok])]
            rows.append(dict(profile=name, device=d, fits=int(ok.sum()), of=len(ok),
                             best_on_average=acc.idxmax() if len(acc) else None,
                             best_mean_accuracy=float(acc.max()) if len(acc) else np.nan))
    return pd.DataFrame(rows, columns=["profile", "device", "fits", "of", "best_on_average", "best_mean_accuracy"])


# ------------------------------------------------------------------------- evaluation


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Boolean per row: not dominated, where lower ``x`` (cost) and higher ``y`` (accuracy) are better.

    A row is dominated when another has x <= and y >= with at least one strict; ties stay on the front.
    """
    xv, yv = df[x].to_numpy(float), df[y].to_numpy(float)
    le, ge = xv[None, :] <= xv[:, None], yv[None, :] >= yv[:, None]  # [i, j]: j at least as good as i
    strict = (xv[None, :] < xv[:, None]) | (yv[None, :] > yv[:, None])
    return pd.Series(~(le & ge & strict).any(axis=1), index=df.index)


def _tidy_perf(perf: pd.DataFrame) -> pd.DataFrame:
    """(task, model, accuracy) from a performance table with task/model or task_id/model_id columns."""
    perf = perf.rename(columns={"task_id": "task", "model_id": "model"})
    return perf[["task", "model", "accuracy"]].astype({"task": str, "model": str})


def constrained_choices(predictions: pd.DataFrame, perf: pd.DataFrame, profile: pd.DataFrame,
                        budgets: dict[str, dict[str, float | None]], latency: str = "latency_p50_ms") -> pd.DataFrame:
    """Each method's top-1 within each budget on each task, against the oracle's (the best true accuracy).

    ``predictions``: (task, model, method, score), higher is better; ``perf``: true accuracies (one row
    per task and model); ``profile``: indexed by model; ``budgets``: {name: {max_latency_ms, max_memory_mb}}.
    A model is a candidate when it is within budget and has both a score and a true accuracy; when several
    share the top score, the choice is their mean accuracy (the expected regret of a random tie-break).
    One row per (method, budget, task): ``choice`` is None when no model fits.
    """
    truth = _tidy_perf(perf)
    pred = predictions[["task", "model", "method", "score"]].astype({"task": str, "model": str}).dropna(subset=["score"])
    pred = pred.merge(truth, on=["task", "model"], how="inner")
    prof = profile.set_axis(profile.index.astype(str))
    keys = ["method", "task"]
    lists = pd.MultiIndex.from_tuples(sorted(pred.groupby(keys, sort=False).groups), names=keys)  # every list
    parts = []
    for bname, b in budgets.items():  # vectorised per budget: a loop over lists took minutes on the default world
        ok = within_budget(prof, b.get("max_latency_ms"), b.get("max_memory_mb"), latency)
        f = pred[pred.model.map(ok).fillna(False).astype(bool)].sort_values([*keys, "model"], kind="stable")
        g = f.groupby(keys, sort=True)
        tied = f[f.score == g.score.transform("max")].groupby(keys, sort=True)  # ties: the mean of a random pick
        best = f.loc[g.accuracy.idxmax()].set_index(keys)  # first of equals, in model order
        out = pd.DataFrame(dict(feasible=g.size(), choice=tied.model.agg("|".join),
                                choice_accuracy=tied.accuracy.mean(), best=best.model,
                                best_accuracy=best.accuracy)).reindex(lists)
        out["feasible"] = out.feasible.fillna(0).astype(int)
        out["regret"] = out.best_accuracy - out.choice_accuracy
        out[["choice", "best"]] = out[["choice", "best"]].astype(object).where(out.feasible > 0, None)
        parts.append(out.reset_index().assign(budget=bname))
    cols = ["method", "budget", "task", "feasible", "choice", "choice_accuracy", "best", "best_accuracy", "regret"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def budget_regret(predictions: pd.DataFrame, perf: pd.DataFrame, profile: pd.DataFrame,
                  budgets: dict[str, dict[str, float | None]], latency: str = "latency_p50_ms") -> pd.DataFrame:
    """Mean top-1 regret per (method, budget) over the tasks where any model fits.

    regret = best true accuracy among the models within budget - true accuracy of the method's top-1
    within budget (0 for the oracle). Columns: method, budget, mean_regret, median_regret, max_regret,
    tasks, tasks_feasible, mean_feasible_models.
    """
    ch = constrained_choices(predictions, perf, profile, budgets, latency)
    if ch.empty:
        return pd.DataFrame(columns=["method", "budget", "mean_regret", "median_regret", "max_regret", "tasks",
                                     "tasks_feasible", "mean_feasible_models"])
    g = ch.groupby(["method", "budget"], sort=False)
    out = g.agg(mean_regret=("regret", "mean"), median_regret=("regret", "median"), max_regret=("regret", "max"),
                tasks=("task", "size"), tasks_feasible=("feasible", lambda s: int((s > 0).sum())),
                mean_feasible_models=("feasible", "mean"))
    return out.reset_index()


# ----------------------------------------------------------------------- latency model


def _design(df: pd.DataFrame | dict, features: tuple[str, ...]) -> np.ndarray:
    """[n, 1 + k]: a constant and the log of each feature (floored at 1)."""
    cols = [np.log(np.maximum(np.asarray(df[f], float).reshape(-1), 1.0)) for f in features]
    return np.column_stack([np.ones_like(cols[0]), *cols])


def fit_latency(profile: pd.DataFrame, features: tuple[str, ...] = ("flops", "params"),
                target: str = "latency_p50_ms") -> dict[str, Any]:
    """Least-squares fit of log(target) on a constant and log(features), exponents held >= 0.

    More FLOPs or parameters never make a forward faster; unconstrained, near-collinear features
    (FLOPs and params within a family) trade off into a negative exponent that extrapolates badly
    to a model not yet profiled. Returns the coefficients and fit data.
    """
    from scipy.optimize import lsq_linear

    X, y = _design(profile, features), np.log(profile[target].to_numpy(float))
    if len(y) < X.shape[1]:
        raise ValueError(f"fit_latency: {len(y)} profiled models cannot fit {X.shape[1]} coefficients")
    lower = np.r_[-np.inf, np.zeros(len(features))]  # intercept free, exponents >= 0
    coef = lsq_linear(X, y, bounds=(lower, np.inf)).x
    return dict(features=list(features), target=target, intercept=float(coef[0]),
                exponents={f: float(c) for f, c in zip(features, coef[1:])}, n=int(len(y)))


def predict_latency(fit: dict[str, Any], flops: Any = None, params: Any = None, **features: Any) -> np.ndarray:
    """Estimated latency (ms, the fit's target) from FLOPs and parameters (and any other fitted feature)."""
    values = dict(features, flops=flops, params=params)
    missing = [f for f in fit["features"] if values.get(f) is None]
    if missing:
        raise ValueError(f"predict_latency: the fit needs {missing}")
    X = _design({f: values[f] for f in fit["features"]}, tuple(fit["features"]))
    coef = np.array([fit["intercept"], *(fit["exponents"][f] for f in fit["features"])])
    return np.exp(X @ coef)


def latency_loo(profile: pd.DataFrame, features: tuple[str, ...] = ("flops", "params"),
                target: str = "latency_p50_ms") -> pd.DataFrame:
    """Leave-one-model-out predictions: per model, measured, predicted and abs % error (index model)."""
    rows = []
    for i, m in enumerate(profile.index):
        rest = profile.drop(index=m)
        f = fit_latency(rest, features, target)
        pred = float(predict_latency(f, **{k: profile.iloc[i][k] for k in features})[0])
        meas = float(profile.iloc[i][target])
        rows.append(dict(model=m, measured_ms=meas, predicted_ms=pred, abs_pct_error=100 * abs(pred - meas) / meas))
    return pd.DataFrame(rows).set_index("model")


def reference_scores(perf: pd.DataFrame, profile: pd.DataFrame, method: str, seed: int,
                     noise_seed: int | None = None) -> pd.DataFrame:
    """Reference predictors in the (task, model, method, score) form, from the ground truth of ``method``:

    ``oracle`` (the true accuracy of run ``seed``), ``random`` (seeded uniform scores), ``most_params``
    (bigger is better: a hardware-blind rule of thumb) and ``groundtruth-seed<k>`` (the accuracies of the
    second ground-truth run, ``noise_seed``: how well the truth predicts itself, the noise ceiling).
    """
    p = perf.rename(columns={"task_id": "task", "model_id": "model"})
    p = p[p.method == method] if "method" in p.columns else p
    p = p[p.split == "test"] if "split" in p.columns else p  # the noise run on the same test split as the truth
    main = p[p.seed == seed] if "seed" in p.columns else p
    main = main[main.model.isin(profile.index)]
    rng = np.random.default_rng(seed)
    out = [main.assign(method="oracle", score=main.accuracy),
           main.assign(method="random", score=rng.random(len(main))),
           main.assign(method="most_params", score=main.model.map(profile["params"]).astype(float))]
    if noise_seed is not None and "seed" in p.columns and (p.seed == noise_seed).any():
        noise = p[(p.seed == noise_seed) & p.model.isin(profile.index)]
        out.append(noise.assign(method=f"groundtruth-seed{noise_seed}", score=noise.accuracy))
    return pd.concat(out, ignore_index=True)[["task", "model", "method", "score"]]


def budget_regret_devices(predictions: pd.DataFrame, perf: pd.DataFrame, profiles: dict[str, pd.DataFrame],
                          by_device: dict[str, dict], latency: str = "latency_p50_ms") -> pd.DataFrame:
    """``budget_regret`` on every measured device, its profiles' budgets plus 'unconstrained'; a device column added."""
    out = [budget_regret(predictions, perf, profiles[d], {"unconstrained": {}, **budgets}, latency).assign(device=d)
           for d, budgets in by_device.items()]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def top_within_budgets(ranked: pd.DataFrame, profile: pd.DataFrame, budgets: dict[str, dict[str, float | None]],
                       latency: str = "latency_p50_ms", k: int = 3) -> pd.DataFrame:
    """The ``k`` best-ranked models that fit each budget: ``apply_budget`` per budget, the budget named in a
    ``budget`` column and the number that fit in ``fit``."""
    parts = []
    for name, b in budgets.items():
        fits, _ = apply_budget(ranked, profile, b.get("max_latency_ms"), b.get("max_memory_mb"), latency=latency)
        parts.append(fits.head(k).assign(budget=name, fit=len(fits)))
    return pd.concat(parts, ignore_index=True) if parts else ranked.iloc[:0]


def collapse_seeds(regret: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``<method>#s<seed>`` (a ranker trained with several seeds) averaged into one ``<method>`` row per
    budget and device: the expected regret of one training run."""
    base = regret.method.str.split("#s").str[0]
    keys = [c for c in ("budget", "device") if c in regret.columns]
    num = [c for c in regret.columns if c not in ("method", *keys)]
    merged = regret.assign(method=base).groupby(["method", *keys], sort=False)[num].mean().reset_index()
    return merged[regret.columns]


def compare_latency_models(profile: pd.DataFrame, designs: dict[str, tuple[str, ...]],
                           targets: dict[str, str]) -> pd.DataFrame:
    """Leave-one-model-out error of each feature design for each latency target.

    A design is compared only where every fit has at least two models per coefficient (fewer extrapolate
    wildly from near-collinear families) and the target was measured. Columns: features, target,
    median_abs_pct_error, p90_abs_pct_error.
    """
    rows = []
    for name, feats in designs.items():
        for tname, col in targets.items():
            if col in profile.columns and profile[col].notna().all() and len(profile) - 1 >= 2 * (len(feats) + 1):
                err = latency_loo(profile, feats, col).abs_pct_error
                rows.append(dict(features=name, target=tname, median_abs_pct_error=float(err.median()),
                                 p90_abs_pct_error=float(err.quantile(0.9))))
    return pd.DataFrame(rows, columns=["features", "target", "median_abs_pct_error", "p90_abs_pct_error"])
