"""Hardware profiling and budget-constrained recommendation (ptmrec.hardware), on tiny hand-checkable cases."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from ptmrec import budgets as bud
from ptmrec import hardware as hw
from ptmrec import params
from ptmrec.nets import FAMILIES
from ptmrec.zoo import save_model


class Tiny(nn.Module):
    """conv 3->4 (3x3, no bias) on 8x8 -> [4, 6, 6], flattened, linear 144 -> 5."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, bias=False), nn.Linear(144, 5)

    def forward_features(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_profile_model_counts_params_and_flops_by_hand():
    p = hw.profile_model(Tiny(), 8, "cpu", warmup=2, repeats=20, batch_size=4, threads=1)
    assert p["params"] == 3 * 4 * 9 + 144 * 5 + 5  # 833
    # 2 FLOPs per multiply-accumulate: conv 144 outputs x 27 inputs, linear 5 outputs x 144 inputs
    assert p["flops"] == 2 * 144 * 27 + 2 * 5 * 144
    assert 0 < p["latency_p50_ms"] <= p["latency_p95_ms"]
    t = p["samples"]
    assert len(t) == 20 and p["threads"] == 1 and p["warmup"] == 2
    # one thread: the call's CPU time is all its work, never more than its wall time (clock granularity aside)
    assert (t.cpu_ms <= t.latency_ms * 1.05 + 0.05).all() and (t.cpu_ms > 0).all()
    # weights (833 floats) + input (3*8*8 floats) + at least the conv output (144 floats) held during the forward
    assert p["peak_memory_mb"] * 2**20 >= 4 * (833 + 192 + 144)
    assert p["peak_memory_batch_mb"] > p["peak_memory_mb"]  # 4 images need more than 1


class Sleepy(Tiny):
    """Tiny whose every forward_features call also sleeps 50 ms, whatever the batch: a known wall time that
    costs no CPU time."""

    def forward_features(self, x):
        import time

        time.sleep(0.05)
        return super().forward_features(x)


def test_profile_times_what_the_call_takes():
    p = hw.profile_model(Sleepy(), 8, "cpu", warmup=1, repeats=5, batch_size=4, threads=1)
    assert 50 <= p["latency_p50_ms"] < 2000                       # milliseconds, not seconds
    assert p["latency_cpu_p50_ms"] < p["latency_p50_ms"] - 40       # a sleep is wall time, not CPU time
    # one call (50 ms + a little) handles a batch of 4: at most 4 / 0.050 s = 80 images per second, and
    # about 4 images per batch-1 latency (both calls are the sleep)
    assert p["throughput_ips"] <= 80
    assert 2 <= p["throughput_ips"] * p["latency_p50_ms"] / 1e3 <= 8


def test_flops_count_the_fused_transformer_path():
    """nn.TransformerEncoderLayer's inference fast path has no FLOP formula; it must still be counted."""
    vit = FAMILIES["vit"](width=4, num_classes=3, image_size=16).eval()
    conv_only = 2 * (16 // 4) ** 2 * 16 * (3 * 4 * 4)  # the patch embedding alone: 16 tokens, dim 16
    assert hw.count_flops(vit, 16) > 3 * conv_only


def _zoo(tmp_path):
    """Three model folders: a good simplecnn, one with truncated weights, a vit whose input size breaks it."""
    zoo = tmp_path / "zoo"
    rows = []
    for mid, family, arch_size, cfg_size in [("good", "simplecnn", 16, 16), ("truncated", "simplecnn", 16, 16),
                                             ("wrong-size", "vit", 16, 12)]:
        model = FAMILIES[family](width=4, num_classes=3, image_size=arch_size)
        save_model(zoo / mid, model, dict(model_id=mid, family=family, arch=dict(width=4, num_classes=3,
                   image_size=arch_size), source_task="x", classes=["a", "b", "c"], image_size=cfg_size))
        rows.append(dict(model_id=mid, path=mid))
    w = zoo / "truncated" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    return zoo, pd.DataFrame(rows)


def test_profile_zoo_skips_models_that_fail_and_reports_why(tmp_path):
    zoo, index = _zoo(tmp_path)
    prof, lat, skipped = hw.profile_zoo(zoo, index, "cpu", warmup=1, repeats=5, batch_size=2, threads=1, rounds=2)
    assert list(prof.model) == ["good"]
    assert set(skipped.model) == {"truncated", "wrong-size"}
    assert skipped.set_index("model").loc["truncated", "reason"].startswith("ZooError")
    assert "model.safetensors" in skipped.set_index("model").loc["truncated", "reason"]
    row = prof.iloc[0]
    assert row.latency_p50_ms <= row.latency_p95_ms and row.rounds == 2
    # p50 pools every round; latency_cv is the spread of the per-round medians (std / mean)
    assert row.latency_p50_ms == pytest.approx(lat.latency_ms.median())
    per_round = lat.groupby("round").latency_ms.median()
    assert row.latency_cv == pytest.approx(per_round.std(ddof=0) / per_round.mean())
    assert row.weight_mb == pytest.approx((zoo / "good" / "model.safetensors").stat().st_size / 2**20)
    assert len(lat) == 2 * 5 and set(lat["round"]) == {0, 1}


def test_absent_device_is_a_clear_error(tmp_path):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(hw.HardwareError, match="not present"):
        hw.check_device(f"cuda:{n}")
    with pytest.raises(hw.HardwareError, match="not a device name"):
        hw.check_device("toaster")
    zoo, index = _zoo(tmp_path)
    with pytest.raises(hw.HardwareError, match=f"cuda:{n}"):
        hw.profile_zoo(zoo, index, f"cuda:{n}", 1, 2, 2)
    with pytest.raises(hw.HardwareError, match="profile-cuda.csv.*08_hardware"):
        hw.load_profile(tmp_path, "cuda")
    with pytest.raises(FileNotFoundError):  # what callers that only know files catch
        hw.load_profile(tmp_path, "cpu")


def test_machine_description_names_cpu_torch_and_threads():
    d = hw.machine_description("cpu")
    assert d["torch"] == torch.__version__ and d["logical_cpus"] >= 1 and d["torch_threads"] >= 1 and d["cpu"]


def _profile():
    return pd.DataFrame(dict(latency_p50_ms=[1.0, 5.0, 20.0], latency_p95_ms=[2.0, 6.0, 30.0],
                             peak_memory_mb=[1.0, 10.0, 50.0]), index=pd.Index(["s", "m", "l"], name="model"))


def test_apply_budget_keeps_rank_order_and_shows_measurements():
    ranked = pd.DataFrame(dict(model=["l", "x", "s", "m"], score=[0.9, 0.8, 0.5, 0.4]))  # x: never profiled
    fits, nearest = bud.apply_budget(ranked, _profile(), max_latency_ms=6, max_memory_mb=20)
    assert list(fits.model) == ["s", "m"] and list(fits["overall_rank"]) == [3, 4]
    assert list(fits.latency_p50_ms) == [1.0, 5.0] and list(fits.peak_memory_mb) == [1.0, 10.0]
    assert nearest.empty and fits.attrs["unprofiled"] == ["x"]


def test_budget_nothing_fits_gives_the_nearest_models():
    ranked = pd.DataFrame(dict(model=["l", "m", "s"], score=[3, 2, 1]))
    fits, nearest = bud.apply_budget(ranked, _profile(), max_latency_ms=0.5, max_memory_mb=5, nearest_k=2)
    assert fits.empty
    # s exceeds latency by 2x (memory fits), m by 10x latency and 2x memory
    assert list(nearest.model) == ["s", "m"] and list(nearest.over_by) == [2.0, 10.0]


def test_pareto_front_on_a_hand_made_table():
    t = pd.DataFrame(dict(lat=[1, 2, 2, 3, 4, 4], acc=[0.5, 0.7, 0.6, 0.65, 0.9, 0.9]), index=list("abcdef"))
    # c is dominated by b (same latency, lower accuracy); d by b; e and f tie and stay
    assert list(t.index[bud.pareto_front(t, "lat", "acc")]) == ["a", "b", "e", "f"]


def test_budget_regret_on_a_hand_made_case():
    perf = pd.DataFrame(dict(task_id=["t1"] * 3 + ["t2"] * 3, model_id=["s", "m", "l"] * 2,
                             accuracy=[0.6, 0.7, 0.9, 0.8, 0.5, 0.95]))
    pred = pd.concat([
        pd.DataFrame(dict(task=["t1"] * 3 + ["t2"] * 3, model=["s", "m", "l"] * 2, method="big",
                          score=[1, 2, 3, 1, 2, 3])),
        pd.DataFrame(dict(task=["t1"] * 3 + ["t2"] * 3, model=["s", "m", "l"] * 2, method="small",
                          score=[3, 2, 1, 3, 2, 1])),
    ])
    pred = pd.concat([pred, pd.DataFrame(dict(task="t1", model=["s", "m"], method="failed", score=np.nan))])
    budgets = {"all": {}, "edge": {"max_latency_ms": 6.0, "max_memory_mb": 20.0}, "none": {"max_latency_ms": 0.1}}
    r = bud.budget_regret(pred, perf, _profile(), budgets).set_index(["method", "budget"])
    # unconstrained: big picks l (regret 0, 0); small picks s (0.3, 0.15)
    assert r.loc[("big", "all"), "mean_regret"] == pytest.approx(0.0)
    assert r.loc[("small", "all"), "mean_regret"] == pytest.approx((0.3 + 0.15) / 2)
    # edge (s, m fit): best is m on t1 (0.7), s on t2 (0.8); big picks m (0, 0.3), small picks s (0.1, 0)
    assert r.loc[("big", "edge"), "mean_regret"] == pytest.approx(0.15)
    assert r.loc[("small", "edge"), "mean_regret"] == pytest.approx(0.05)
    assert r.loc[("big", "edge"), "tasks_feasible"] == 2 and r.loc[("big", "edge"), "mean_feasible_models"] == 2
    assert r.loc[("big", "none"), "tasks_feasible"] == 0 and np.isnan(r.loc[("big", "none"), "mean_regret"])
    assert "failed" not in r.index.get_level_values("method")  # a method without scores ranks nothing


def test_latency_fit_recovers_the_exponents():
    rng = np.random.default_rng(0)
    flops, prm = 10 ** rng.uniform(5, 9, 40), 10 ** rng.uniform(4, 7, 40)
    lat = 3e-6 * flops ** 0.8 * prm ** 0.1 * np.exp(rng.normal(0, 0.01, 40))
    prof = pd.DataFrame(dict(flops=flops, params=prm, latency_p50_ms=lat), index=[f"m{i}" for i in range(40)])
    fit = bud.fit_latency(prof)
    assert fit["exponents"]["flops"] == pytest.approx(0.8, abs=0.01)
    assert fit["exponents"]["params"] == pytest.approx(0.1, abs=0.01)
    assert bud.predict_latency(fit, flops=1e8, params=1e5)[0] == pytest.approx(3e-6 * 1e8 ** 0.8 * 1e5 ** 0.1, rel=0.02)
    loo = bud.latency_loo(prof)
    assert loo.abs_pct_error.median() < 2 and list(loo.index) == list(prof.index)


def test_latency_fit_never_lets_more_work_run_faster():
    """Params follow FLOPs closely (one family), and their small scatter happens to go with faster models:
    unconstrained least squares turns that into a negative params exponent (more weights, faster), which
    would extrapolate absurdly; the fit holds both exponents at or above 0 and still predicts the data."""
    rng = np.random.default_rng(1)
    flops = 10 ** rng.uniform(6, 8, 30)
    prm = flops / 50 * np.exp(rng.normal(0, 0.05, 30))  # params follow FLOPs within a family
    lat = 1e-5 * flops ** 0.9 * np.exp(rng.normal(0, 0.3, 30)) / (prm / (flops / 50)) ** 3
    prof = pd.DataFrame(dict(flops=flops, params=prm, latency_p50_ms=lat), index=[f"m{i}" for i in range(30)])
    X = np.column_stack([np.ones(30), np.log(flops), np.log(prm)])
    free = np.linalg.lstsq(X, np.log(lat), rcond=None)[0]
    assert free[2] < 0  # what an unconstrained fit makes of it
    fit = bud.fit_latency(prof)
    assert min(fit["exponents"].values()) >= 0
    assert np.median(np.abs(np.log(bud.predict_latency(fit, flops=flops, params=prm) / lat))) < 0.5


def test_hardware_profiles_of_absent_or_unprofiled_devices_are_reported_not_measured():
    P = params.from_dict({})
    by_device, table = bud.hardware_budgets(P.hardware.profiles, measured=["cpu"])
    assert set(by_device) == {"cpu"} and "edge-cpu" in by_device["cpu"]
    status = table.set_index("profile").status
    assert status["edge-cpu"] == "measured" and status["datacentre-gpu"].startswith("not measured")


@pytest.mark.parametrize("override, key", [
    ({"profiles": {"edge": {"device": "cpu", "max_latncy_ms": 2}}}, "hardware.profiles.edge.max_latncy_ms"),
    ({"profiles": {"edge": {"device": "cpu", "max_latency_ms": "fast"}}}, "hardware.profiles.edge.max_latency_ms"),
    ({"profiles": {"edge": {"device": "cpu", "max_memory_mb": -1}}}, "hardware.profiles.edge.max_memory_mb"),
    ({"profiles": {"edge": {"device": "tpu"}}}, "hardware.profiles.edge.device"),
    ({"profiles": {"edge": {"max_latency_ms": 2}}}, "hardware.profiles.edge"),
    ({"profiles": {"edge": {"device": "cpu", "max_latency_ms": [2]}}}, "hardware.profiles"),
    ({"repeats": 0}, "hardware.repeats"),
    ({"devices": ["gpu"]}, "hardware.devices"),
    ({"latency_stat": "p99"}, "hardware.latency_stat"),
    ({"threads": -1}, "hardware.threads"),
])
def test_bad_hardware_params_name_the_key(override, key):
    with pytest.raises(params.ParamsError, match=key.replace(".", r"\.")):
        params.from_dict({"hardware": override})


def test_run_profiling_writes_one_table_per_device_and_checks_devices_first(tmp_path):
    zoo, index = _zoo(tmp_path)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    hp = params.from_dict({"hardware": {"devices": ["cpu", f"cuda:{n}"], "warmup": 1, "repeats": 4, "rounds": 2,
                                        "batch_size": 2}}).hardware
    out = tmp_path / "08_hardware"
    with pytest.raises(hw.HardwareError, match="not present"):
        hw.run_profiling(zoo, index, hp, out)
    assert not out.exists()  # the absent device is found before any work
    hp.devices = ["cpu"]
    profiles = hw.run_profiling(zoo, index, hp, out)
    assert list(profiles) == ["cpu"] and list(profiles["cpu"].index) == ["good"]
    assert list(hw.load_profile(tmp_path, "cpu").index) == ["good"]
    machine = json.loads((out / "machine-cpu.json").read_text())
    assert machine["settings"] == dict(warmup=1, repeats=4, rounds=2, batch_size=2, threads=1, threads_asked=1)
    assert machine["skipped"] == 2 and machine["cpu"]
    assert len(pd.read_csv(out / "skipped-cpu.csv")) == 2
    assert len(pd.read_csv(out / "latency-cpu.csv")) == 2 * 4


def test_reference_scores_oracle_has_no_regret_and_noise_run_is_a_method():
    perf = pd.DataFrame(dict(model_id=["s", "m", "l"] * 4, task_id=["t1"] * 3 + ["t2"] * 3 + ["t1"] * 3 + ["t2"] * 3,
                             method="linear_probe", seed=[0] * 6 + [1] * 6,
                             accuracy=[0.6, 0.7, 0.9, 0.8, 0.5, 0.95, 0.62, 0.75, 0.85, 0.7, 0.6, 0.9]))
    prof = _profile().assign(params=[10, 100, 1000])
    pred = bud.reference_scores(perf, prof, "linear_probe", seed=0, noise_seed=1)
    assert set(pred.method) == {"oracle", "random", "most_params", "groundtruth-seed1"}
    r = bud.budget_regret(pred, perf[perf.seed == 0], prof, {"all": {}}).set_index("method").mean_regret
    assert r["oracle"] == 0 and r["most_params"] == pytest.approx(0.0)  # l is best on both tasks
    assert r["groundtruth-seed1"] == pytest.approx(0.0)


def test_budget_regret_of_a_tie_is_the_mean_over_the_tied_models():
    """A constant predictor's regret must not depend on which model id sorts first."""
    from ptmrec import budgets

    prof = pd.DataFrame({"latency_p50_ms": [1.0, 1.0, 1.0], "peak_memory_mb": [1.0, 1.0, 1.0]}, index=["a", "b", "c"])
    perf = pd.DataFrame({"task_id": ["t"] * 3, "model_id": ["a", "b", "c"], "accuracy": [0.5, 0.9, 0.7]})
    pred = pd.DataFrame({"task": ["t"] * 3, "model": ["a", "b", "c"], "method": ["flat"] * 3, "score": [1.0] * 3})
    r = budgets.budget_regret(pred, perf, prof, {"any": {}}).set_index("method")
    assert r.loc["flat", "mean_regret"] == pytest.approx(0.9 - 0.7)
