import math

import pytest
import torch

from lightreasoner import contrast


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_kl_hand_computed():
    kl = contrast.kl_divergence(t(0.5, 0.5), t(0.25, 0.75))
    assert kl.item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75), abs=1e-9)


def test_kl_zero_for_identical_and_positive_otherwise():
    p = torch.softmax(torch.randn(5, 50), -1)
    q = torch.softmax(torch.randn(5, 50), -1)
    assert torch.allclose(contrast.kl_divergence(p, p), torch.zeros(5), atol=1e-6)
    assert (contrast.kl_divergence(p, q) > 0).all()


def test_kl_eps_keeps_zero_amateur_mass_finite():
    kl = contrast.kl_divergence(t(1.0, 0.0), t(0.0, 1.0))
    assert math.isfinite(kl.item()) and kl.item() == pytest.approx(math.log(1 / 1e-12), rel=1e-6)


def test_plausible_mask_threshold_is_inclusive():
    p = t(0.5, 0.3, 0.1, 0.1)
    assert contrast.plausible_mask(p, 0.2).tolist() == [True, True, True, True]  # 0.1 >= 0.2 * 0.5
    assert contrast.plausible_mask(p, 0.25).tolist() == [True, True, False, False]
    assert contrast.plausible_mask(p, 1.0).tolist() == [True, False, False, False]


def test_contrastive_weights_hand_computed():
    pe, pa = t(0.5, 0.3, 0.2), t(0.25, 0.6, 0.15)
    mask = torch.tensor([True, True, False])
    w = contrast.contrastive_weights(pe, pa, mask)
    # scores: log 2 and log 0.5 -> softmax = 2/2.5, 0.5/2.5
    assert w.tolist() == pytest.approx([0.8, 0.2, 0.0], abs=1e-9)


def test_contrast_prefers_tokens_the_amateur_underrates():
    pe, pa = t(0.4, 0.4, 0.2), t(0.1, 0.7, 0.2)
    w = contrast.contrastive_weights(pe, pa, contrast.plausible_mask(pe, 0.2))
    assert w[0] > 0.5 > w[1]  # same expert mass, but the amateur misses token 0


def test_expert_weights_renormalise_over_plausible_set():
    w = contrast.expert_weights(t(0.5, 0.3, 0.2), torch.tensor([True, True, False]))
    assert w.tolist() == pytest.approx([0.625, 0.375, 0.0])


def test_select_steps_beta_and_minus_inf():
    kl = t(0.1, 0.4, 0.7)
    assert contrast.select_steps(kl, 0.4).tolist() == [False, True, True]
    assert contrast.select_steps(kl, -math.inf).all()


def test_soft_label_kl_hand_computed_and_zero_padding():
    target = t(0.8, 0.2, 0.0)
    log_q = t(0.5, 0.25, 0.25).log()
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.25)
    assert contrast.soft_label_kl(target, log_q).item() == pytest.approx(expected)
    assert contrast.soft_label_kl(t(1.0, 0.0), t(0.0, -math.inf)).item() == pytest.approx(0.0)


def test_bf16_inputs_are_upcast():
    p = torch.softmax(torch.randn(3, 10), -1)
    q = torch.softmax(torch.randn(3, 10), -1)
    kl32 = contrast.kl_divergence(p, q)
    kl16 = contrast.kl_divergence(p.bfloat16(), q.bfloat16())
    assert kl16.dtype == torch.float32 and torch.allclose(kl16, kl32, atol=0.05)
