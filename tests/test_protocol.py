"""The evaluation protocol on a small synthetic world: folds, lineage, and that nothing held out is seen."""
import dataclasses
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from ptmrec import audit, evaluate as E, protocol
from ptmrec.baselines import saturation
from ptmrec.params import from_dict
from ptmrec.probing import attach_evidence
from ptmrec.ranker import RankingData

DATASETS = ["alpha", "beta", "gamma", "delta"]


def tiny_zoo() -> pd.DataFrame:
    """9 models: 2 scratch architectures x 3 sources, an ImageNet base with 2 fine-tunes."""
    rows = [dict(model_id=f"{f}-w16-{s}", family=f, source_task=s, width=16, num_params=1000 * (i + 1),
                 pretrained_from=None) for i, (f, s) in enumerate((f, s) for f in ("cnn", "vit") for s in "abc")]
    rows += [dict(model_id="lite-imagenet", family="lite", source_task="imagenet", width=None, num_params=50_000,
                  pretrained_from=None)]
    rows += [dict(model_id=f"lite-ft-{s}", family="lite", source_task=s, width=None, num_params=40_000,
                  pretrained_from="lite-imagenet") for s in "ab"]
    return pd.DataFrame(rows)


def tiny_world(seed: int = 0) -> tuple[RankingData, pd.DataFrame, np.ndarray, pd.DataFrame]:
    """RankingData of 12 tasks (3 per dataset) x 9 models, with accuracy tied to a hidden model quality."""
    rng = np.random.default_rng(seed)
    zoo = tiny_zoo()
    ids = zoo.model_id.tolist()
    quality = rng.random(len(ids))
    tasks = [f"{d}-t{i}" for d in DATASETS for i in range(3)]
    acc = np.clip(0.5 + 0.3 * quality[None] + 0.05 * rng.standard_normal((len(tasks), len(ids))), 0, 1)
    tokens = {t: rng.standard_normal((10, 6)).astype(np.float32) for t in tasks}
    data = RankingData(ids, rng.standard_normal((len(ids), 5)).astype(np.float32), tasks, tokens, acc,
                       {t: t.split("-")[0] for t in tasks}, {t: np.repeat([0, 1], 5) for t in tasks})
    vectors = (quality[:, None] + 0.1 * rng.standard_normal((len(ids), 32))).astype(np.float32)
    perf = pd.DataFrame([dict(task_id=t, model_id=m, method="linear_probe", seed=s, split=sp, accuracy=a + d)
                         for (t, row) in zip(tasks, acc) for m, a in zip(ids, row)
                         for s, sp, d in ((0, "test", 0.0), (1, "test", 0.01), (1, "fresh", -0.01))])
    return data, zoo, vectors, perf


