"""The ranker: batches, both architectures, losses, masking, learning a synthetic task, save/load."""
import numpy as np
import pytest
import torch

from ptmrec import ranker as R
from ptmrec import tokens as TK
from ptmrec.evaluate import ranking_agreement
from ptmrec.protocol import dataset_folds
from ptmrec.metrics import weighted_tau
from ptmrec.params import RankerParams, TrainParams


def synthetic(n_tasks=24, n_models=12, d_model=16, d_data=8, seed=0) -> R.RankingData:
    """Each task has a hidden type vector shown by its dataset tokens; model m's accuracy is
    the dot product of the type with a hidden model vector shown by its model token."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_models, 3))
    model_tokens = np.concatenate([w, rng.normal(size=(n_models, d_model - 3)) * 0.1], 1).astype(np.float32)
    types = rng.normal(size=(n_tasks, 3))
    proj = rng.normal(size=(3, d_data))
    tokens = {f"t{i}": (types[i] @ proj + 0.1 * rng.normal(size=(5 + i % 4, d_data))).astype(np.float32)
              for i in range(n_tasks)}
    acc = 1 / (1 + np.exp(-types @ w.T))
    return R.RankingData(model_ids=[f"m{j}" for j in range(n_models)], model_tokens=model_tokens,
                         task_ids=list(tokens), dataset_tokens=tokens, accuracy=acc,
                         datasets={f"t{i}": f"d{i % 3}" for i in range(n_tasks)})


def test_batch_has_the_users_keys_and_padding_mask():
    data = synthetic()
    batch = next(iter(R.build_combined_similarity_loader(data, data.task_ids[:4], batch_size=4)))
    assert {"dataset_tokens", "model_tokens", "true_ranks", "model_names", "dataset_names", "model_indices",
            "dataset_splits", "batch_size", "dataset_mask", "true_scores"} <= set(batch)
    B, M = batch["dataset_mask"].shape
    assert batch["dataset_tokens"].shape == (4, M, 8) and batch["model_tokens"].shape == (4, 12, 16)
    lengths = (~batch["dataset_mask"]).sum(1).tolist()
    assert lengths == [5, 6, 7, 8] and batch["batch_size"] == 4
    assert (batch["dataset_tokens"][0, 5:] == 0).all()
    ranks = batch["true_ranks"][0]
    assert ranks[batch["true_scores"][0].argmax()] == 0 and sorted(ranks.tolist()) == list(range(12))


def test_max_tokens_subsamples_at_random_in_training_and_evenly_otherwise():
    data = synthetic()
    ds = R.CombinedSimilarityDataset(data, ["t3"], max_tokens=4, sample=True, seed=1)
    fixed = R.CombinedSimilarityDataset(data, ["t3"], max_tokens=4)
    assert len(ds[0]["dataset_tokens"]) == 4
    draws = {tuple(ds[0]["dataset_tokens"][:, 0].tolist()) for _ in range(10)}
    assert len(draws) > 1  # training: a fresh draw per read
    all_tokens = data.dataset_tokens["t3"]  # 8 tokens of one class: evenly spaced 4 are rows 0, 2, 5, 7
    torch.testing.assert_close(fixed[0]["dataset_tokens"], torch.from_numpy(all_tokens[[0, 2, 5, 7]]))


def test_subsample_keeps_every_class_of_a_six_class_folder():
    """The train/serve rule: 6 classes x 16 tokens cut to 64 keep 10-11 of each class (never a lost class)."""
    labels = np.repeat(np.arange(6), 16)  # class-sorted, as a folder gives them
    for rng in (None, np.random.default_rng(0)):
        keep = TK.subsample_tokens(labels, 64, rng)
        assert len(keep) == 64 and len(set(keep)) == 64
        assert sorted(np.bincount(labels[keep]).tolist()) == [10, 10, 11, 11, 11, 11]
    uneven = np.array([0] * 3 + [1] * 50 + [2] * 50)  # a small class keeps all it has, the rest share its quota
    assert np.bincount(uneven[TK.subsample_tokens(uneven, 21)]).tolist() == [3, 9, 9]
    assert TK.subsample_tokens(labels, 500).tolist() == list(range(96))


def test_validation_holds_out_whole_datasets():
    data = synthetic()
    tr, va = R.validation_split(data, data.task_ids, 0.34, seed=0)
    assert va and {data.datasets[t] for t in tr}.isdisjoint({data.datasets[t] for t in va})
    assert sorted(tr + va) == sorted(data.task_ids)


@pytest.mark.parametrize("arch", list(R.ARCHITECTURES))
@pytest.mark.parametrize("tokens", ["autoencoder", "ids"])
def test_forward_shapes_and_padding_does_not_leak(arch, tokens):
    torch.manual_seed(0)
    cfg = R.RankerConfig(arch, model_dim=16, dataset_dim=8, n_models=12, d_model=32, heads=4, layers=1,
                         dropout=0.0, model_tokens=tokens)
    model = R.build_ranker(cfg).eval()
    data = synthetic()
    b = R.collate([R.CombinedSimilarityDataset(data, ["t0", "t3"])[i] for i in range(2)])
    s = model(b["model_tokens"], b["dataset_tokens"], b["dataset_mask"], b["model_indices"])
    assert s.shape == (2, 12)
    junk = b["dataset_tokens"].clone()
    junk[b["dataset_mask"]] = 1e3  # padding content must not matter
    s2 = model(b["model_tokens"], junk, b["dataset_mask"], b["model_indices"])
    torch.testing.assert_close(s, s2)
    if arch == "similarity":  # a distribution over models
        torch.testing.assert_close(s.exp().sum(1), torch.ones(2), atol=1e-5, rtol=0)


def test_each_row_of_a_batch_scores_its_own_candidates():
    # a batch that shares one candidate list projects it once; a batch whose rows differ must not take that path
    torch.manual_seed(0)
    cfg = R.RankerConfig(model_dim=16, dataset_dim=8, n_models=5, d_model=32, heads=4, layers=1, dropout=0.0)
    model = R.build_ranker(cfg).eval()
    tokens, data = torch.randn(3, 5, 16), torch.randn(3, 7, 8)  # [B, N, D_m], [B, M, D_d]
    alone = lambda t: torch.cat([model(t[b:b + 1], data[b:b + 1]) for b in range(3)])  # noqa: E731
    shared = tokens[:1].expand(3, -1, -1).clone()
    torch.testing.assert_close(model(shared, data), alone(shared))
    tokens[2, 4] += 1.0  # one row differs in one candidate only
    torch.testing.assert_close(model(tokens, data), alone(tokens))


def test_batched_prediction_equals_one_task_at_a_time():
    # inner validation predicts all its tasks in one padded batch: each task must get the scores it gets alone,
    # under its own name and model order (tasks have 5-8 tokens here, so the batch pads)
    data = synthetic()
    torch.manual_seed(0)
    cfg = R.RankerConfig(model_dim=16, dataset_dim=8, n_models=12, d_model=16, heads=2, layers=1, dropout=0.0)
    model = R.build_ranker(cfg)
    tasks, models = data.task_ids[:7], np.array([3, 0, 7, 5])
    one = R.predict(model, data, tasks, models)
    many = R.predict(model, data, tasks, models, batch_size=len(tasks))
    assert list(many.task_id) == list(one.task_id) and list(many.model_id) == list(one.model_id)
    np.testing.assert_allclose(many.score, one.score, rtol=1e-5, atol=1e-6)
    assert one.score.nunique() > len(models)  # tasks really differ, so a mix-up would show


def test_similarity_scores_stay_a_distribution_in_training():
    """Dropout on the attention weights would zero some and scale the rest: the scores would no longer be the
    logs of a distribution over models while training."""
    torch.manual_seed(0)
    cfg = R.RankerConfig("similarity", model_dim=16, dataset_dim=8, n_models=12, d_model=32, heads=4, layers=1,
                         dropout=0.5)
    model = R.build_ranker(cfg).train()
    b = R.collate([R.CombinedSimilarityDataset(synthetic(), ["t0", "t3"])[i] for i in range(2)])
    for _ in range(3):
        s = model(b["model_tokens"], b["dataset_tokens"], b["dataset_mask"], b["model_indices"])
        torch.testing.assert_close(s.exp().sum(1), torch.ones(2), atol=1e-5, rtol=0)


def test_fast_dropout_drops_p_keeps_the_mean_and_repeats_under_a_seed():
    """A threshold on the wrong side or a missing 1 / (1 - p) moves the kept share or the mean; masks drawn
    outside torch's generator would not repeat under ``torch.manual_seed``; eval must pass the input through."""
    d, ones = R.FastDropout(0.25).train(), torch.ones(400, 500)
    torch.manual_seed(3)
    a, c = d(ones), d(ones)
    torch.manual_seed(3)
    assert torch.equal(a, d(ones)) and not torch.equal(a, c)  # seeded runs repeat; successive calls differ
    assert abs((a == 0).float().mean().item() - 0.25) < 0.005
    assert abs(a.mean().item() - 1.0) < 0.01 and a.unique().tolist() == pytest.approx([0.0, 4 / 3])
    x = torch.ones(30, 20, requires_grad=True)
    y = d(x)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the same scaled mask
    assert d.eval()(ones) is ones


