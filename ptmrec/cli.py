"""The ``ptmrec`` command line: ``run``, ``params``, ``stages``, ``train``, ``shard``, ``plan``, ``report``, ``thesis``, ``recommend``."""
from __future__ import annotations

import argparse
import sys

# No ptmrec module is imported here: each subcommand imports what it uses, so that a cold
# ``ptmrec recommend`` loads torch and the few modules it needs, not open_clip or matplotlib.


def _cmd_run(args: argparse.Namespace) -> int:
    from . import params as params_mod
    from . import pipeline, report
    from .paths import run_dir

    code = pipeline.run(args.params, force=args.force, start=args.start, only=args.only)
    if code == 0:  # the stages are done and recorded: the reports follow (never fatal, see write_run_reports)
        report.write_run_reports(run_dir(params_mod.load(args.params).name), pipeline.list_stages())
    return code


def _cmd_params(args: argparse.Namespace) -> int:
    from . import params as params_mod
    from .checks import check_choices

    P = params_mod.load(args.params)
    check_choices(P)  # every value against its registry, as ./run_all.sh does before any work
    print(P.to_yaml(), end="")
    return 0


def _cmd_stages(args: argparse.Namespace) -> int:
    from . import params as params_mod
    from . import pipeline

    P = params_mod.load(args.params) if args.params else None
    for name in pipeline.list_stages():
        state = "" if P is None else ("  up to date" if pipeline.is_fresh(P, name) else "  to run")
        print(f"{name}{state}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from . import autoencoder, ranker, train  # noqa: F401 -- importing a model's module registers its trainer

    if args.list or not args.name:
        for name in train.list_trainers():
            print(f"{name:28s} {train.doc_line(train.TRAINERS[name])}")
        return 0
    import json

    if not args.run:
        print("ptmrec train: give --run runs/<set> (the run whose outputs it trains on)", file=sys.stderr)
        return 2
    try:
        summary = train.run_trainer(args.name, args.run, args.params, args.out, args.epochs, args.device)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"ptmrec train: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k not in ("train_ids", "val_ids")}, indent=2, default=str))
    return 0


def _cmd_shard(args: argparse.Namespace) -> int:
    from . import pipeline

    if args.list or not args.stage:
        print("\n".join(pipeline.list_sharders()))
        return 0
    if args.count < 1 or not 0 <= args.index < args.count:
        print(f"ptmrec shard: need 0 <= --index < --count, got {args.index} of {args.count}", file=sys.stderr)
        return 2
    try:
        return pipeline.run_shard(args.params, args.stage, args.index, args.count)
    except RuntimeError as e:  # an upstream stage is not done
        print(f"ptmrec shard: {e}", file=sys.stderr)
        return 1


def _cmd_plan(args: argparse.Namespace) -> int:
    """First line ``run <folder>``; then per selected stage: name, shardable (0/1), up to date (0/1), the
    stages it depends on (comma-separated, ``-`` for none)."""
    from . import params as params_mod
    from . import pipeline
    from .paths import run_dir

    P = params_mod.load(args.params)
    if args.until and args.until not in pipeline.STAGES:
        print(f"ptmrec plan: unknown stage '{args.until}'; stages: {', '.join(pipeline.list_stages())}", file=sys.stderr)
        return 2
    print(f"run {run_dir(P.name)}")
    for name in pipeline.select(args.start, args.only):
        if args.until and pipeline.list_stages().index(name) > pipeline.list_stages().index(args.until):
            break
        deps = ",".join(pipeline.STAGES[name].depends) or "-"
        print(f"{name} {int(name in pipeline.SHARDERS)} {int(pipeline.is_fresh(P, name))} {deps}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import report

    try:
        index = report.write_html_report(args.run)
        print(f"HTML report: {index}")
        if args.render:
            seconds = report.render_quarto(args.run, args.reports, force=True)
            took = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
            print(f"Quarto report: {Path(args.run) / 'report' / 'quarto' / '_output'}/index.html ({took})")
        elif not args.no_quarto:
            report.prepare_quarto(args.run, args.reports)
            for u in [u for s, nb in report.stage_notebooks(args.run) for u in report.unlabelled_figures(nb, s)]:
                print(f"figure without a label (not in the Quarto report): {u}")
            problems = report.check_embeds(args.reports, args.run)
            for p in problems:
                print(f"ptmrec report: {p}", file=sys.stderr)
            print(f"Quarto: {args.reports}/notebooks/ and figures.qmd ready; render with: quarto render {args.reports}")
            if problems:
                return 2
    except report.QuartoMissing as e:
        print(f"ptmrec report: {e}", file=sys.stderr)
        return 2
    except report.ReportError as e:
        print(f"ptmrec report: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_thesis(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import report

    try:
        run = Path(args.run).resolve()
        print(f"thesis: figures and tables from run {run} ({report.run_finished(run)})")
        if args.assets_only:
            made = report.thesis_assets(args.run, args.thesis)
            print(f"{len(made)} files in {args.thesis}/generated/")
        else:
            print(f"thesis: {report.build_thesis(args.run, args.thesis)}")
    except report.ReportError as e:
        print(f"ptmrec thesis: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    """0: a ranking; 1: nothing fits the budget (the nearest models shown); 2: bad input, one line on stderr
    naming the path and what to do (the stack trace only with --debug); 3: an unexpected error."""
    import os

    # Before torch loads: idle OpenMP threads sleep instead of spinning. On a shared machine (more busy
    # threads than cores) spinning threads steal the cores the work needs: 40 images took 6-7 s to
    # embed instead of 0.2-0.4 s (2 cores, load 8). One short burst of work loses nothing by it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from . import recommend as rec_mod
    from .paths import runs_root

    try:
        rec = rec_mod.recommend(args.run, args.images, args.top, args.max_latency_ms, args.max_memory_mb, args.device,
                                probe=args.probe)
        print(rec_mod.format_table(rec))
        out = args.out or (runs_root() / "recommendations" / args.images.rstrip("/").split("/")[-1])
        files = rec.save(out, report=args.report)
    except (rec_mod.RecommendError, FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"ptmrec recommend: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not bad input: still one line, the trace with --debug
        if args.debug:
            raise
        print(f"ptmrec recommend: unexpected {type(e).__name__}: {_one_line(e)} (--debug shows the stack trace)",
              file=sys.stderr)
        return 3
    print(f"written: {', '.join(str(f) for f in files)}")
    return 0 if len(rec.table) else 1


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (a KeyError's repr quotes stripped)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    return " ".join(str(msg).split())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptmrec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the stage notebooks for a parameter set (what run_all.sh calls)")
    r.add_argument("params", nargs="?", default="params/default.yaml")
    r.add_argument("--force", action="store_true", help="redo every selected stage, cached or not")
    r.add_argument("--from", dest="start", metavar="STAGE", help="run this stage and all after it")
    r.add_argument("--only", nargs="+", metavar="STAGE", help="run exactly these stages")
    r.set_defaults(func=_cmd_run)

    c = sub.add_parser("params", help="validate a parameter set and print it resolved")
    c.add_argument("params")
    c.set_defaults(func=_cmd_params)

    s = sub.add_parser("stages", help="list the stages (and, given a parameter set, which are up to date)")
    s.add_argument("params", nargs="?")
    s.set_defaults(func=_cmd_stages)

    t = sub.add_parser("train", help="list the trainers, or run one on a run's outputs")
    t.add_argument("name", nargs="?", help="trainer name (any case, 'Trainer' suffix optional)")
    t.add_argument("--list", action="store_true", help="list the registered trainers")
    t.add_argument("--run", metavar="DIR", help="run folder, e.g. runs/default")
    t.add_argument("--params", metavar="YAML", help="parameter set (default: the run's params.resolved.yaml)")
    t.add_argument("--out", metavar="DIR", help="output folder (default: <run>/train/<trainer>)")
    t.add_argument("--epochs", type=int, help="override train.epochs")
    t.add_argument("--device", help="override run.device")
    t.set_defaults(func=_cmd_train)

    from .paths import REPO

    h = sub.add_parser("shard", help="compute one shard of a shardable stage (a SLURM array task)")
    h.add_argument("params", nargs="?")
    h.add_argument("stage", nargs="?")
    h.add_argument("--index", type=int, default=0, help="this shard, 0..count-1")
    h.add_argument("--count", type=int, default=1, help="number of shards")
    h.add_argument("--list", action="store_true", help="list the shardable stages")
    h.set_defaults(func=_cmd_shard)

    n = sub.add_parser("plan", help="the stages a submission runs: name, shardable, up to date (slurm/submit.sh)")
    n.add_argument("params")
    n.add_argument("--from", dest="start", metavar="STAGE")
    n.add_argument("--only", nargs="+", metavar="STAGE")
    n.add_argument("--until", metavar="STAGE", help="stop after this stage")
    n.set_defaults(func=_cmd_plan)

    o = sub.add_parser("report", help="HTML report of a run, and its notebooks ready for quarto render reports/")
    o.add_argument("--run", required=True, metavar="DIR", help="run folder, e.g. runs/smoke")
    o.add_argument("--reports", default=str(REPO / "reports"), metavar="DIR", help="the Quarto project")
    o.add_argument("--no-quarto", action="store_true", help="only the HTML report")
    o.add_argument("--render", action="store_true",
                   help="render the Quarto report into <run>/report/quarto/_output/ (HTML; PDF where LaTeX is installed)")
    o.set_defaults(func=_cmd_report)

    e = sub.add_parser("thesis", help="copy a run's figures and tables into thesis/generated/ and build main.pdf")
    e.add_argument("--run", required=True, metavar="DIR", help="run folder, e.g. runs/smoke")
    e.add_argument("--thesis", default=str(REPO / "thesis"), metavar="DIR")
    e.add_argument("--assets-only", action="store_true", help="only fill thesis/generated/ (no latexmk)")
    e.set_defaults(func=_cmd_thesis)

    m = sub.add_parser("recommend", help="rank a run's zoo for a folder of labelled images (one subfolder per class)")
    m.add_argument("--run", required=True, metavar="DIR", help="a finished run folder, e.g. runs/default")
    m.add_argument("--images", required=True, metavar="DIR", help="labelled images: one subfolder per class")
    m.add_argument("--top", type=int, help="show only the best N models")
    m.add_argument("--max-latency-ms", type=float, help="latency budget at batch 1, ms (hardware.latency_stat of the run, p50 by default; measured in stage 08)")
    m.add_argument("--max-memory-mb", type=float, help="peak memory budget (measured in stage 08)")
    m.add_argument("--device", default="cpu", help="device to encode on and whose profile applies (cpu, cuda)")
    m.add_argument("--probe", type=int, nargs="?", metavar="K", default=0, const=None,
                   help="run the K favourites on the images and rank again with their estimator scores; "
                        "--probe alone: the run's inner-validated probe_k (without --probe: tokens only, fastest)")
    m.add_argument("--out", metavar="DIR", help="where ranking.csv/json go (default runs/recommendations/<images>)")
    m.add_argument("--report", action="store_true", help="also write ranking.html and ranking.png beside them")
    m.add_argument("--debug", action="store_true", help="show the stack trace of an error")
    m.set_defaults(func=_cmd_recommend)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        params_mod = sys.modules.get("ptmrec.params")  # imported by the subcommands that read parameters
        if params_mod is not None and isinstance(e, params_mod.ParamsError):
            print(f"ptmrec: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
