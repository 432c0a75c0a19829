"""Typed requests of the commands that scripts call (`bench`, `plan`, `leaderboard`): dataclasses
whose fields are the commands' options, so a script builds one instead of an argv or a fake
argparse namespace. `from_args` is the one place an argparse namespace becomes a request."""

import dataclasses
from typing import Type, TypeVar

R = TypeVar("R")


def from_args(cls: Type[R], args) -> R:
    """A request from a parsed command line: each field from the option of its name (lists as tuples);
    options the request does not have are left out."""
    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)