def test_standardize_evidence_fast_path_gives_the_same_numbers():
    """The path for scores known to be finite must equal the NaN-aware one exactly (the dataset takes it for
    every task without a missing score): a population vs sample sd, or a lost clip, would show."""
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(40, 6)) * [1, 10, 100, 1e-3, 1, 1]
    raw[:, 4] = 2.0  # a constant score: sd 0, standardised to 0
    raw[3, 5] = 50.0  # an outlier, clipped at 5
    for k in (0, 1, 2, 7, 40):
        probed = np.zeros(40, bool)
        probed[rng.choice(40, k, replace=False)] = True
        slow, fast = R.standardize_evidence(raw, probed), R.standardize_evidence(raw, probed, finite=True)
        np.testing.assert_array_equal(fast, slow)
    assert np.abs(fast).max() == 5.0 and not fast[:, 4].any()


@pytest.mark.parametrize("arch", list(R.ARCHITECTURES))
@pytest.mark.parametrize("attention", R.CANDIDATE_ATTENTION.list())
def test_rankers_use_the_fast_dropout_everywhere(arch, attention):
    """torch's transformer layers build their own nn.Dropout: each must be swapped, none left behind."""
    cfg = R.RankerConfig(arch, model_dim=16, dataset_dim=8, n_models=5, d_model=16, heads=2, layers=2,
                         dropout=0.1, candidate_attention=attention)
    mods = list(R.build_ranker(cfg).modules())
    assert not [m for m in mods if type(m) is torch.nn.Dropout]
    assert all(m.p == 0.1 for m in mods if isinstance(m, R.FastDropout)) and any(isinstance(m, R.FastDropout) for m in mods)


