"""Output-bias views against per-example Python computations."""

import math

import pytest
import torch

from forgetting_sam.forgetting import (
    OutputBiasRecorder,
    bias_from_uniform,
    mean_prediction,
    per_class_bias,
    perturbed_forgetting,
    prediction_entropy,
)


def softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def test_entropy_mean_prediction_and_bias_against_python():
    torch.manual_seed(0)
    z = torch.randn(7, 4, dtype=torch.float64) * 2
    rows = z.tolist()
    ent = [-sum(p * math.log(p) for p in softmax(r)) for r in rows]
    assert prediction_entropy(z).tolist() == pytest.approx(ent, abs=1e-6)
    mean = [sum(softmax(r)[k] for r in rows) / 7 for k in range(4)]
    assert mean_prediction(z).tolist() == pytest.approx(mean, abs=1e-6)
    overall = sum(sum(r) for r in rows) / 28
    bias = [sum(r[k] for r in rows) / 7 - overall for k in range(4)]
    assert per_class_bias(z).tolist() == pytest.approx(bias, abs=1e-5)
    tv = 0.5 * sum(abs(m - 0.25) for m in mean)
    assert float(bias_from_uniform(z)) == pytest.approx(tv, abs=1e-6)
    assert float(perturbed_forgetting(z, z, torch.zeros(7, dtype=torch.long))["bias_uniform"]) \
        == pytest.approx(tv, abs=1e-6)
    # extremes: uniform logits -> no bias, max entropy; one-hot-ish -> TV = 1 - 1/K
    flat = torch.zeros(3, 4)
    assert float(bias_from_uniform(flat)) == 0
    assert prediction_entropy(flat).tolist() == pytest.approx([math.log(4)] * 3)
    peaked = torch.tensor([[100.0, 0, 0, 0]] * 3)
    assert float(bias_from_uniform(peaked)) == pytest.approx(0.75)


def test_recorder_rows_weighted_by_batch_size():
    torch.manual_seed(1)
    batches = [torch.randn(n, 3) for n in (2, 5, 3, 4, 1)]
    rec = OutputBiasRecorder(3, every=2)
    for b in batches:
        rec.update(b)
    rec.flush()  # the fifth batch alone
    h = rec.history()
    assert h["step"].tolist() == [2, 4, 5]
    assert h["examples"].tolist() == [7, 7, 1]
    for row, group in enumerate((batches[0:2], batches[2:4], batches[4:5])):
        allz = torch.cat(group).double()
        rows = allz.tolist()
        mean = [sum(softmax(r)[k] for r in rows) / len(rows) for k in range(3)]
        assert h["mean_prediction"][row].tolist() == pytest.approx(mean, abs=1e-6)
        ent = sum(-sum(p * math.log(p) for p in softmax(r)) for r in rows) / len(rows)
        assert h["entropy"][row] == pytest.approx(ent, abs=1e-5)
        assert h["entropy_of_mean"][row] == pytest.approx(-sum(m * math.log(m) for m in mean), abs=1e-5)
        assert h["bias_uniform"][row] == pytest.approx(0.5 * sum(abs(m - 1 / 3) for m in mean), abs=1e-6)
        assert h["per_class_bias"][row].tolist() == pytest.approx(per_class_bias(allz).tolist(), abs=1e-5)
    assert h["max_entropy"] == pytest.approx(math.log(3))
    rec.flush()  # nothing new: no row
    assert len(rec.history()["step"]) == 3


def test_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        OutputBiasRecorder(1)
    with pytest.raises(ValueError, match="every"):
        OutputBiasRecorder(3, every=0)
    rec = OutputBiasRecorder(3)
    with pytest.raises(ValueError, match="built for 3"):
        rec.update(torch.randn(2, 4))
    with pytest.raises(ValueError, match="shape"):
        prediction_entropy(torch.randn(4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        per_class_bias([[1.0, 2.0]])
    assert rec.history()["mean_prediction"].shape == (0, 3)
