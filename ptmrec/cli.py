"""The ``ptmrec`` command line: ``ptmrec run``, ``ptmrec params``, ``ptmrec stages``, ``ptmrec train``."""
from __future__ import annotations

import argparse
import json
import sys

from . import params as params_mod


def _cmd_run(args: argparse.Namespace) -> int:
    from . import pipeline

    return pipeline.run(args.params, force=args.force, start=args.start, only=args.only)


def _cmd_params(args: argparse.Namespace) -> int:
    print(params_mod.load(args.params).to_yaml(), end="")
    return 0


def _cmd_stages(args: argparse.Namespace) -> int:
    from . import pipeline

    P = params_mod.load(args.params) if args.params else None
    for name in pipeline.list_stages():
        state = "" if P is None else ("  up to date" if pipeline.is_fresh(P, name) else "  to run")
        print(f"{name}{state}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from . import train

    if args.list or not args.name:
        for name in train.list_trainers():
            print(f"{name:28s} {train.doc_line(train.TRAINERS[name])}")
        return 0
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except params_mod.ParamsError as e:
        print(f"ptmrec: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