@pytest.mark.parametrize("kind", R.LOSSES.list())
def test_loss_prefers_the_true_order(kind):
    truth = torch.tensor([[0.9, 0.5, 0.7, 0.1]])
    loss = R.RankingLoss(kind)
    assert loss(truth * 5, truth) < loss(-truth * 5, truth)
    scores = torch.zeros(1, 4, requires_grad=True)
    loss(scores, truth).backward()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 3]  # push the best up, the worst down


def test_unknown_settings_fail_clearly():
    with pytest.raises(ValueError, match="ranker.loss 'hinge'"):
        R.RankingLoss("hinge")
    with pytest.raises(ValueError, match="ranker.architecture 'mlp'"):
        R.build_ranker(R.RankerConfig("mlp", model_dim=4, dataset_dim=4, n_models=2))


@pytest.mark.parametrize("arch", list(R.ARCHITECTURES))
def test_learns_a_synthetic_ranking_on_held_out_tasks(arch, tmp_path):
    data = synthetic()
    rp = RankerParams(architecture=arch, d_model=32, heads=4, layers=1, dropout=0.0)
    tp = TrainParams(epochs=40, batch_size=8, lr=1e-2, early_stopping_patience=30)
    train, test = data.task_ids[:18], data.task_ids[18:]
    model, trainer = R.fit_ranker(data, train, rp, tp, seed=0, out_dir=tmp_path)
    pred = R.predict(model, data, test)
    taus = [weighted_tau(data.accuracy_of(t), g.score.to_numpy()) for t, g in pred.groupby("task_id", sort=False)]
    assert np.mean(taus) > 0.5, taus
    history = trainer.history
    assert (tmp_path / "history.json").exists() and len(history) == 40  # patience 30 never ran out
    best = min(range(40), key=lambda i: history[i]["val_loss"])
    assert trainer.best_epoch == best + 1 and trainer.best_loss == pytest.approx(history[best]["val_loss"])
    R.save_ranker(model, tmp_path / "ranker", {"note": "test"})
    again, cfg = R.load_ranker(tmp_path / "ranker")
    assert cfg["note"] == "test"
    assert np.allclose(R.predict(again, data, test).score, pred.score)


