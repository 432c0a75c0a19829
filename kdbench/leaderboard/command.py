"""`kdbench leaderboard`, the subcommand (`add_parser`, `cmd_leaderboard`, `emit`): run records ->
`table.collect` (every statistic) -> `publish.render` (any format) or `publish.publish` (a folder), and
the PNG plots (docs/design.md §1)."""

import sys
from dataclasses import dataclass
from typing import Optional

from .plots import plot_cd, plot_pairs, plot_paths
from .publish import FORMATS, publish, render
from .table import collect


def add_parser(subparsers):
    """Add the `leaderboard` subcommand to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "leaderboard", help="tables and statistics from run records",
        description="Tabulate the runs of one preset: mean ± std per pair and distiller, seed-paired tests "
                    "against a reference (Holm-corrected), average gain over vanilla, average ranks, Friedman "
                    "test and Nemenyi critical difference. Failed and unfinished runs are listed, not averaged.")
    p.add_argument("--out", default="runs", help="results directory given to `kdbench run` (default: runs)")
    p.add_argument("--preset", default=None, help="preset to tabulate (needed when --out holds several)")
    p.add_argument("--reference", default=None, help="distiller the others are tested against (default: kd if run)")
    p.add_argument("--pairs", default=None, help="only these pairs: all | SET | T:S[,T:S..] (default: every pair run)")
    p.add_argument("--distillers", default=None, help="only these distillers: NAME[,NAME..] (default: every one run)")
    p.add_argument("--format", default="md", choices=FORMATS, help="output on stdout (default: md)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also write the CD diagram to FILE.png and per-pair accuracies to FILE-pairs.png")
    p.add_argument("--publish", default=None, metavar="DIR",
                   help="write every format and figure into DIR (NAME.md/.csv/.latex/.json/.html, "
                        "NAME-findings.md, NAME-{cd,pairs,diffs,cost}.png) instead of printing; runs "
                        "without a record (in progress) are left out")
    p.add_argument("--name", default=None, help="--publish: file stem (default: the preset)")
    p.set_defaults(func=cmd_leaderboard)
    return p


@dataclass(frozen=True)
class LeaderboardRequest:
    """What `kdbench leaderboard` tabulates and where it writes, as its options say."""

    out: str = "runs"
    preset: Optional[str] = None
    reference: Optional[str] = None
    pairs: Optional[str] = None
    distillers: Optional[str] = None
    format: str = "md"
    plot: Optional[str] = None
    publish: Optional[str] = None
    name: Optional[str] = None


def cmd_leaderboard(args: LeaderboardRequest) -> int:
    """Print the leaderboard of `args.out` in `args.format`; write the plots when `args.plot` is set."""
    table = collect(args.out, args.preset, args.reference, pairs=args.pairs, distillers=args.distillers,
                    finished_only=bool(args.publish))
    if args.publish:
        written = publish(table, args.publish, args.name or "")
        print(f"kdbench: wrote {len(written)} files to {args.publish}", file=sys.stderr)
        return 0
    if args.plot:
        cd_path, pairs_path = plot_paths(args.plot)
        cd_path.parent.mkdir(parents=True, exist_ok=True)
        plot_cd(table, cd_path)
        plot_pairs(table, pairs_path)
        print(f"kdbench: wrote {cd_path} and {pairs_path}", file=sys.stderr)
    emit(render(table, args.format))
    return 0


def emit(text: str):
    """Print a rendered table to stdout, ending with exactly one newline."""
    print(text, end="" if text.endswith("\n") else "\n")
