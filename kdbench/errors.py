"""Errors a user can cause. The CLI turns these into one line on stderr and exit status 2."""

import difflib


class UsageError(Exception):
    """Bad name, value, file or missing data: the message says what is wrong and what is valid."""


def unknown_choice(kind, name, choices):
    """UsageError for an unknown `name` of `kind`, with a "did you mean" and the valid choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UsageError(f"unknown {kind} '{name}'{hint}; valid choices: {', '.join(choices)}")


def user_error(exc: Exception, where: str, key: str = None) -> UsageError:
    """A config's ValueError (or TypeError), met where user input becomes configs, as a UsageError:
    its one line, led by `where` (the preset section, the --set item) unless it names `key` already."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UsageError(message if key and key in message else f"{where}: {message}")
