"""The project's data files (presets, pair sets, published numbers): the repository's benchmarks/
folder, installed as the package data `kdbench.benchmarks` (pyproject.toml maps it) and found through
importlib.resources, never through `import benchmarks`: a folder named `benchmarks` in the user's
working directory cannot shadow them, and no top-level `benchmarks` package is installed."""

import functools
import importlib.resources
from pathlib import Path

import yaml



def _root() -> Path:
    try:
        return Path(str(importlib.resources.files("kdbench.benchmarks")))
    except ModuleNotFoundError:          # a source checkout that is not installed: the folder beside kdbench/
        return Path(__file__).resolve().parent.parent / "benchmarks"


ROOT = _root()


def asset(*parts: str) -> Path:
    """A file or folder of kdbench's assets (the repository's benchmarks/), e.g. asset("presets", "tiny.yaml")."""
    return ROOT.joinpath(*parts)


def read_yaml(*parts: str):
    return yaml.safe_load(asset(*parts).read_text())


@functools.lru_cache(maxsize=None)
def published_data() -> dict:
    """benchmarks/published.yaml (published top-1 per pair and method, with V/R provenance)."""
    return read_yaml("published.yaml")
