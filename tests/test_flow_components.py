"""The flow building blocks: invertibility, log-likelihoods against torch.distributions, maps."""

import math

import pytest
import torch
from adcore.components.flow import (
    all_in_one_flow,
    conv_subnet,
    flow_nll_loss,
    gaussian_log_likelihood,
    log_likelihood_to_anomaly_map,
    mlp_subnet,
    positional_encoding_2d,
)
from adcore.seed import seed_everything


def test_conv_flow_is_invertible_and_alternates_kernels():
    seed_everything(0)
    flow = all_in_one_flow((8, 6, 6), 4, lambda i: conv_subnet(3 if i % 2 == 0 else 1), per_block=True)
    x = torch.randn(2, 8, 6, 6)
    z, log_jac_det = flow(x)
    assert z.shape == x.shape and log_jac_det.shape == (2,)
    restored, _ = flow(z, rev=True)
    torch.testing.assert_close(restored, x, atol=1e-4, rtol=1e-4)
    kernels = [m.kernel_size for m in flow.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (3, 3) in kernels and (1, 1) in kernels


def test_conditional_vector_flow_depends_on_condition():
    seed_everything(0)
    flow = all_in_one_flow((16,), 2, mlp_subnet(2.0), condition_dims=(8,))
    for p in flow.parameters():  # FrEIA initialises the last layer to zero: perturb it
        torch.nn.init.normal_(p, std=0.1) if p.requires_grad else None
    x = torch.randn(5, 16)
    z1, _ = flow(x, c=[torch.zeros(5, 8)])
    z2, _ = flow(x, c=[torch.ones(5, 8)])
    assert not torch.allclose(z1, z2)


def test_same_seed_same_permutations():
    seed_everything(3)
    a = all_in_one_flow((8, 4, 4), 3, conv_subnet())
    seed_everything(3)
    b = all_in_one_flow((8, 4, 4), 3, conv_subnet())
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name


def test_gaussian_log_likelihood_matches_torch_distributions():
    z = torch.randn(3, 5, 4, 4)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(dim=1) / 5
    torch.testing.assert_close(gaussian_log_likelihood(z), expected)
    jac = torch.randn(3, 4, 4)
    torch.testing.assert_close(gaussian_log_likelihood(z, jac), expected + jac / 5)


def test_flow_nll_loss_counts_all_scales():
    z1, z2 = torch.ones(2, 3, 2, 2), torch.zeros(2, 1, 2, 2)
    loss = flow_nll_loss([z1, z2], torch.tensor([1.0, 3.0]))
    # per sample: (0.5 * 12 - jac) / 16
    assert loss.item() == pytest.approx(((6 - 1) / 16 + (6 - 3) / 16) / 2)


def test_positional_encoding_distinguishes_positions_and_rejects_bad_channels():
    encoding = positional_encoding_2d(16, 5, 7)
    assert encoding.shape == (16, 5, 7)
    vectors = encoding.flatten(1).T
    assert torch.cdist(vectors, vectors).add(torch.eye(35)).min() > 1e-3  # every position unique
    assert encoding[0, 0, 0] == 0 and encoding[1, 0, 0] == 1  # sin(0), cos(0)
    assert encoding[0, 2, 3] == pytest.approx(math.sin(3))
    with pytest.raises(ValueError, match="divisible by 4"):
        positional_encoding_2d(6, 2, 2)


def test_anomaly_map_is_high_where_likelihood_is_low():
    low = torch.zeros(1, 4, 4)
    low[0, 1, 2] = -50.0
    for mode in ("nll", "probability"):
        anomaly_map = log_likelihood_to_anomaly_map([low, low[:, ::2, ::2].clone()], (16, 16), mode=mode)
        assert anomaly_map.shape == (1, 1, 16, 16)
        peak = divmod(int(anomaly_map.flatten().argmax()), 16)
        assert 3 <= peak[0] <= 7 and 7 <= peak[1] <= 11
    with pytest.raises(ValueError, match="fusion"):
        log_likelihood_to_anomaly_map([low], (4, 4), fusion="max")
