"""Replaying the part of a forward pass before a stage (issue 18: PAT's prompted teacher pass).

A second pass over the same images that changes nothing before stage k (PAT's prompts enter at the
first prompted stage's input) computes the stem and stages 0..k-1 again for nothing. `PrefixReplay`
finds, once per model and stage, the modules that run and finish before stage k's input is formed
(the top-level children and the children of each container on the way to a stage: the stem,
earlier stages, blocks between stages), records their outputs during the first pass and, in the
second, swaps them for stubs that return those outputs. The glue between modules (position
embeddings, concatenations) still runs, on the recorded tensors, so stage k receives exactly the
first pass's input. Only exact for a model whose prefix modules are each called once per forward
and compute the same in both passes (eval mode): `plan` returns None otherwise and nothing is skipped.
"""

import contextlib
from typing import Dict, List, Optional

import torch
from torch import nn


class _Stub(nn.Module):
    """Returns what the replaced module returned in the recorded pass."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


def _candidates(model: nn.Module, stage_names: List[str]) -> List[str]:
    """Top-level children and the children of every container on the path to a stage module."""
    names = [n for n, _ in model.named_children()]
    for stage in stage_names:
        parts = stage.split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            names += [f"{parent}.{n}" for n, _ in model.get_submodule(parent).named_children()]
    return list(dict.fromkeys(names))


class PrefixReplay:
    """Per-model planner of the modules to record and replay before each stage (see the module doc)."""

    def __init__(self, model: nn.Module, stage_names: List[str]):
        self.model, self.stage_names = model, list(stage_names)
        self._plans: Dict[int, Optional[List[str]]] = {}

    def plan(self, stage: int, example: torch.Tensor, run_forward) -> Optional[List[str]]:
        """The modules that finish before stage `stage` starts (call order), or None when replaying
        them would not be exact; probed once by `run_forward` (the pass to replay) on one example
        image, in eval mode without a graph."""
        if stage not in self._plans:
            self._plans[stage] = self._probe(stage, example[:1], run_forward)
        return self._plans[stage]

    def _probe(self, stage: int, example, run_forward) -> Optional[List[str]]:
        names = _candidates(self.model, self.stage_names)
        target = self.stage_names[stage]
        ancestors = {".".join(target.split(".")[:d]) for d in range(1, len(target.split(".")) + 1)}
        events, handles = [], []
        for name in dict.fromkeys(names + [target]):
            module = self.model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: events.append(("start", n))))
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: events.append(("end", n))))
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                run_forward(example)
        finally:
            for m, mode in modes.items():
                m.training = mode
            for h in handles:
                h.remove()
        starts = [i for i, (kind, n) in enumerate(events) if kind == "start" and n == target]
        if len(starts) != 1:
            return None
        before = [n for kind, n in events[:starts[0]] if kind == "end" and n not in ancestors]
        if any(sum(1 for kind, m in events if kind == "start" and m == n) != 1 for n in before):
            return None          # a module called twice (shared weights): not a plain prefix
        # modules nested in another recorded one are covered by it
        return [n for n in before if not any(n.startswith(o + ".") for o in before if o != n)]

    @contextlib.contextmanager
    def record(self, names: List[str]):
        """Within the block, the outputs of `names` are recorded (detached) into the yielded dict."""
        outputs, handles = {}, []
        for name in names:
            def keep(m, a, out, n=name):
                outputs[n] = out.detach() if isinstance(out, torch.Tensor) else out
            handles.append(self.model.get_submodule(name).register_forward_hook(keep))
        try:
            yield outputs
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def replay(self, outputs: Dict[str, object]):
        """Within the block, each recorded module returns its recorded output without computing."""
        swapped = []
        try:
            for name, out in outputs.items():
                parent_name, _, child = name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                swapped.append((parent, child, parent._modules[child]))
                parent._modules[child] = _Stub(out)
            yield
        finally:
            for parent, child, module in reversed(swapped):
                parent._modules[child] = module
