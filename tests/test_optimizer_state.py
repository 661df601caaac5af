"""The training optimiser (fused AdamW where torch has the kernel) resumes from states the per-tensor loop saved
(checkpoints written before it), AMP grad scaling included."""

from __future__ import annotations

import torch
from torch import nn

from protoseg.train.optimizer import adamw, load_optimizer_state


def _step(net: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    opt.zero_grad()
    loss = net(torch.randn(3, 4)).square().sum()
    if scaler is None:
        loss.backward()
        opt.step()
        return
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def test_a_loop_state_resumes_a_fused_adamw_with_grad_scaling() -> None:
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    old = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
    _step(net, old)
    opt = adamw(list(net.parameters()), 1e-3, 0.01)
    assert opt.param_groups[0]["fused"]  # CPU float parameters: the fused kernel
    load_optimizer_state(opt, old.state_dict())
    assert opt.param_groups[0]["fused"] and opt.param_groups[0]["foreach"] is None  # still fused after loading
    assert torch.equal(opt.state[net.weight]["exp_avg"], old.state[net.weight]["exp_avg"])
    before = net.weight.detach().clone()
    _step(net, opt, torch.amp.GradScaler("cpu", enabled=True))  # loaded as saved, the scaler step asserted
    assert not torch.equal(before, net.weight)


def test_the_loop_where_torch_has_no_fused_kernel(monkeypatch) -> None:
    """torch < 2.4 has no fused CPU AdamW (RuntimeError at construction): training falls back to the loop."""
    real = torch.optim.AdamW

    def no_fused(params, **kw):
        if kw.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt = adamw([nn.Parameter(torch.zeros(2))], 1e-3, 0.0)
    assert not opt.param_groups[0]["fused"]
