"""The leaderboard: run records -> `Table` (`table.collect`, every statistic) -> findings -> renderers
(text: `render`; figures: `plots`; one HTML page: `html`) -> `publish` (every format, a published folder);
`command` is the `kdbench leaderboard` subcommand. Imports run one way along that line; `stats` and
`across` are the pure statistics `table` computes with."""

from .publish import FORMATS, publish, render
from .table import Table, collect, method_display

__all__ = ["FORMATS", "Table", "collect", "method_display", "publish", "render"]
