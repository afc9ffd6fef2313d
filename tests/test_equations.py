"""The equations of sqlm.py against float64 loops and values worked by hand: the clipped policy
gradient (both clip sides, the dual clip, the normaliser, its logged statistics), GRPO's
advantages and the k3 KL estimator. Pure tensor functions, no model; the same equations through
the real update are in tests/test_update.py."""
import pytest
import torch

import sqlm


# --- the loss against a float64 reference ---------------------------------------------

def reference_loss(logp, old, adv, mask, lo, hi, clip_c):
    """Token by token in float64, straight from the formula."""
    total, count = 0.0, 0.0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            a = float(adv[b])
            r = float(torch.exp(logp[b, t].double() - old[b, t].double()))
            loss = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
            if clip_c and a < 0:
                loss = min(loss, -a * clip_c)
            total += loss
            count += 1
    return total / count


@pytest.mark.parametrize("clip_c", [3.0, None])
def test_clipped_pg_loss_matches_float64_formula(clip_c):
    """Both clip sides, dual clip and masked tokens, against a per-token float64 loop."""
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 9, generator=gen) * 3
    old = logp + torch.randn(6, 9, generator=gen) * 0.8  # ratios far outside [0.8, 1.2], and beyond clip_c
    adv = torch.tensor([2.0, -1.5, 0.5, -0.3, 0.0, 1.0])
    mask = torch.rand(6, 9, generator=gen) > 0.3
    loss, stats = sqlm.clipped_pg_loss(logp, old, adv, mask, 0.2, 0.28, clip_c=clip_c)
    assert abs(loss.item() - reference_loss(logp, old, adv, mask, 0.2, 0.28, clip_c)) < 1e-5
    assert 0 < stats["clip_frac"] < 1


def test_dual_clip_binds_for_negative_advantage():
    """With A < 0 and a huge ratio the loss is capped at -A * clip_c, and its gradient is zero."""
    logp = torch.tensor([[2.0]], requires_grad=True)
    loss, _ = sqlm.clipped_pg_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), clip_c=3.0)
    loss.backward()
    assert loss.item() == pytest.approx(3.0) and logp.grad.item() == 0


def test_loss_gradient_pushes_logp_along_advantage():
    """The sign: a positive advantage must raise the token's log-prob, a negative one lower it."""
    for a in (1.0, -1.0):
        logp = torch.zeros(1, 3, requires_grad=True)
        loss, _ = sqlm.clipped_pg_loss(logp, torch.zeros(1, 3), torch.tensor([a]), torch.ones(1, 3))
        loss.backward()
        assert (torch.sign(-logp.grad) == torch.sign(torch.tensor(a))).all()


def test_normalizer_is_what_divides():
    """An explicit normaliser replaces the micro-batch's own token count."""
    logp, mask = torch.zeros(2, 4), torch.ones(2, 4)
    own, _ = sqlm.clipped_pg_loss(logp, logp, torch.tensor([1.0, 1.0]), mask)
    given, _ = sqlm.clipped_pg_loss(logp, logp, torch.tensor([1.0, 1.0]), mask, normalizer=16)
    assert own.item() == pytest.approx(-1.0) and given.item() == pytest.approx(-0.5)


# --- advantages and KL ----------------------------------------------------------------

def test_grpo_advantages_by_hand():
    """[1,0,0,0]: mean 1/4, unbiased std 1/2 -> [1.5, -0.5, -0.5, -0.5]; an all-equal group gets
    0."""
    adv = sqlm.grpo_advantages([1, 0, 0, 0, 1, 1, 1, 1], group_size=4)
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0]), atol=1e-5)


def test_grpo_advantages_without_std():
    """Dr. GRPO (--adv-norm none): r - mean, no division."""
    adv = sqlm.grpo_advantages([1, 0, 0, 0], group_size=4, norm="none")
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_kl_zero_when_policy_is_reference_and_positive_otherwise():
    """k3 is exactly 0 at pi = pi_ref and > 0 elsewhere (it is a non-negative estimator)."""
    logp = -torch.rand(3, 5)
    mask = torch.ones(3, 5)
    assert sqlm.kl_penalty(logp, logp, mask).item() == 0
    assert sqlm.kl_penalty(logp, logp - 0.3 * torch.rand(3, 5), mask).item() > 0


def test_kl_is_k3_of_the_reference_over_the_policy_by_hand():
    """k3 = exp(d) - d - 1 with d = log pi_ref - log pi, per unmasked token: d = -0.5, 1, 0 give
    e^-0.5 - 0.5 = 0.10653..., e - 2 = 0.71828... and 0; the masked token (d = 3) counts for
    nothing. Other estimators are also 0 at equality and positive elsewhere: k1 (-d) gives 0.5, -1,
    0, the arguments swapped (d = log pi - log pi_ref) give e^0.5 - 1.5 = 0.14872..., e^-1 =
    0.36787..., 0."""
    logp = torch.tensor([[-1.0, -2.0, -0.5, -4.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    per_token = [0.10653065971263342, 0.7182818284590451, 0.0]
    assert sqlm.kl_penalty(logp, ref, mask).item() == pytest.approx(sum(per_token) / 3, rel=1e-6)
    assert sqlm.kl_penalty(logp, ref, mask, normalizer=2).item() == pytest.approx(sum(per_token) / 2, rel=1e-6)


def test_loss_statistics_by_hand():
    """The logged clip_frac, approx_kl and ratio on three tokens with log-ratios 0, 0.5 and 0.1 and
    A = 1: only e^0.5 = 1.6487 leaves [0.8, 1.2] (a ratio of exactly 1 is not clipped), approx_kl is
    the mean of old - new = -0.2, ratio the mean of 1, e^0.5 and e^0.1. A masked token changes none
    of them."""
    logp = torch.tensor([[-1.0, -1.0, -1.0, -3.0]])
    old = torch.tensor([[-1.0, -1.5, -1.1, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    _, stats = sqlm.clipped_pg_loss(logp, old, torch.tensor([1.0]), mask)
    assert stats["clip_frac"] == pytest.approx(1 / 3)
    assert stats["approx_kl"] == pytest.approx(-0.2, rel=1e-6)
    assert stats["ratio"] == pytest.approx((1 + 1.6487212707001282 + 1.1051709180756477) / 3, rel=1e-6)
