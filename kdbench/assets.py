"""The project's data files (presets, pair sets, published numbers), found beside the installed
`kdbench` package, never through `import benchmarks`: a folder named `benchmarks` in the user's
working directory must not shadow them."""

import functools
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent / "benchmarks"


def asset(*parts: str) -> Path:
    """A file or folder of the installed `benchmarks` package, e.g. asset("presets", "tiny.yaml")."""
    return ROOT.joinpath(*parts)


def read_yaml(*parts: str):
    return yaml.safe_load(asset(*parts).read_text())


@functools.lru_cache(maxsize=None)
def published_data() -> dict:
    """benchmarks/published.yaml (published top-1 per pair and method, with V/R provenance)."""
    return read_yaml("published.yaml")