def test_unseen_models_are_ranked_from_their_tokens():
    data = synthetic(n_models=16)
    held = np.arange(12, 16)
    rp = RankerParams(d_model=32, heads=4, layers=1, dropout=0.0)
    tp = TrainParams(epochs=40, batch_size=8, lr=1e-2, early_stopping_patience=30)
    model, _ = R.fit_ranker(data, data.task_ids[:18], rp, tp, models=np.arange(12), seed=0)
    pred = R.predict(model, data, data.task_ids[18:], held)
    assert set(pred.model_id) == {f"m{j}" for j in held}
    taus = [weighted_tau(data.accuracy_of(t)[held], g.score.to_numpy()) for t, g in pred.groupby("task_id", sort=False)]
    assert np.mean(taus) > 0.3, taus


def test_folds_hold_out_whole_datasets():
    data = synthetic()
    for d, train, test in dataset_folds(data):
        assert {data.datasets[t] for t in test} == {d} and d not in {data.datasets[t] for t in train}


def test_ranking_agreement_separates_siblings_from_other_datasets():
    """Two datasets whose tasks share one ranking each (opposite orders): siblings agree, others do not."""
    base = np.linspace(0.5, 0.9, 6)
    acc = np.stack([base, base + 0.01, base[::-1], base[::-1] + 0.02])  # tasks a0, a1 | b0, b1
    data = R.RankingData(model_ids=[f"m{j}" for j in range(6)], model_tokens=np.zeros((6, 2), np.float32),
                         task_ids=["a0", "a1", "b0", "b1"], dataset_tokens={t: np.zeros((1, 2), np.float32)
                                                                          for t in ("a0", "a1", "b0", "b1")},
                         accuracy=acc, datasets={"a0": "a", "a1": "a", "b0": "b", "b1": "b"})
    out = ranking_agreement(data).set_index("task_id")
    assert list(out.index) == ["a0", "a1", "b0", "b1"] and set(out.dataset) == {"a", "b"}
    np.testing.assert_allclose(out.mean_sibling, 1.0)
    np.testing.assert_allclose(out.mean_training, -1.0)
    np.testing.assert_allclose(out.best_training, -1.0)


def test_ranking_agreement_names_the_dataset_the_tokens_would_copy():
    """Held-out a ranks like b and opposite to c, but its tokens, centred on the training tasks, lie nearest c's
    (uncentred, nearest b's): best_training_dataset must be b's +1, nearest_training_dataset c's -1. Catches a
    nearest dataset chosen by accuracy, from uncentred tokens, or among the held-out dataset's own tasks."""
    base = np.linspace(0.5, 0.9, 6)
    tasks = {"a0": (base, (1.5, 0.9)), "a1": (base + 0.01, (1.5, 0.9)), "b0": (base, (3.0, 1.0)),
             "c0": (base[::-1], (1.0, 1.0))}
    data = R.RankingData(model_ids=[f"m{j}" for j in range(6)], model_tokens=np.zeros((6, 2), np.float32),
                         task_ids=list(tasks), accuracy=np.stack([a for a, _ in tasks.values()]),
                         dataset_tokens={t: np.array([tok], np.float32) for t, (_, tok) in tasks.items()},
                         datasets={t: t[0] for t in tasks})
    out = ranking_agreement(data).set_index("task_id").loc[["a0", "a1"]]
    assert list(out.nearest_dataset) == ["c", "c"]
    np.testing.assert_allclose(out.best_training_dataset, 1.0)
    np.testing.assert_allclose(out.nearest_training_dataset, -1.0)


def test_load_ranker_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json: missing; run stage 06_ranker"):
        R.load_ranker(tmp_path)


