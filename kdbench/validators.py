"""Shared helpers of the config dataclasses: value checks and field markers.

Checks raise ValueError with one line in one wording, "bad value 0 for recipe.epochs: must be an
integer >= 1", where the key is what the user types (`recipe.epochs`, `distiller.temperature`).
Configs only raise; where user input becomes configs (config.build, config.apply_overrides,
grid.distiller_config) the ValueError becomes a UsageError, which the CLI prints as exit status 2.

This module imports nothing from kdbench, so every config module (data included) can use it.
"""

import dataclasses
from typing import Iterable

OPT_IN = "opt_in"      # field metadata key: True = left out of the hash while at its default
HASHED = "hashed"   # field metadata key: False = left out of the run's hash and record config


def check(ok: bool, key: str, value, valid: str):
    """The one error of every config check: `valid` completes "must be ..."."""
    if not ok:
        raise ValueError(f"bad value {value!r} for {key}: must be {valid}")


def positive(key: str, value):
    check(value > 0, key, value, "> 0")


def non_negative(key: str, value):
    check(value >= 0, key, value, ">= 0")


def at_least(key: str, value, lo: int):
    """An integer count such as epochs or channels."""
    check(value >= lo, key, value, f"an integer >= {lo}")


def in_range(key: str, value, lo, hi, *, hi_open: bool = False):
    """lo <= value <= hi, or lo <= value < hi with `hi_open`."""
    ok = lo <= value < hi if hi_open else lo <= value <= hi
    check(ok, key, value, f"in [{lo}, {hi}{')' if hi_open else ']'}")


def _choices(choices) -> str:
    choices = [str(c) for c in choices]
    return " or ".join(choices) if len(choices) <= 2 else "one of " + ", ".join(choices)


def one_of(key: str, value, choices: Iterable):
    choices = tuple(choices)
    check(value in choices, key, value, _choices(choices))


def subset_of(key: str, values: Iterable, choices: Iterable):
    """Every item of `values` is a valid choice; the error names the first bad one."""
    choices = tuple(choices)
    for v in values:
        if v not in choices:
            raise ValueError(f"bad value {v!r} in {key}: must be {_choices(choices)}")


# -- field markers ----------------------------------------------------------------------------
def unhashed(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING):
    """A field that does not change a run's result (where files live, loader workers): it is left
    out of `RunConfig.to_dict()` and so of the config hash, but kept by `to_dict(full=True)`."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={HASHED: False})


def opt_in(default):
    """A switch added after runs were recorded: at its default it is left out of
    `RunConfig.to_dict()` (so those runs keep their hashes and resume); set to anything else it is
    recorded and hashed like any field. `to_dict(full=True)` always keeps it."""
    return dataclasses.field(default=default, metadata={OPT_IN: True})


def is_hashed(f: dataclasses.Field) -> bool:
    return f.metadata.get(HASHED, True)


def omitted_at_default(f: dataclasses.Field, value) -> bool:
    """An `opt_in` field at its default: left out of the hashed config."""
    return f.metadata.get(OPT_IN, False) and value == f.default
