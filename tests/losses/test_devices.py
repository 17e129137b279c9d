"""Every loss gives the same values, gradients and state on CUDA as on CPU (one test for all of them)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from metriclearn.losses import (
    CacheLoss,
    ComplementEntropyLoss,
    NeighborhoodSoftmaxLoss,
    PrototypeLoss,
    SoftNearestNeighborLoss,
)

# name -> (loss factory, batch size, input width, classes, input scale); three steps each, so the
# stateful losses (cache buffers, EMA centroids) are compared after they have been updated
CASES: dict[str, tuple[Callable[[], nn.Module], int, int, int, float]] = {
    "neighborhood-sqeuclidean": (lambda: NeighborhoodSoftmaxLoss(0.5, "sqeuclidean"), 300, 16, 9, 1.0),
    "neighborhood-cosine": (lambda: NeighborhoodSoftmaxLoss(0.5, "cosine"), 300, 16, 9, 1.0),
    "snn": (lambda: SoftNearestNeighborLoss(0.5), 64, 16, 8, 1.0),
    "cache": (lambda: CacheLoss(16, size=64), 32, 16, 6, 1.0),
    "complement": (lambda: ComplementEntropyLoss(10), 64, 10, 10, 3.0),
    "prototype-learned": (lambda: PrototypeLoss(5, 8, mode="learned"), 32, 8, 5, 1.0),
    "prototype-ema": (lambda: PrototypeLoss(5, 8, mode="ema", repulsion=0.1), 32, 8, 5, 1.0),
    "prototype-batch": (lambda: PrototypeLoss(5, 8, mode="batch"), 32, 8, 5, 1.0),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_matches_cpu(case: str) -> None:
    make, b, d, k, scale = CASES[case]
    cpu = make()
    gpu = make().cuda()
    gpu.load_state_dict(cpu.state_dict())
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        x = torch.randn(b, d, generator=gen) * scale
        y = torch.randint(0, k, (b,), generator=gen)
        ids = torch.arange(step * b, (step + 1) * b)
        x_cpu, x_gpu = x.clone().requires_grad_(True), x.cuda().requires_grad_(True)
        expected, got = cpu(x_cpu, y, ids), gpu(x_gpu, y.cuda(), ids.cuda())
        expected.backward()
        got.backward()
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=1e-3, atol=1e-5)
    gpu_state = gpu.state_dict()
    for name, value in cpu.state_dict().items():  # cache slots, write pointer, EMA / learned centroids
        torch.testing.assert_close(gpu_state[name].cpu(), value, rtol=1e-4, atol=1e-5, msg=name)
