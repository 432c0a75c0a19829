"""Issue 18: faithful PAT's gate-only fusion and prompt blocks computed from window sums
(distillers/pat_closed_form.py) equal the official convolutions, block by block and end to end."""

import pytest
import torch

from distillers.pat import PromptBlock
from kdbench.models import StageSpec


@pytest.mark.parametrize("size", [(7, 5), (2, 3), (1, 1)])
@pytest.mark.parametrize("which", ["fuse", "prompt"])
def test_gate_only_blocks_in_closed_form_equal_the_convolutions(size, which):
    """Issue 18: the official (gate-only) fusion and prompt blocks from window sums: same output, same
    gradients to the inputs and to every weight, on maps larger and smaller than the 5x5 kernel."""
    spec = StageSpec("map", 8, size)
    torch.manual_seed(0)
    block = PromptBlock(spec, spec, gate_only=True, with_feedback=True).double()
    for p in block.parameters():                        # non-trivial biases and weights everywhere
        torch.nn.init.normal_(p, std=0.3)
    seq = getattr(block, which)
    parts = [torch.randn(3, 8, *size, dtype=torch.float64, requires_grad=True)
             for _ in range(2 if which == "fuse" else 1)]
    from distillers.pat_closed_form import gated_block
    fast = gated_block(seq, parts)
    slow = seq(torch.cat(parts, 1))
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
    weights = torch.randn_like(slow)
    grads_fast = torch.autograd.grad((fast * weights).sum(), parts + list(seq.parameters()))
    grads_slow = torch.autograd.grad((slow * weights).sum(), parts + list(seq.parameters()))
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_faithful_pat_closed_form_equals_the_official_convolutions(monkeypatch):
    from test_distillers import batch, make
    small = dict(dim=16, heads=2, num_queries=16, faithful=True)
    runs = []
    for closed in (True, False):
        monkeypatch.setattr(PromptBlock, "closed_form", closed)
        d = make("pat", "kdbench_convnext_t_xs", "kdbench_deit_t_xs", **small).train()
        for block in d.prompts.values():
            torch.nn.init.constant_(block.beta, 0.5)     # prompts that change the teacher
        images, labels = batch()
        steps = []
        for _ in range(2):                                # the second step fuses feedback
            out = d(images, labels)
            d.zero_grad()
            sum(out.losses.values()).backward()
            steps.append(({k: v.detach() for k, v in out.losses.items()},
                          {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None}))
        runs.append(steps)
    for (loss_a, grad_a), (loss_b, grad_b) in zip(*runs):
        for k in loss_a:
            torch.testing.assert_close(loss_a[k], loss_b[k], rtol=1e-5, atol=1e-6)
        assert grad_a.keys() == grad_b.keys()
        for n in grad_a:
            torch.testing.assert_close(grad_a[n], grad_b[n], rtol=1e-4, atol=1e-6, msg=n)
