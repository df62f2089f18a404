"""The allocation-free path of perturbed_weights (into_grads) is bit-identical to the plain one."""

import pytest
import torch

from forgetting_sam.optim.functional import perturbed_weights


def groups(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [[(7, 5), (5,)], [(3, 4, 2), (9,)]]
    ws = [[torch.randn(s, generator=g) for s in grp] for grp in shapes]
    hs = [[torch.randn(s, generator=g) for s in grp] for grp in shapes]
    return ws, hs


@pytest.mark.parametrize("form", ["original", "before", "after"])
@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_into_grads_matches_allocating_path_bit_for_bit(form, eta):
    ws, hs = groups(0)
    kw = dict(rho=[0.05, 0.5], adaptive=[False, True], eta=[0.0, eta], form=form)
    ref, ref_norm = perturbed_weights(ws, [[h.clone() for h in grp] for grp in hs], **kw)
    # One gradient is a view (as with DDP's gradient_as_bucket_view): it must not be reused.
    flat = torch.cat([h.reshape(-1) for h in hs[1]])
    hs[1][1] = flat[-9:]
    view_before = hs[1][1].clone()
    out, norm = perturbed_weights(ws, hs, into_grads=True, **kw)
    assert norm == ref_norm
    for got_grp, ref_grp in zip(out, ref):
        for got, want in zip(got_grp, ref_grp):
            assert torch.equal(got, want)
    # The perturbed weights live in the gradients' storage, except for the view.
    assert out[0][0].data_ptr() == hs[0][0].data_ptr() and out[1][0].data_ptr() == hs[1][0].data_ptr()
    assert out[1][1].data_ptr() != hs[1][1].data_ptr() and torch.equal(hs[1][1], view_before)


def test_into_grads_leaves_weights_alone_and_skips_non_finite():
    ws, hs = groups(1)
    w0 = [[w.clone() for w in grp] for grp in ws]
    perturbed_weights(ws, hs, rho=[0.05, 0.05], adaptive=[False, False], eta=[0.0, 0.0], into_grads=True)
    assert all(torch.equal(a, b) for ga, gb in zip(ws, w0) for a, b in zip(ga, gb))
    hs[0][0][0, 0] = float("nan")
    assert perturbed_weights(ws, hs, rho=[0.05, 0.05], adaptive=[False, True], eta=[0.0, 0.0],
                             into_grads=True)[0] is None
