"""Entry point of a worker process: `python -m kdbench.executors.worker [--worker K]`, reading a
plan's JSON (`Plan.to_json`) on stdin, running it with the local executor. The `--workers` and Ray
executors start it, so a cell reaches them exactly as the driver expanded it."""

import argparse
import sys

from ..context import RunContext
from ..errors import UsageError
from .local import LocalExecutor
from .plan import Plan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kdbench.executors.worker")
    p.add_argument("--worker", type=int, default=None, help="index among `kdbench run --workers N` processes")
    p.add_argument("--teach", action="store_true", help="prepare the plan's teachers only")
    args = p.parse_args(argv)
    context = RunContext(worker=args.worker)
    try:
        plan = Plan.from_json(sys.stdin.read())
        if args.teach:
            LocalExecutor(context).teach(plan, verify=True)
            return 0
        return LocalExecutor(context).run(plan)
    except (UsageError, ValueError) as exc:
        print(f"kdbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        context.log("kdbench: interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
