"""Training curves for the run's metrics file (results.METRICS_FILE): each loss term and the training-batch top-1, averaged over
windows of `every` steps.

A window's sums stay on the device; closed windows are brought to the host once per epoch (and
before a checkpoint), so the loop gains no host sync per step. The open window is part of the
checkpoint, so an interrupted and resumed run writes the same curve as an uninterrupted one.
"""

import math
from typing import Dict, List, Optional

import torch

DEFAULT_POINTS = 50                  # recipe.log_every = 0: at least this many points per run (< 100)


def curve_every(log_every: int, total_steps: int) -> int:
    """Steps per curve point: `log_every`, or for 0 the window that gives DEFAULT_POINTS to twice that."""
    return log_every if log_every > 0 else max(1, total_steps // DEFAULT_POINTS)


def _finite(v: float, digits: int) -> Optional[float]:
    return round(v, digits) if math.isfinite(v) else None


class CurveLog:
    """Rows `{"kind": "train", "step", "epoch", "lr", "loss": {term: mean}, "train_top1"}`, one per
    window of `every` steps; `step` counts the steps done, `epoch` is fractional."""

    def __init__(self, every: int, steps_per_epoch: int):
        self.every, self.steps_per_epoch = every, steps_per_epoch
        self.rows: List[dict] = []
        self._pending: List[tuple] = []            # closed windows not yet on the host
        self._reset()

    def _reset(self):
        self._sums: Dict[str, torch.Tensor] = {}
        self._correct: Optional[torch.Tensor] = None
        self._images, self._steps = 0, 0

    def add(self, steps_done: int, lr: float, losses: Dict[str, torch.Tensor], logits: torch.Tensor,
            targets: torch.Tensor):
        """Account one training step (`steps_done` counts it); closes the window on its last step."""
        for k, v in losses.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k] + v if k in self._sums else v
        if logits is not None and torch.is_tensor(targets):       # classification: the batch's top-1
            labels = targets.argmax(1) if targets.ndim > 1 else targets        # mixed targets: the major class
            hit = (logits.detach().argmax(1) == labels).sum()
            self._correct = hit if self._correct is None else self._correct + hit
            self._images += targets.shape[0]
        self._steps += 1
        if steps_done % self.every == 0:
            means = [self._sums[k] / self._steps for k in self._sums]
            top1 = self._correct.float() * (100.0 / self._images) if self._correct is not None \
                else torch.full_like(means[0], float("nan"))
            vec = torch.stack(means + [top1])
            self._pending.append((steps_done, lr, list(self._sums), vec))
            self._reset()

    def flush(self, dist):
        """Bring the closed windows to the host (averaged over ranks under DDP) as rows."""
        if not self._pending:
            return
        width = {len(keys) for _, _, keys, _ in self._pending}
        vecs = [v for *_, v in self._pending]
        values = torch.stack(vecs) if len(width) == 1 else torch.nn.utils.rnn.pad_sequence(vecs, batch_first=True)
        if dist.active:
            values = dist.all_reduce_(values.clone()) / dist.world_size
        for (step, lr, keys, _), vals in zip(self._pending, values.tolist()):
            self.rows.append({"kind": "train", "step": step, "epoch": round(step / self.steps_per_epoch, 4),
                              "lr": lr, "loss": {k: _finite(v, 6) for k, v in zip(keys, vals)},
                              "train_top1": _finite(vals[len(keys)], 3)})
        self._pending = []

    def state(self) -> dict:
        """For a checkpoint (after `flush`): the rows so far and the open window."""
        return {"rows": self.rows, "sums": self._sums, "correct": self._correct,
                "images": self._images, "steps": self._steps}

    def load_state(self, state: Optional[dict]):
        if not state:                 # a checkpoint written before curves: start them here
            return
        self.rows, self._sums, self._correct = state["rows"], state["sums"], state["correct"]
        self._images, self._steps = state["images"], state["steps"]


def merged_metrics(curve_rows: List[dict], epoch_rows: List[dict]) -> List[dict]:
    """The metrics file's rows in step order; an epoch's evaluation after the training row of its step."""
    return sorted(curve_rows + epoch_rows, key=lambda r: (r["step"], r.get("kind") == "epoch"))
