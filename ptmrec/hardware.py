"""Hardware profiling (stage 08): latency, throughput, memory, FLOPs of every zoo model on a device.

Every zoo model is measured as it is used for transfer: ``model.forward_features`` on a float
input of its own image size ([B, 3, S, S]), eval mode, ``torch.inference_mode``.

    >>> check_device("cpu")                                   # HardwareError when absent
    >>> prof, calls, skipped = profile_zoo(zoo_dir, index, "cpu", warmup=10, repeats=50, batch_size=32, threads=1, rounds=3)
    >>> load_profile(run_dir, "cpu")                          # indexed by model

What a profile row holds (one table per device, ``profile-<device>.csv``):

- ``latency_p50_ms`` / ``latency_p95_ms``: percentiles of the wall time of one batch-1 forward,
  pooled over ``rounds`` x ``repeats`` timed calls after ``warmup`` untimed ones (CUDA: synchronised
  before reading the clock); ``latency_cv``: coefficient of variation (std / mean) of the per-round
  medians, i.e. how repeatable the figure is when measured again minutes later.
- ``latency_cpu_p50_ms`` / ``latency_cpu_cv``: the same from the CPU time of the calling thread (CPU,
  one torch thread only): the time the call waited for a processor busy with other work is left out,
  so on a shared machine it estimates the latency on an idle one; wall / CPU shows the disturbance.
- ``throughput_ips``: images per second at batch ``batch_size`` (batch / median batch time).
- ``peak_memory_mb``: the model's resident weights and buffers (state-dict bytes) + the input +
  the peak of bytes allocated by PyTorch's allocator during one batch-1 forward (activations and
  kernel workspaces). On CUDA the peak comes from ``torch.cuda.max_memory_allocated``; on CPU from
  the allocation events PyTorch's profiler records with ``profile_memory=True`` (each carries the
  allocator's running total). The allocator's cache, the CUDA context and the Python/library
  footprint are excluded: it is what the model itself needs, comparable across models and devices.
  ``peak_memory_batch_mb``: the same at the throughput batch.
- ``flops``: floating-point operations of a batch-1 forward, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-accumulate; convolutions, matrix
  products and attention only -- element-wise ops are not counted).
- ``ops``: ATen operator calls of a batch-1 forward on the timed (inference) path.
- ``params`` (parameters), ``weight_mb`` (``model.safetensors`` bytes on disk), and the settings
  (warmup, repeats, rounds, batch_size, threads) the figures were measured with.

Budgets, constrained ranking, regret and the latency model built on these profiles are ``ptmrec.budgets``.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # torch is imported where it is used: reading a profile (``ptmrec recommend``) needs none
    import torch
    import torch.nn as nn

PROFILE_COLUMNS = ["model", "device", "latency_p50_ms", "latency_p95_ms", "latency_mean_ms", "latency_cv",
                   "latency_cpu_p50_ms", "latency_cpu_cv",
                   "throughput_ips", "peak_memory_mb", "peak_memory_batch_mb", "params", "flops", "ops", "weight_mb",
                   "image_size", "warmup", "repeats", "rounds", "batch_size", "threads"]


class HardwareError(RuntimeError):
    """A device is absent, or a device was not profiled; the message says what to do."""


class ProfileMissingError(HardwareError, FileNotFoundError):
    """The run holds no stage-08 profile of a device (also a FileNotFoundError, for callers that treat it so)."""


# ----------------------------------------------------------------------------- devices


def device_tag(device: str) -> str:
    """File-name form of a device: 'cpu', 'cuda', 'cuda1' (from 'cuda:1')."""
    return str(device).replace(":", "")


def check_device(device: str) -> torch.device:
    """The torch device for ``device``, or HardwareError when it is malformed or not on this machine."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise HardwareError(f"device '{device}' is not a device name (cpu, cuda, cuda:1, mps): {e}") from None
    if d.type == "cpu":
        return d
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise HardwareError(f"device '{device}' is not present: torch finds no CUDA GPU on this machine "
                                f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
        if (d.index or 0) >= n:
            raise HardwareError(f"device '{device}' is not present: this machine has {n} CUDA GPU(s), cuda:0..cuda:{n - 1}")
        return d
    if d.type == "mps":
        if not torch.backends.mps.is_available():
            raise HardwareError(f"device '{device}' is not present: no Apple MPS backend on this machine")
        return d
    raise HardwareError(f"device '{device}': type '{d.type}' is not supported for profiling (cpu, cuda, mps)")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_description(device: str) -> dict[str, Any]:
    """What the figures were measured on: CPU model and cores, memory, torch, threads, load, GPU."""
    import torch

    d = check_device(device)
    desc = dict(device=str(device), cpu=_cpu_model(), logical_cpus=os.cpu_count(),
                usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                memory_gb=_memory_gb(), platform=platform.platform(), python=platform.python_version(),
                torch=torch.__version__, torch_threads=torch.get_num_threads(),
                torch_interop_threads=torch.get_num_interop_threads(), mkldnn=torch.backends.mkldnn.is_available(),
                load_average=[round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None)
    if d.type == "cuda":
        p = torch.cuda.get_device_properties(d)
        desc.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), gpu_capability=f"{p.major}.{p.minor}",
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    return desc


# --------------------------------------------------------------------------- measuring


@contextmanager
def _threads(n: int) -> Iterator[int]:
    """torch intra-op threads set to ``n`` (0: leave torch's default) for the block; yields the number used."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _input(batch: int, image_size: int, device: torch.device) -> torch.Tensor:
    """A fixed random input [B, 3, S, S] at the zoo's scale (to_input maps pixels to about [-1, 1])."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, image_size, image_size, generator=g).mul_(2).sub_(1).to(device)


def _on_device(model: nn.Module, image_size: int, device: str, batch: int = 1) -> tuple[torch.device, torch.Tensor]:
    """(the checked device, the fixed input [B, 3, S, S] on it), with ``model`` in eval mode moved there."""
    d = check_device(device)
    model.eval().to(d)
    return d, _input(batch, image_size, d)


def _time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """(wall ms [repeats], calling thread's CPU ms [repeats]) of ``fn()`` after ``warmup`` untimed calls; GC paused."""
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = np.empty(repeats), np.empty(repeats)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(repeats):
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            fn()
            _sync(device)
            wall[i], cpu[i] = (time.perf_counter_ns() - t0) / 1e6, (time.thread_time_ns() - c0) / 1e6
    finally:
        if gc_was:
            gc.enable()
    return wall, cpu


def time_latency(model: nn.Module, image_size: int, device: str, warmup: int, repeats: int,
                 threads: int = 0) -> pd.DataFrame:
    """Batch-1 forward_features times on ``device`` with ``threads`` torch threads: one row per timed call.

    ``latency_ms`` is wall-clock time. ``cpu_ms`` is the CPU time of the calling thread, kept only on
    CPU with one torch thread, where it is all the work of the call: it leaves out the time the call
    waited for the processor, so it estimates the latency on an idle machine when others share it.
    """
    import torch

    d, x = _on_device(model, image_size, device)
    with _threads(threads) as used, torch.inference_mode():
        wall, cpu = _time_calls(lambda: model.forward_features(x), d, warmup, repeats)
    if d.type != "cpu" or used != 1:
        cpu = np.full(repeats, np.nan)
    return pd.DataFrame(dict(call=np.arange(repeats), latency_ms=wall, cpu_ms=cpu))


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as they sit in memory."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _cpu_forward_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes held by PyTorch's CPU allocator during ``fn()`` above what was held before it.

    The profiler (``profile_memory=True``) reports every CPU allocation and free with the running
    total of bytes it has seen allocated since it started; the maximum of that total is the peak.
    """
    import torch

    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # 6 = above USDT: keep kineto's start/stop lines out of notebooks
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        events = json.loads(Path(tmp).read_text()).get("traceEvents", [])
    finally:
        os.unlink(tmp)
    mem = sorted((e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0),
                 key=lambda e: (e.get("ts", 0), e["args"].get("Ev Idx", 0)))
    mem = [e["args"] for e in mem]
    if not mem:
        return 0
    # the running total only counts bytes allocated while profiling; start from what it held before the first event
    base = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return max(0, max(a["Total Allocated"] for a in mem) - base)


def forward_peak_bytes(model: nn.Module, image_size: int, device: str, batch: int = 1, warm: bool = True) -> int:
    """Weights + input + peak allocator bytes of one forward_features at ``batch`` (see the module doc).

    ``warm``: run one forward first, so one-off lazy initialisation does not count as the model's memory.
    """
    import torch

    d, x = _on_device(model, image_size, device, batch)
    fixed = state_bytes(model) + x.numel() * x.element_size()
    with torch.inference_mode():
        if warm:
            model.forward_features(x)
        if d.type == "cuda":
            _sync(d)
            torch.cuda.reset_peak_memory_stats(d)
            base = torch.cuda.memory_allocated(d)
            model.forward_features(x)
            _sync(d)
            return fixed + torch.cuda.max_memory_allocated(d) - base
        if d.type == "cpu":
            return fixed + _cpu_forward_peak(lambda: model.forward_features(x))
    return fixed  # mps: no allocator peak available; weights + input only (a lower bound)


def count_flops(model: nn.Module, image_size: int, device: str = "cpu") -> int:
    """FLOPs of one batch-1 forward_features (torch.utils.flop_counter: 2 per multiply-accumulate)."""
    import torch

    from torch.utils.flop_counter import FlopCounterMode

    _, x = _on_device(model, image_size, device)
    counter = FlopCounterMode(display=False)
    # grad enabled: PyTorch's fused inference fast paths (nn.TransformerEncoderLayer, nn.MultiheadAttention)
    # have no FLOP formula and would count as 0; the unfused path does the same arithmetic, op by op
    with torch.enable_grad(), counter:
        model.forward_features(x)
    return int(counter.get_total_flops())


def count_ops(model: nn.Module, image_size: int, device: str = "cpu") -> int:
    """Number of ATen operator calls in one batch-1 forward_features, on the inference path that is timed.

    Tiny models are bound by per-operator overhead (dispatch, kernel launch), not by arithmetic.
    """
    import torch

    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            _Count.n += 1
            return func(*args, **(kwargs or {}))

    _, x = _on_device(model, image_size, device)
    with torch.inference_mode(), _Count():
        model.forward_features(x)
    return _Count.n


def profile_model(model: nn.Module, image_size: int, device: str, warmup: int, repeats: int, batch_size: int,
                  threads: int = 0) -> dict[str, Any]:
    """One full profile of ``model`` on ``device`` (see the module doc for each figure's definition).

    Latency: ``warmup`` + ``repeats`` batch-1 calls. Throughput: ``min(warmup, 2)`` warm-up batches,
    then ``max(3, repeats // 10)`` timed batches of ``batch_size``. Returns a dict with the per-call
    times (``samples``, a ``time_latency`` frame) beside the summary figures.
    """
    import torch

    d = check_device(device)
    model.eval().to(d)
    with _threads(threads) as used:
        samples = time_latency(model, image_size, device, warmup, repeats)
        lat = samples.latency_ms.to_numpy()
        xb = _input(batch_size, image_size, d)
        with torch.inference_mode():
            tb, _ = _time_calls(lambda: model.forward_features(xb), d, min(warmup, 2), max(3, repeats // 10))
        xb = None  # freed before the memory passes
        peak1 = forward_peak_bytes(model, image_size, device, 1)
        peakb = forward_peak_bytes(model, image_size, device, batch_size, warm=False)  # warmed by the timing
    return dict(device=str(device), latency_p50_ms=float(np.median(lat)), latency_p95_ms=float(np.percentile(lat, 95)),
                latency_mean_ms=float(lat.mean()), latency_cpu_p50_ms=float(samples.cpu_ms.median()),
                throughput_ips=float(batch_size / np.median(tb) * 1e3),
                peak_memory_mb=peak1 / 2**20, peak_memory_batch_mb=peakb / 2**20,
                params=int(sum(p.numel() for p in model.parameters())), flops=count_flops(model, image_size, device),
                ops=count_ops(model, image_size, device),
                image_size=int(image_size), warmup=int(warmup), repeats=int(repeats), batch_size=int(batch_size),
                threads=int(used), samples=samples)


def profile_zoo(zoo_dir: str | Path, index: pd.DataFrame, device: str, warmup: int, repeats: int, batch_size: int,
                threads: int = 0, rounds: int = 1,
                progress: Callable[[Iterable], Iterable] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Profile every model of a zoo index on ``device``: (profile, per-round latencies, skipped).

    Round 0 is a full ``profile_model``; rounds 1.. re-time batch-1 latency only, model after model,
    so that a passing disturbance of the machine hits one round of many models rather than every
    round of one. p50/p95 pool all rounds; ``latency_cv`` is std / mean of the per-round medians.
    A model that fails to load or run is skipped with its reason, not fatal.
    """
    import torch

    from .zoo import load_model

    check_device(device)
    zoo_dir = Path(zoo_dir)
    rows, samples, skipped = {}, [], []
    for r in range(rounds):
        for row in (progress or iter)(list(index.itertuples())):
            mid = row.model_id
            if any(s["model"] == mid for s in skipped):
                continue
            try:
                model, cfg = load_model(zoo_dir / row.path, device)
                size = int(cfg["image_size"])
                if r == 0:
                    p = profile_model(model, size, device, warmup, repeats, batch_size, threads)
                    weights = zoo_dir / row.path / "model.safetensors"
                    p.update(model=mid, weight_mb=weights.stat().st_size / 2**20 if weights.is_file() else np.nan)
                    lat = p.pop("samples")
                    rows[mid] = p
                else:
                    lat = time_latency(model, size, device, warmup, repeats, threads)
                samples.append(lat.assign(model=mid, round=r))
                del model
            except Exception as e:  # noqa: BLE001 -- one model that cannot run must not stop a zoo of hundreds
                skipped.append(dict(model=mid, device=str(device), round=r, reason=f"{type(e).__name__}: {e}"))
                rows.pop(mid, None)
                if device != "cpu" and torch.cuda.is_available():
                    torch.cuda.empty_cache()
    cols = ["model", "round", "call", "latency_ms", "cpu_ms"]
    lat = pd.concat(samples, ignore_index=True)[cols] if samples else pd.DataFrame(columns=cols)
    lat = lat[lat.model.isin(list(rows))]
    prof = pd.DataFrame(list(rows.values()))
    if len(prof):
        g = lat.groupby("model").latency_ms
        per_round = lat.groupby(["model", "round"]).latency_ms.median().groupby("model")
        prof = prof.set_index("model")
        prof["latency_p50_ms"] = g.median()
        prof["latency_p95_ms"] = g.quantile(0.95)
        prof["latency_mean_ms"] = g.mean()
        prof["latency_cv"] = (per_round.std(ddof=0) / per_round.mean()).fillna(0.0) if rounds > 1 else np.nan
        cpu_round = lat.groupby(["model", "round"]).cpu_ms.median().groupby("model")
        prof["latency_cpu_p50_ms"] = lat.groupby("model").cpu_ms.median()
        prof["latency_cpu_cv"] = cpu_round.std(ddof=0) / cpu_round.mean() if rounds > 1 else np.nan
        prof["rounds"] = rounds
        prof = prof.reset_index()[PROFILE_COLUMNS]
    else:
        prof = pd.DataFrame(columns=PROFILE_COLUMNS)
    return prof, lat.reset_index(drop=True), pd.DataFrame(skipped, columns=["model", "device", "round", "reason"])


def load_profile(run_dir: str | Path, device: str) -> pd.DataFrame:
    """The stage-08 profile of ``device`` in a run folder (or the 08_hardware folder itself), indexed by model."""
    run_dir = Path(run_dir)
    stage = run_dir if (run_dir / f"profile-{device_tag(device)}.csv").exists() or run_dir.name == "08_hardware" \
        else run_dir / "08_hardware"
    path = stage / f"profile-{device_tag(device)}.csv"
    if not path.is_file():
        have = sorted(p.stem.removeprefix("profile-") for p in stage.glob("profile-*.csv")) if stage.is_dir() else []
        raise ProfileMissingError(f"{path}: device '{device}' was not profiled in this run (stage 08_hardware profiled: "
                            f"{', '.join(have) or 'nothing yet'}); add it to hardware.devices and run "
                            f"./run_all.sh <params> --only 08_hardware on a machine that has it")
    return pd.read_csv(path).set_index("model")


# ---------------------------------------------------------------------------- the stage


def run_profiling(zoo_dir: str | Path, index: pd.DataFrame, hp: Any, out_dir: str | Path,
                  progress: Callable[[Iterable], Iterable] | None = None) -> dict[str, pd.DataFrame]:
    """Profile the zoo on every device of ``hp`` (HardwareParams); write one set of files per device.

    Every device is checked before any work (an absent one is a HardwareError). Writes under ``out_dir``:
    ``profile-<device>.csv`` (PROFILE_COLUMNS), ``latency-<device>.csv`` (every timed call: model, round,
    call, latency_ms), ``skipped-<device>.csv`` (model, round, reason) and ``machine-<device>.json`` (the
    machine, the settings, the load average before and after, the seconds spent). Returns {device: profile}.
    """
    from .paths import write_csv, write_json

    for d in hp.devices:
        check_device(d)
    out_dir, profiles = Path(out_dir), {}
    for d in hp.devices:
        before = machine_description(d)
        t0 = time.time()
        prof, lat, skipped = profile_zoo(zoo_dir, index, d, hp.warmup, hp.repeats, hp.batch_size, hp.threads,
                                         hp.rounds, progress)
        seconds = time.time() - t0
        tag = device_tag(d)
        write_csv(out_dir / f"profile-{tag}.csv", prof)
        write_csv(out_dir / f"latency-{tag}.csv", lat)
        write_csv(out_dir / f"skipped-{tag}.csv", skipped)
        settings = dict(warmup=hp.warmup, repeats=hp.repeats, rounds=hp.rounds, batch_size=hp.batch_size,
                        threads=int(prof.threads.iloc[0]) if len(prof) else hp.threads, threads_asked=hp.threads)
        load_after = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
        write_json(out_dir / f"machine-{tag}.json", dict(before, settings=settings, load_average_after=load_after,
                                                         profiled=len(prof), skipped=len(skipped),
                                                         seconds=round(seconds, 1)))
        profiles[d] = prof.set_index("model")
    return profiles