def tiny_scores(data: RankingData, seed: int = 0) -> pd.DataFrame:
    """Stage-05-like scores: "logme" follows the accuracy with noise, "nce" is noise."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame([dict(model_id=m, task_id=t, scorer=name, score=float(a * w + rng.normal(0, 0.05)), seconds=0.01,
                              forward_seconds=0.1, n=40, dim=16)
                         for t, row in zip(data.task_ids, data.accuracy) for m, a in zip(data.model_ids, row)
                         for name, w in (("logme", 1.0), ("nce", 0.0))])


def tiny_params(**evaluate):
    return from_dict({"autoencoder": {"input_dim": 32, "hidden": [16], "code_dim": 4},
                      "train_autoencoder": {"epochs": 3, "batch_size": 8, "early_stopping_patience": 2},
                      "train_ranker": {"epochs": 3, "batch_size": 8, "early_stopping_patience": 2},
                      "ranker": {"d_model": 16, "heads": 2, "layers": 1, "max_dataset_tokens": 8},
                      "evaluate": {"model_folds": 2, "seeds": 2, "ablations": ["no_dataset_tokens"], **evaluate}})


def test_lineage_groups_keep_siblings_together():
    groups = protocol.lineage_groups(tiny_zoo())
    assert groups["lite-ft-a"] == groups["lite-ft-b"] == groups["lite-imagenet"] == "lite-imagenet"
    assert groups["cnn-w16-a"] == groups["cnn-w16-c"] != groups["vit-w16-a"]
    folds = protocol.model_folds(groups, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(9))  # a partition of the zoo
    for held in folds:  # no group has members on both sides
        inside = set(groups.iloc[held])
        assert not inside & set(groups.drop(groups.index[held]))


def test_make_folds_hold_out_whole_datasets_and_lineages():
    data, zoo, _, _ = tiny_world()
    ldo = protocol.make_folds(data)
    assert [f.dataset for f in ldo] == sorted(DATASETS)
    for f in ldo:
        assert {data.datasets[t] for t in f.test_tasks} == {f.dataset}
        assert f.dataset not in {data.datasets[t] for t in f.train_tasks} and not f.holds_out_models
    lmo = protocol.make_folds(data, zoo, model_k=2, seed=0)
    assert len(lmo) == 2 * len(DATASETS) and all(f.holds_out_models for f in lmo)


def test_grouped_leave_models_out_folds_rank_every_task_once_per_model_fold():
    data, zoo, _, _ = tiny_world()
    lmo = protocol.make_folds(data, zoo, model_k=2, seed=0, groups_k=2)
    assert len(lmo) == 4 and [f.dataset for f in lmo[::2]] == ["alpha+delta", "beta+gamma"]  # sorted, dealt round-robin
    for f in lmo:
        held = set(f.dataset.split("+"))
        assert {data.datasets[t] for t in f.test_tasks} == held and not held & {data.datasets[t] for t in f.train_tasks}
    for m in range(2):  # each model fold: every task is a test task exactly once
        tested = [t for f in lmo if f.name.endswith(f"/m{m}") for t in f.test_tasks]
        assert sorted(tested) == sorted(data.task_ids)
    per_dataset = [f.name for f in protocol.make_folds(data, zoo, model_k=2, seed=0)]
    assert [f.name for f in protocol.make_folds(data, zoo, model_k=2, seed=0, groups_k=9)] == per_dataset


def test_fold_workers_predict_and_record_as_one_process_does():
    """Stage 07's folds in two spawned worker processes: the same predictions, and every audit record comes back
    (a worker's records would otherwise stay in the worker, and the held-out test above would pass on nothing)."""
    data, _, _, _ = tiny_world()
    data = attach_evidence(data, tiny_scores(data), ["logme", "nce"])
    folds = protocol.make_folds(data)[:3]
    P = tiny_params()
    runs = {}
    for jobs in (1, 2):
        with audit.recording() as records, protocol.worker_pool(jobs) as pool:
            pred, log = protocol.ranker_predictions(data, folds, P.ranker, P.train_ranker, [0, 1],
                                                    grid={"loss": ["listnet", "pairwise"]}, ks=[2], pool=pool,
                                                    neighbours=True)
        runs[jobs] = pred, log, records
    (p1, l1, r1), (p2, l2, r2) = runs[1], runs[2]
    cols = ["method", "fold", "task_id", "model_id", "score"]
    pd.testing.assert_frame_equal(p1[cols], p2[cols])
    # the logs alike but for the clock (and float noise of this process's two torch threads; NaN-aware)
    drop = ["seconds", "choice_seconds", "inner_scores"]
    pd.testing.assert_frame_equal(l1.drop(columns=drop), l2.drop(columns=drop))
    assert l1.inner_scores.map(json.dumps).equals(l2.inner_scores.map(json.dumps))
    assert len(r1) > 3 and Counter(r1) == Counter(r2)


def test_inner_choice_sees_training_datasets_only():
    data, _, _, _ = tiny_world()
    fold = protocol.make_folds(data)[0]
    P = tiny_params()
    with audit.recording() as records:
        c = protocol.inner_choice(data, fold, P.ranker, P.train_ranker, {"loss": ["listnet", "pairwise"]}, 2, 0,
                                  neighbours=True)
    assert c.rp.loss == c.table.loss[c.table.inner_weighted_tau.idxmax()] and c.probe_k == 0  # no evidence: no probes
    assert c.trust is None
    best = c.table.loc[c.table.inner_weighted_tau.idxmax()]
    assert c.neighbours == (best.neighbour_weight, best.neighbour_temperature)
    assert c.neighbours[0] in protocol.NEIGHBOUR_WEIGHTS and c.neighbours[1] in protocol.NEIGHBOUR_TEMPERATURES
    seen = set().union(*(r.tasks for r in records))
    assert seen and not seen & set(fold.test_tasks) and seen <= set(fold.train_tasks)
    assert {"neighbour prior", "inner validation"} <= {r.component for r in records}


def test_inner_choice_moves_towards_the_neighbour_prior_when_the_tokens_say_nothing():
    """Two kinds of image, each with its own model ordering, in every dataset (the kind of a task shows in its
    dataset tokens): a held-out task is ranked well only by the training tasks of its kind, which the neighbour
    prior finds and popularity (every training task alike) does not. Inner validation gives the prior weight and
    ranks the held inner tasks almost perfectly; without ``neighbours`` the head stays alone."""
    rng = np.random.default_rng(0)
    data, _, _, _ = tiny_world()
    looks, order = rng.standard_normal((2, 6)), rng.standard_normal((2, len(data.model_ids)))
    kind = {t: int(t[-1]) % 2 for t in data.task_ids}  # "<dataset>-t0" .. "-t2": both kinds in every dataset
    tokens = {t: (looks[kind[t]] + 0.1 * rng.standard_normal((10, 6))).astype(np.float32) for t in data.task_ids}
    acc = np.stack([0.6 + 0.1 * order[kind[t]] for t in data.task_ids])
    data = dataclasses.replace(data, dataset_tokens=tokens, accuracy=acc)
    fold = protocol.make_folds(data)[0]
    P = tiny_params()
    c = protocol.inner_choice(data, fold, P.ranker, P.train_ranker, {}, 2, 0, neighbours=True)
    assert c.neighbours[0] > 0 and c.table.inner_weighted_tau[0] > 0.95
    assert protocol.inner_choice(data, fold, P.ranker, P.train_ranker, {}, 2, 0).neighbours == (0.0, 1.0)


def test_inner_choice_of_k_probes_when_the_evidence_is_the_truth():
    """logme follows the accuracy in the tiny world (small noise): probing pays, so the chosen k is above 0, and it
    is the fewest probed models within the tolerance of the best k (what the table says). The token head's
    weight is chosen per k from the grid, and the trust table puts each at its share of the training models."""
    data, _, _, _ = tiny_world()
    data = attach_evidence(data, tiny_scores(data), ["logme", "nce"])
    fold = protocol.make_folds(data)[0]
    P = tiny_params()
    c = protocol.inner_choice(data, fold, P.ranker, P.train_ranker, {}, 2, 0, ks=[2, 4])
    table, k, trust = c.table, c.probe_k, c.trust
    taus = {0: table.inner_weighted_tau[0], **{int(c[4:]): table[c][0] for c in table.columns if c.startswith("tau@")}}
    n = len(fold.train_models)
    assert set(taus) == {0, 2, 4, n} and k > 0
    assert trust == [[0.0, 1.0]] + [[c / n, table[f"trust@{c}"][0]] for c in (2, 4, n)]
    assert all(w in protocol.TRUST_GRID for _, w in trust[1:])
    assert taus[k] >= max(taus.values()) - protocol.PROBE_TOLERANCE
    assert all(taus[c] < max(taus.values()) - protocol.PROBE_TOLERANCE for c in taus if c < k)


def test_leave_models_out_inner_validation_ranks_models_its_ranker_never_saw():
    """On a leave-models-out fold, every inner ranker is judged on training models held out of its training, a
    lineage group at a time, as the fold judges the outer ranker on its test models: a probe count and a trust in
    the token head chosen on models the head had memorised would be chosen for the wrong question."""
    data, zoo, _, _ = tiny_world()
    data = attach_evidence(data, tiny_scores(data), ["logme", "nce"])
    lmo = protocol.make_folds(data, zoo, model_k=2, seed=0)
    one = next(f for f in lmo if len(f.inner_models) == 1)  # one lineage left to train on: nothing to hold out
    assert all(ranked is one.train_models for _, _, ranked in protocol.inner_splits(one, [["a"], ["b"]]))
    fold = next(f for f in lmo if len(f.inner_models) == 2)
    parts = fold.inner_models
    assert len(parts) == 2 and sorted(np.concatenate(parts).tolist()) == fold.train_models.tolist()
    lineage = protocol.lineage_groups(zoo).reindex(data.model_ids).to_numpy()
    assert not set(lineage[parts[0]]) & set(lineage[parts[1]])  # no sibling on both sides
    P = tiny_params()
    with audit.recording() as records:
        c = protocol.inner_choice(data, fold, P.ranker, P.train_ranker, {}, 2, 0, ks=[2])
    judged = [r for r in records if r.component == "inner validation"]
    trained = [r for r in records if r.component == "ranker"]
    assert len(judged) == 2 and trained
    apart = [[not (r.tasks & j.tasks) and not (r.models & j.models) for j in judged] for r in trained]
    assert all(any(a) for a in apart)  # every batch of an inner ranker: neither the tasks nor the models it is judged on
    assert all(any(a[i] for a in apart) for i in range(2))  # and both judged lists have a ranker
    assert all(j.models <= {data.model_ids[i] for i in fold.train_models} for j in judged)
    n = min(len(p) for p in parts)
    assert [row[0] for row in c.trust] == [0.0, 2 / n, 1.0] and f"tau@{n}" in c.table
    assert c.probe_k in (0, 2, len(fold.train_models))  # every inner candidate probed: every candidate of the fold
    ldo = protocol.make_folds(data)[0]
    assert ldo.inner_models is None and all(seen is ranked is ldo.train_models
                                            for _, seen, ranked in protocol.inner_splits(ldo, [["a"], ["b"]]))


def test_autoencoder_refits_in_workers_give_this_processs_tokens_and_records(tmp_path):
    """Leave-models-out refits its autoencoders in the fold workers: the same tokens as in this process, each
    refit's audit records filed here once (a lost record would let a leak through the test below), and no
    record holds a model that its fold holds out."""
    data, zoo, vectors, _ = tiny_world()
    P = tiny_params()
    lmo = protocol.make_folds(data, zoo, model_k=2, seed=0)
    runs = {}
    for jobs in (1, 2):
        with audit.recording() as records, protocol.worker_pool(jobs) as pool:
            get = protocol.start_refits(vectors, data, lmo, P.autoencoder, P.train_autoencoder, 0, tmp_path / str(jobs),
                                        pool)
            tokens = {key: g() for key, g in get.items()}
            assert all(g() is tokens[key] for key, g in get.items())  # asked twice: one refit, records filed once
        runs[jobs] = tokens, records
    (t1, r1), (t2, r2) = runs[1], runs[2]
    assert set(t1) == {"m0", "m1"} and (tmp_path / "2" / "m1" / "autoencoder").is_dir()
    for key in t1:
        np.testing.assert_allclose(t2[key], t1[key], atol=1e-6)
    assert Counter(r1) == Counter(r2) and {r.component for r in r2} == {"standardiser", "autoencoder"} and len(r2) == 4
    folds = {f.name: f for f in lmo}
    assert all(not r.models & {data.model_ids[i] for i in folds[r.fold].test_models} for r in r2)


def test_no_heldout_id_reaches_anything_fitted(tmp_path):
    """The audit of every fitted component, for both fold kinds: no held-out task, no held-out model."""
    data, zoo, vectors, perf = tiny_world()
    scores = tiny_scores(data)
    data = attach_evidence(data, scores, ["logme", "nce"])
    P = tiny_params(probe_ks=[2], inner_grid={})  # inner choice: test_inner_choice_sees_training_datasets_only
    with audit.recording() as records:
        ev = E.run_protocol(data, P, zoo, scores, perf, E.truth_predictions(data, perf, "linear_probe", 1),
                            {"autoencoder": data}, vectors, tmp_path)
    folds = {f.name: f for fs in ev.folds.values() for f in fs}
    components = {r.component for r in records}
    assert {"ranker", "autoencoder", "standardiser", "popularity", "stacking", "evidence read-out",
            "inner validation", "neighbour prior"} <= components
    for r in records:
        f = folds[r.fold]
        assert not r.tasks & set(f.test_tasks), (r.component, r.fold)
        if f.holds_out_models:
            assert not r.models & {data.model_ids[i] for i in f.test_models}, (r.component, r.fold)
    lmo_autoencoders = [r for r in records if r.component == "autoencoder"]
    assert lmo_autoencoders and all(folds[r.fold].holds_out_models for r in lmo_autoencoders)
    # what was scored: the same lists for every method of a fold kind
    lists = ev.per_task.groupby("method").size()
    assert lists.nunique() == 1 and {"ranker", "ranker:no_dataset_tokens", "popularity", "oracle",
                                     "neighbours"} <= set(lists.index)
    assert ev.tests["ranker_vs_neighbours"]["n"] == ev.ldo.loc["ranker", "lists"]
    assert ev.ldo.loc["oracle", "weighted_tau"] == pytest.approx(1.0)
    assert ev.ldo.loc["ranker", "seeds"] == 2 and np.isfinite(ev.ldo.loc["ranker", "weighted_tau_sd"])
    # the paired tests of the ranker with every model probed: that ranker, on every leave-datasets-out list
    for name, b in (("ranker_all_vs_stacking", "stacking"), ("ranker_all_vs_best_estimator_gt", ev.tests["best_estimator"])):
        t = ev.tests[name]
        assert (t["a"], t["b"], t["n"]) == ("ranker+top@all", b, ev.ldo.loc["ranker", "lists"])
        assert t["mean_a"] == pytest.approx(ev.ldo.loc["ranker+top@all", t["metric"]])
    assert ev.tests["lmo_ranker_all_vs_logme"]["n"] == ev.lmo.loc["ranker", "lists"]
    assert ev.tests["lmo_ranker_all_vs_stacking"]["n"] == ev.lmo.loc["stacking", "lists"] == ev.lmo.loc["ranker", "lists"]
    assert "popularity" not in set(ev.lmo_per_list.method)  # would need the unseen models' accuracies
    # the frontier: k = 0, 2 and all probed, two policies; logme restricted to the same probes; stacking
    front = E.frontier(ev.ldo, len(data.model_ids), {"logme", "nce"}).set_index(["method", "k"])
    assert {("ranker", 0), ("ranker+top", 2), ("ranker+top", 9), ("ranker+uncertain", 2), ("logme", 2),
            ("logme", 9), ("stacking", 9)} <= set(front.index)
    assert front.loc[("ranker+top", 9), "seconds"] > front.loc[("ranker+top", 2), "seconds"] > front.loc[("ranker", 0), "seconds"]
    # logme restricted to the top-2 probes ranks those two by logme: on every task, its top model is one of them
    assert front.loc[("logme", 9), "weighted_tau"] > front.loc[("nce", 9), "weighted_tau"]
    # the oracle on the same probes: the measured accuracy orders them, so it bounds every estimator there, and
    # with every model probed it is the truth itself (a misaligned row or candidate list would break both)
    assert all(front.loc[("oracle", 2), "weighted_tau"] >= front.loc[(e, 2), "weighted_tau"] for e in ("logme", "nce"))
    assert front.loc[("oracle", 9), "weighted_tau"] == pytest.approx(1.0)


def test_audit_catches_a_leak():
    """The check above is not vacuous: a ranker fitted on every task shows up in the record."""
    data, _, _, _ = tiny_world()
    P = tiny_params()
    fold = protocol.make_folds(data)[0]
    with audit.recording() as records, audit.fold(fold.name):
        from ptmrec.ranker import fit_ranker

        fit_ranker(data, data.task_ids, P.ranker, P.train_ranker, seed=0)  # the bug: test tasks among the training ones
    assert any(r.tasks & set(fold.test_tasks) for r in records)


def test_collapse_seeds_and_paired_test():
    table = pd.DataFrame([dict(method=m, fold="f", task_id=f"t{i}", n_models=5, weighted_tau=v, weighted_tau_gt=v,
                               top1_regret=0.0)
                          for i in range(8) for m, v in (("ranker#s0", 0.2 + 0.1 * i), ("ranker#s1", 0.4 + 0.1 * i),
                                                         ("logme", 0.1 * i))])
    collapsed, spread = E.collapse_seeds(table)
    r = collapsed[collapsed.method == "ranker"].sort_values("task_id")
    assert r.weighted_tau.tolist() == pytest.approx([0.3 + 0.1 * i for i in range(8)])
    summary = E.summarize(collapsed, spread)
    assert summary.loc["ranker", "weighted_tau_sd"] == pytest.approx(np.std([0.55, 0.75], ddof=1))
    test = E.paired_test(collapsed, "ranker", "logme")
    assert test["mean_diff"] == pytest.approx(0.3) and test["p_value"] < 0.01 and test["n"] == 8


def test_against_judges_by_another_truth_on_the_tasks_it_measured_only():
    """Stage 07's second target: a method that follows the fine-tuning ranking scores 1 there even where it
    opposes the probe's; tasks fine-tuning did not measure and folds of the other kind do not count."""
    models = [f"m{i}" for i in range(5)]
    probe = pd.DataFrame([dict(task_id=t, model_id=m, accuracy=i / 10) for t in ("t0", "t1") for i, m in enumerate(models)])
    tuned = pd.DataFrame([dict(task_id="t0", model_id=m, accuracy=1 - i / 10) for i, m in enumerate(models)])
    pred = pd.DataFrame([dict(method=name, fold=fold, task_id=t, model_id=m, score=sign * i, seconds=0.0)
                         for name, sign in (("follows_probe#s0", 1), ("follows_probe#s1", 1), ("follows_finetune", -1))
                         for fold in ("d", "d/m0") for t in ("t0", "t1") for i, m in enumerate(models)])
    folds = [protocol.Fold("d", "d", [], ["t0", "t1"], np.arange(0), np.arange(5))]
    ft = E.against(pred, folds, tuned, k=2)
    assert ft.loc["follows_finetune", "weighted_tau"] == pytest.approx(1.0)
    assert ft.loc["follows_probe", "weighted_tau"] == pytest.approx(-1.0)  # seeds collapsed into one method
    assert (ft.lists == 1).all()  # t1 has no fine-tuning truth; the "d/m0" fold is another kind
    assert E.against(pred, folds, probe, k=2).loc["follows_probe", "lists"] == 2


def test_saturation_counts_ties_and_d_over_n():
    rows = [dict(scorer="hscore", task_id=t, model_id=m, score=1.0, n=10, dim=64) for t in "ab" for m in "xyz"]
    rows += [dict(scorer="logme", task_id=t, model_id=m, score=s, n=100, dim=64)
             for t in "ab" for m, s in zip("xyz", (0.1, 0.2, 0.2))]
    sat = saturation(pd.DataFrame(rows))
    assert sat.loc["hscore"].tolist()[1:] == [1.0, 1.0, 1.0]
    assert sat.loc["logme", "d_over_n"] == 0 and sat.loc["logme", "tied"] == pytest.approx(2 / 3)
    assert sat.loc["logme", "constant_tasks"] == 0


def test_static_priors_rank_imagenet_and_size():
    data, zoo, _, _ = tiny_world()
    pri = protocol.static_priors(data, zoo, protocol.make_folds(data)[:1])
    one = pri[(pri.method == "imagenet_first") & (pri.task_id == pri.task_id.iloc[0])].set_index("model_id").score
    assert one.idxmax() == "lite-imagenet" and one["lite-ft-a"] > one["vit-w16-c"]
    pop = pri[(pri.method == "popularity") & (pri.task_id == pri.task_id.iloc[0])].set_index("model_id").score
    fold = protocol.make_folds(data)[0]
    expected = data.accuracy[[data.task_ids.index(t) for t in fold.train_tasks]].mean(0)
    assert pop.reindex(data.model_ids).to_numpy() == pytest.approx(expected)


def test_inner_grid_is_validated_up_front():
    from ptmrec.params import ParamsError

    with pytest.raises(ParamsError, match="inner_grid has 'learning_rate'"):
        from_dict({"evaluate": {"inner_grid": {"learning_rate": [1]}}})
    with pytest.raises(ParamsError, match="inner_grid.d_model"):
        from_dict({"evaluate": {"inner_grid": {"d_model": ["big"]}}})
    assert dataclasses.asdict(from_dict({}).evaluate)["seeds"] >= 3


def test_probe_policies_and_restricted_estimator():
    from ptmrec.probing import choose_probes, estimator_at_k
    from ptmrec.ranker import standardize_evidence

    prior = np.array([0.1, 0.9, 0.5, 0.7])
    assert choose_probes("top", 2, prior).tolist() == [False, True, False, True]
    spread = np.array([0.0, 0.0, 0.5, 0.0])  # model 2 is uncertain: 0.5 + 0.5 beats 0.7
    assert choose_probes("uncertain", 2, prior, spread).tolist() == [False, True, True, False]
    probed = np.array([False, True, False, True])
    scores = estimator_at_k(np.array([9.0, 1.0, 9.0, 2.0]), prior, probed)
    assert np.argsort(-scores).tolist() == [3, 1, 2, 0]  # probed by the estimator first, the rest by the prior
    tied = estimator_at_k(np.array([3.0, 3.0, 3.0, 1.0]), prior, np.ones(4, bool))  # a saturated estimator
    assert tied[0] == tied[1] == tied[2] > tied[3]  # ties stay ties, not ordered by model index
    z = standardize_evidence(np.array([[1.0], [2.0], [3.0], [np.nan]]), np.array([True, True, True, False]))
    assert z[:, 0].tolist() == pytest.approx([-1.2247, 0.0, 1.2247, 0.0], abs=1e-4)
    assert not standardize_evidence(np.ones((3, 2)), np.array([True, False, False])).any()  # one probe: no scale


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dropout_passes_are_independent_draws_around_the_prior(dropout):
    # the passes of the uncertain policy run as one batch of copies of the task: each copy must draw its own
    # dropout masks (a spread of 0 would make "uncertain" the "top" policy), and without dropout every copy is
    # the eval-mode prior itself
    import torch

    from ptmrec.probing import prior_scores
    from ptmrec.ranker import RankerConfig, build_ranker

    data, _, _, _ = tiny_world()
    torch.manual_seed(0)
    model = build_ranker(RankerConfig(model_dim=5, dataset_dim=6, n_models=9, d_model=16, heads=2, layers=1,
                                      dropout=dropout))
    models = np.arange(9)
    prior = prior_scores(model, data, data.task_ids[0], models, 64)  # [N]
    passes = prior_scores(model, data, data.task_ids[0], models, 64, passes=8)  # [8, N]
    assert passes.shape == (8, 9) and not model.training
    if dropout:
        assert (passes.std(0) > 1e-4).all() and len({tuple(r) for r in passes.round(6)}) == 8
    else:
        np.testing.assert_allclose(passes, np.broadcast_to(prior, (8, 9)), rtol=1e-5, atol=1e-6)


def test_stacking_learns_which_estimator_to_trust():
    from ptmrec.probing import fit_stacking

    data, _, _, _ = tiny_world()
    data = attach_evidence(data, tiny_scores(data), ["logme", "nce"])
    w = fit_stacking(data, data.task_ids[:6], np.arange(len(data.model_ids)))
    assert w[0] > 0.5 and abs(w[1]) < 0.3  # logme tracks accuracy, nce is noise


def test_evidence_readout_starts_at_the_stacking_and_carries_the_evidence():
    """With logme close to the truth and nce noise, the read-out weights logme, not nce, and the ranker with every
    model probed ranks the held-out tasks about as well as logme itself (the prior alone cannot)."""
    from ptmrec.metrics import weighted_tau
    from ptmrec.ranker import fit_ranker, predict

    data, _, _, _ = tiny_world()
    data = attach_evidence(data, tiny_scores(data), ["logme", "nce"])
    fold = protocol.make_folds(data)[0]
    P = tiny_params()
    model, _ = fit_ranker(data, fold.train_tasks, P.ranker, P.train_ranker, seed=0)
    w = model.inputs.evidence_out.detach().numpy()
    assert w[0] > 0.3 and abs(w[1]) < w[0] / 3
    every = np.ones(len(data.model_ids), bool)
    pred = predict(model, data, fold.test_tasks, None, P.ranker.max_dataset_tokens, {t: every for t in fold.test_tasks})
    tau = np.mean([weighted_tau(data.accuracy_of(t), g.set_index("model_id").score[data.model_ids].to_numpy())
                   for t, g in pred.groupby("task_id")])
    logme = np.mean([weighted_tau(data.accuracy_of(t), data.evidence[data.task_ids.index(t), :, 0]) for t in fold.test_tasks])
    assert tau >= logme - 0.1


@pytest.mark.parametrize("ablation", [a for a in E.ABLATIONS if a != "no_neighbours"])
def test_each_ablation_differs_from_its_reference_in_one_setting(ablation):
    """The token comparison reads ``ranker:<ablation>`` against ``ranker:no_neighbours`` (the same one-seed, no-choice
    run of the ranker's own settings): an ablation that changed two settings, or a reference that changed one, would
    make that comparison say nothing."""
    rp = from_dict({}).ranker
    ref, ab = E.ranker_params(rp, "no_neighbours"), E.ranker_params(rp, ablation)
    assert ref == rp
    changed = [f.name for f in dataclasses.fields(rp) if getattr(ab, f.name) != getattr(ref, f.name)]
    assert len(changed) == 1, changed
