"""perturbed_step on a torch.compile'd model: the same result as eager, and no recompilation
after the first step (a recompiling step is what makes compiled SAM slower than eager).

The graphs are compiled with a counting backend that runs them as captured (no Inductor),
so the test sees exactly what Dynamo traces and guards, in well under a second of compile
time."""

import copy

import torch
from torch import nn
from torch.nn import functional as F

from forgetting_sam import ASAM, GSAM, OBF, SAM, perturbed_step


class CountingBackend:
    """A torch.compile backend that counts the graphs Dynamo hands it."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def test_second_step_does_not_recompile_and_matches_eager():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    for make in (lambda p: SAM(p, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
                 lambda p: ASAM(p, torch.optim.SGD, rho=0.5, lr=0.1),
                 lambda p: GSAM(p, torch.optim.SGD, rho=0.05, alpha=0.4, lr=0.1),
                 lambda p: OBF(p, torch.optim.SGD, rho=0.05, lr=0.1)):
        torch._dynamo.reset()
        eager, model = tiny(), tiny()
        backend = CountingBackend()
        compiled = torch.compile(model, backend=backend)
        opt_e, opt_c = make(eager.parameters()), make(model.parameters())
        for step in range(4):
            le = perturbed_step(eager, opt_e, x, y, F.cross_entropy)
            lc = perturbed_step(compiled, opt_c, x, y, F.cross_entropy)
            if step == 0:
                after_first = backend.graphs
            torch.testing.assert_close(lc, le)
        # The ascent pass and the descent pass (BatchNorm statistics frozen) are two graphs,
        # both built in the first step; later steps reuse them.
        assert 1 <= after_first <= 2
        assert backend.graphs == after_first, f"{type(opt_c).__name__} recompiled after the first step"
        for (name, pe), pc in zip(eager.named_parameters(), model.parameters()):
            torch.testing.assert_close(pc, pe, msg=name)
        for be, bc in zip(eager.buffers(), model.buffers()):
            torch.testing.assert_close(bc, be)


def test_eval_between_steps_compiles_once_more_only():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    torch._dynamo.reset()
    backend = CountingBackend()
    model = tiny()
    compiled = torch.compile(model, backend=backend)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    for epoch in range(3):
        perturbed_step(compiled, opt, x, y, F.cross_entropy)
        compiled.eval()
        with torch.no_grad():
            compiled(x)
        compiled.train()
        if epoch == 0:
            after_first = backend.graphs
    assert backend.graphs == after_first
    assert copy.deepcopy(model)(x).shape == (32, 3)