@pytest.mark.parametrize("attention", R.CANDIDATE_ATTENTION.list())
def test_candidate_attention_is_permutation_equivariant_and_learns(attention):
    """Reordering the candidates reorders their scores (no position leaks in); both kinds learn the task."""
    torch.manual_seed(0)
    cfg = R.RankerConfig("cross_attention", model_dim=16, dataset_dim=8, n_models=12, d_model=32, heads=4, layers=1,
                         dropout=0.0, candidate_attention=attention, inducing=4)
    model = R.build_ranker(cfg).eval()
    b = R.collate([R.CombinedSimilarityDataset(synthetic(), ["t0"])[0]])
    perm = torch.randperm(12)
    s = model(b["model_tokens"], b["dataset_tokens"], b["dataset_mask"])
    s_perm = model(b["model_tokens"][:, perm], b["dataset_tokens"], b["dataset_mask"])
    torch.testing.assert_close(s[:, perm], s_perm, atol=1e-5, rtol=1e-5)
    data = synthetic()
    rp = RankerParams(d_model=32, heads=4, layers=1, dropout=0.0, candidate_attention=attention, inducing=4)
    fitted, _ = R.fit_ranker(data, data.task_ids[:18], rp, TrainParams(epochs=40, batch_size=8, lr=1e-2,
                                                                       early_stopping_patience=30), seed=0)
    pred = R.predict(fitted, data, data.task_ids[18:])
    taus = [weighted_tau(data.accuracy_of(t), g.score.to_numpy()) for t, g in pred.groupby("task_id", sort=False)]
    assert np.mean(taus) > 0.5, taus


def test_model_token_table_puts_codes_and_behaviour_side_by_side_by_model_id(tmp_path):
    from ptmrec.paths import write_npz

    write_npz(tmp_path / "03_autoencoder" / "tokens.npz", ids=np.array(["a", "b", "c"]),
              tokens=np.arange(6, dtype=np.float32).reshape(3, 2))
    write_npz(tmp_path / "02_model_vectors" / "behaviour.npz", ids=np.array(["c", "a"]),  # other order, b missing
              tokens=np.array([[30.0], [10.0]], np.float32), columns=np.array(["x.knn"]))
    ids, both = R.model_token_table(tmp_path, "both")
    assert ids == ["a", "c"] and both.tolist() == [[0, 1, 10], [4, 5, 30]]
    assert R.model_token_table(tmp_path, "behaviour")[0] == ["c", "a"]


@pytest.mark.parametrize("arch", list(R.ARCHITECTURES))
def test_trust_weighs_the_token_head_by_the_share_probed_and_survives_saving(arch, tmp_path):
    """The score is trust(share probed) x head + evidence read-out: inner validation re-weighs the head from
    exactly that sum (protocol._inner_taus), so a forward that weighs anything else, or a trust table lost on
    saving, would rank with weights nobody chose."""
    torch.manual_seed(0)
    cfg = R.RankerConfig(arch, model_dim=16, dataset_dim=8, n_models=8, d_model=16, heads=2, layers=1,
                         dropout=0.0, evidence_dim=3)
    model = R.build_ranker(cfg).eval()
    with torch.no_grad():
        model.inputs.evidence_out.copy_(torch.tensor([0.5, -1.0, 2.0]))
    tokens, data = torch.randn(2, 8, 16), torch.randn(2, 5, 8)
    ev = torch.randn(2, 8, 3)
    probed = torch.zeros(2, 8, dtype=torch.bool)
    probed[0, :2], probed[1, :6] = True, True  # shares 1/4 and 3/4
    readout = model.inputs.evidence_score(ev, probed)  # [2, 8]
    # the head reads the evidence too (added to the probed models' tokens); trust 1: head + read-out, as before
    head = model(tokens, data, evidence=ev, probed=probed) - readout
    R.set_trust(model, [[0.0, 1.0], [0.25, 0.5], [0.5, 0.25], [1.0, 0.0]])
    w = torch.tensor([[0.5], [0.125]])  # share 3/4: halfway between 0.25 and 0
    torch.testing.assert_close(model(tokens, data, evidence=ev, probed=probed), w * head + readout)
    none = torch.zeros_like(probed)
    torch.testing.assert_close(model(tokens, data, evidence=ev, probed=none), model(tokens, data))  # the head alone
    torch.testing.assert_close(R.trust_weight(torch.tensor([0.0, 0.1, 1.0, 1.5]), model.inputs.trust),
                               torch.tensor([1.0, 0.8, 0.0, 0.0]))
    R.save_ranker(model, tmp_path / "r")
    again, _ = R.load_ranker(tmp_path / "r")
    torch.testing.assert_close(again.inputs.trust, model.inputs.trust)
    torch.testing.assert_close(again(tokens, data, evidence=ev, probed=probed), w * head + readout)
    with pytest.raises(ValueError, match="shares must rise from 0 to 1"):
        R.set_trust(model, [[0.0, 1.0], [0.5, 1.0]])


