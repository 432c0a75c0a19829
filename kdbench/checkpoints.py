"""Released teacher checkpoints: every layout the anchors release or write, read without running code.

Layouts: a bare state dict; a dict holding it under `state_dict` / `model` (timm's CheckpointSaver
also stores `optimizer`, `epoch`, `arch`, `version`, `metric`, `amp_scaler` and `args`, an
`argparse.Namespace`) with EMA weights under `state_dict_ema` / `model_ema`; keys prefixed by
DataParallel/DDP (`module.`) or torch.compile (`_orig_mod.`); safetensors files. Pickled files are
read with `torch.load(weights_only=True)` and an explicit allow-list of harmless globals; anything
else is refused, naming the global, before a byte of it is unpickled into an object.
"""

import argparse
import pickle
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import UsageError

# What timm 0.6.x CheckpointSaver files (OFA-KD's and PAT's teachers) hold besides tensors and
# builtins: the training script's argparse.Namespace, and numpy scalars in `metric` or `args`.
_NP_CORE = getattr(np, "_core", None) or np.core          # numpy 2 renamed np.core
SAFE_GLOBALS = (argparse.Namespace, np.dtype, _NP_CORE.multiarray.scalar, type(np.dtype(np.float64)),
                type(np.dtype(np.float32)), type(np.dtype(np.int64)))
WEIGHT_KEYS = ("state_dict", "model")
EMA_KEYS = ("state_dict_ema", "model_ema")
PREFIXES = ("module.", "_orig_mod.")


def read_weights(path: Path, *, use_ema: bool = False) -> Tuple[Dict[str, torch.Tensor], str]:
    """(state dict, where in the file it came from) of a checkpoint file.

    `use_ema` picks the EMA weights when the file has them (OFA's `--use-ema-teacher`), else the
    plain weights, as timm's `load_checkpoint` does. Raises UsageError naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"teacher checkpoint {path} not found")
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path)
    state, source = _select(raw, use_ema, path)
    return _strip_prefixes(state), source


def _read_safetensors(path: Path):
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"teacher checkpoint {path} is unreadable: not a complete safetensors file "
                         f"({_first_line(exc)})") from None


def _read_pickle(path: Path):
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)   # never unpickles code
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UsageError(f"teacher checkpoint {path} is unreadable: it needs the global "
                             f"'{unsafe[0]}', which kdbench does not load (allowed besides tensors and "
                             f"builtins: {', '.join(_name(g) for g in SAFE_GLOBALS[:3])})") from None
        raise UsageError(f"teacher checkpoint {path} is unreadable: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - truncated zips and garbage raise many types
        raise UsageError(f"teacher checkpoint {path} is unreadable: not a complete torch checkpoint "
                         f"({exc.__class__.__name__}: {_first_line(exc)})") from None


def _unsafe_globals(path: Path):
    """Globals the file would import, beyond the allow-list (read from the pickle opcodes only)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - legacy (non-zip) format: no opcode scan available
        return []
    allowed = {_name(g) for g in SAFE_GLOBALS}
    # torch lists them in set order; name the most telling one first (a module's over a builtin)
    return sorted((g for g in found if g not in allowed), key=lambda g: (g.startswith("builtins."), g))


def _select(raw, use_ema: bool, path: Path):
    if not isinstance(raw, dict):
        raise UsageError(f"teacher checkpoint {path} holds a {type(raw).__name__}, not a state dict")
    for key in (EMA_KEYS if use_ema else ()) + WEIGHT_KEYS:
        if isinstance(raw.get(key), dict):
            state, source = raw[key], key
            break
    else:
        state, source = raw, "file"
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        keys = ", ".join(sorted(map(str, raw))[:8])
        raise UsageError(f"teacher checkpoint {path} has no state dict (keys: {keys}); expected a state dict "
                         f"or one under {', '.join(WEIGHT_KEYS + EMA_KEYS)}")
    return state, source


def _strip_prefixes(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else exc.__class__.__name__
