"""Forward images per second of each pretrained backbone of the zoo, per input size and thread count (issue 13).

    .venv/bin/python benchmarks/backbones.py                                   # sizes 64 96 128, 1 and 2 threads
    .venv/bin/python benchmarks/backbones.py --sizes 96 --threads 1 --repeats 3 --backbones mobilenet_v2

For each backbone (ptmrec.backbones plus the EfficientNet-Lite variants): load the packaged weights, then
time ``forward_features`` (eval, inference mode, channels_last as the zoo trains them) on a batch of
``--batch`` random images, ``--repeats`` rounds of ``--iters`` batches after a warm-up, and keep the median
round (the machine is shared: the load average is recorded beside, medians damp the noise). Beside wall-clock
images/s it records images per CPU-second of the process (``images_per_cpu_s``): with 1 thread that is what an
idle core would give, and it barely moves when other jobs share the machine. Also records parameters and
feature dimension. Writes benchmarks/results/backbones.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def images_per_second(model, size: int, batch: int, iters: int, repeats: int) -> tuple[list[float], list[float]]:
    """Images per wall-clock second and per CPU-second of ``model.forward_features`` on [batch, 3, size, size],
    one figure per round."""
    import torch

    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    rates, cpu_rates = [], []
    with torch.inference_mode():
        model.forward_features(x)  # warm-up: allocations, oneDNN kernel selection
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(iters):
                model.forward_features(x)
            rates.append(batch * iters / (time.perf_counter() - t0))
            cpu_rates.append(batch * iters / max(time.process_time() - c0, 1e-9))
    return rates, cpu_rates


def load(name: str):
    """(model, source task, the zoo's default input size) of a backbone or an EfficientNet-Lite variant."""
    from ptmrec import backbones, zoo
    from ptmrec.params import ZooParams

    if name.startswith("efficientnet_lite"):
        return zoo.load_lite_imagenet(name.removeprefix("efficientnet_")), "imagenet", ZooParams().lite_image_size
    b = backbones.get_backbone(name)
    return backbones.load_backbone(name)[0], b.source_task, b.image_size


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbones", nargs="*", help="default: every registered backbone + efficientnet_lite0")
    ap.add_argument("--sizes", type=int, nargs="*", default=[64, 96, 128])
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "backbones.json"))
    args = ap.parse_args(argv)

    import torch

    from ptmrec import backbones, zoo

    names = args.backbones or ["efficientnet_lite0", *backbones.list_backbones()]
    rows = []
    for name in names:
        model, source, zoo_size = load(name)
        model = model.eval().to(memory_format=torch.channels_last)
        for threads in args.threads:
            torch.set_num_threads(threads)
            for size in args.sizes:
                load_before = os.getloadavg()[0]
                rates, cpu_rates = images_per_second(model, size, args.batch, args.iters, args.repeats)
                row = dict(backbone=name, source_task=source, image_size=size, zoo_image_size=zoo_size, threads=threads,
                           images_per_s=round(statistics.median(rates), 1), rounds=[round(r, 1) for r in rates],
                           images_per_cpu_s=round(statistics.median(cpu_rates), 1),
                           params=zoo.num_params(model), num_features=int(model.num_features),
                           loadavg_1min=round(load_before, 2))
                rows.append(row)
                print(f"{name:20s} {size:4d}px {threads}t {row['images_per_s']:8.1f} img/s "
                      f"{row['images_per_cpu_s']:8.1f} img/cpu-s "
                      f"(load {row['loadavg_1min']})", flush=True)
    result = dict(rows=rows, batch=args.batch, iters=args.iters, repeats=args.repeats, statistic="median round",
                  torch=torch.__version__, machine=f"{platform.node()} {platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} cores", date=time.strftime("%Y-%m-%d %H:%M"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