@pytest.mark.parametrize("arch", list(R.ARCHITECTURES))
def test_neighbour_prior_ranks_a_copy_of_a_training_task_like_it_and_survives_saving(arch, tmp_path):
    """A target whose dataset tokens are those of a training task, at a low temperature and weight 1, is ranked
    as that task's measured accuracies on the models measured in training; a candidate never measured keeps the
    head's score; weight 0 is the head alone; saving (and the ONNX export of the prior) keeps all of it."""
    data = synthetic(n_tasks=6, n_models=8)
    train, seen = data.task_ids[:5], np.arange(6)  # models 6 and 7 never measured
    tables = R.neighbour_tables(data, train, seen)
    # the keys are centred, unit-norm; the values z-scored within each task over the measured models only
    np.testing.assert_allclose(np.linalg.norm(tables["keys"], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(tables["values"][:, seen].mean(1), 0.0, atol=1e-9)
    assert (tables["values"][:, 6:] == 0).all() and tables["seen"].tolist() == [1] * 6 + [0] * 2
    torch.manual_seed(0)
    cfg = R.RankerConfig(arch, model_dim=16, dataset_dim=8, n_models=8, d_model=16, heads=2, layers=1, dropout=0.0)
    model = R.build_ranker(cfg).eval()
    tokens = torch.from_numpy(data.model_tokens)[None]  # [1, 8, 16]
    ids = torch.arange(8)[None]
    target = torch.from_numpy(data.dataset_tokens[train[2]])[None]  # [1, M, 8]
    with torch.no_grad():
        head = model(tokens, target, None, ids)
        R.set_neighbours(model, tables, 0.0, 1e-3)
        torch.testing.assert_close(model(tokens, target, None, ids), head)
        R.set_neighbours(model, tables, 1.0, 1e-3)
        both = model(tokens, target, None, ids)
    assert weighted_tau(data.accuracy_of(train[2])[seen], both[0, :6].numpy()) > 0.99
    torch.testing.assert_close(both[0, 6:], head[0, 6:])
    # on the measured candidates the head's mean and spread stay: the prior changes the order, not the scale
    torch.testing.assert_close(both[0, :6].mean(), head[0, :6].mean())
    R.save_ranker(model, tmp_path / "r", {"max_dataset_tokens": 16, "model_ids": data.model_ids},
                  model_tokens=data.model_tokens)
    again, cfg_saved = R.load_ranker(tmp_path / "r")
    with torch.no_grad():
        torch.testing.assert_close(again(tokens, target, None, ids), both)
    from ptmrec.serve import OnnxRanker
    np.testing.assert_allclose(OnnxRanker(tmp_path / "r").scores(target[0].numpy()), both[0].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="weight"):
        R.set_neighbours(model, tables, 1.5, 0.1)


def test_a_ranker_saved_before_trust_and_neighbours_loads_as_it_was(tmp_path):
    """Rankers of earlier runs hold neither the trust table nor the neighbour prior's buffers: they load (no
    missing-key error) with trust all ones and no prior, so they rank exactly as when they were saved."""
    from safetensors.torch import load_file, save_file

    data = synthetic(n_tasks=4, n_models=6)
    cfg = R.RankerConfig("cross_attention", model_dim=16, dataset_dim=8, n_models=6, d_model=16, heads=2, layers=1,
                         dropout=0.0)
    model = R.build_ranker(cfg).eval()
    R.save_ranker(model, tmp_path / "r")
    path = tmp_path / "r" / "model.safetensors"
    state = {k: v for k, v in load_file(str(path)).items() if "trust" not in k and "neighbour" not in k}
    save_file(state, str(path))  # as an older ranker wrote it
    again, _ = R.load_ranker(tmp_path / "r")
    tokens, target = torch.from_numpy(data.model_tokens)[None], torch.from_numpy(data.dataset_tokens["t0"])[None]
    with torch.no_grad():
        torch.testing.assert_close(again(tokens, target, None, torch.arange(6)[None]),
                                   model(tokens, target, None, torch.arange(6)[None]))
    assert float(again.inputs.neighbour_mix[0]) == 0.0 and again.inputs.trust[:, 1].eq(1).all()
