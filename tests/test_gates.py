import math

import pytest
import torch

from model.gates import HardConcreteGate


def test_eval_gates_deterministic_and_in_unit_interval():
    gate = HardConcreteGate(8)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.linspace(-6, 6, 8))
    gate.eval()
    a, b = gate(5), gate(5)
    assert a.shape == (1, 8)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert a[0, 0] == 0.0 and a[0, -1] == 1.0  # stretched and clamped: exact zeros and ones occur


def test_training_samples_shapes_and_range():
    per_example = HardConcreteGate(4, per_example=True).train()
    per_batch = HardConcreteGate(4, per_example=False).train()
    assert per_example(7).shape == (7, 4)
    assert per_batch(7).shape == (1, 4)
    z = per_example(10000)
    assert z.min() >= 0 and z.max() <= 1
    assert not torch.equal(per_example(3), per_example(3))  # noisy


def test_expected_l0_closed_form_and_monotone():
    gate = HardConcreteGate(5, beta=0.33, gamma=-0.1, zeta=1.1)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]))
    p = gate.p_open()
    expected = torch.sigmoid(gate.log_alpha - 0.33 * math.log(0.1 / 1.1))
    assert torch.allclose(p, expected)
    assert torch.all(p[1:] > p[:-1])


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.5])
def test_p_open_matches_sampling_frequency(log_alpha):
    """P(z != 0) in closed form equals the frequency of non-zero training samples."""
    gate = HardConcreteGate(1, init_log_alpha=log_alpha).train()
    z = gate(200_000)
    freq = (z > 0).float().mean()
    assert abs(float(freq) - float(gate.p_open().detach())) < 0.01


def test_gradient_reaches_log_alpha_through_samples_and_penalty():
    gate = HardConcreteGate(3).train()
    gate(16).sum().backward()
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0
    gate.log_alpha.grad = None
    gate.p_open().sum().backward()
    assert torch.all(gate.log_alpha.grad > 0)
