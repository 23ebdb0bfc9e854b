"""The Turbo objective against a per-pair reference written from the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch

from multiturbo.loss import TurboLoss, info_nce, pair_names, turbo_loss

F64 = torch.float64


# ---------------------------------------------------------------- reference (no code shared with loss.py)
def ref_infonce(x: torch.Tensor, y: torch.Tensor, tau, symmetric: bool) -> torch.Tensor:
    """Paper eq. 2-3 with the mean over i: -1/B sum_i log( exp(s_ii) / sum_j exp(s_ij) ), s = cos / tau."""
    xn = x / torch.sqrt((x * x).sum(1, keepdim=True))
    yn = y / torch.sqrt((y * y).sum(1, keepdim=True))
    s = xn @ yn.T / tau  # [B, B]

    def one_way(s):
        B = s.shape[0]
        return sum(-(s[i, i] - torch.log(torch.exp(s[i]).sum())) for i in range(B)) / B

    return 0.5 * (one_way(s) + one_way(s.T)) if symmetric else one_way(s)


def ref_turbo(views, tau, *, in_modal=True, cross_modal=True, symmetric=True, reduction="sum", wi=1.0, wx=1.0):
    """A python loop over pairs, (modality, pass) order; returns (total, {name: term})."""
    flat = [(m, k, v[k - 1]) for m, v in views.items() for k in range(1, v.shape[0] + 1)]
    terms, total = {}, 0.0
    for a in range(len(flat)):
        for b in range(a + 1, len(flat)):
            (m, k, x), (n, l, y) = flat[a], flat[b]
            if (m == n and in_modal) or (m != n and cross_modal):
                terms[f"{m}{k}~{n}{l}"] = t = ref_infonce(x, y, tau, symmetric)
                total = total + (wi if m == n else wx) * t
    return (total / len(terms) if reduction == "mean" else total), terms


def make_views(M, K, B=5, d=7, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = ["audio", "text", "video"][:M]
    return {m: torch.randn(K, B, d, generator=g, dtype=dtype).requires_grad_() for m in names}


# ---------------------------------------------------------------- equality with the reference
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("tau0", [0.1, 0.0015])  # 1/0.0015: beyond the one-exp range in float64
def test_matches_reference_values_and_gradients(M, K, symmetric, reduction, tau0):
    views = make_views(M, K, seed=M * 10 + K)
    tau = torch.tensor(tau0, dtype=F64, requires_grad=True)
    opts = dict(symmetric=symmetric, reduction=reduction)
    out = turbo_loss(views, temperature=tau, in_modal_weight=0.7, cross_modal_weight=1.3, **opts)
    ref, ref_terms = ref_turbo(views, tau, wi=0.7, wx=1.3, **opts)

    assert list(out.terms) == list(ref_terms)
    for name, t in ref_terms.items():
        torch.testing.assert_close(out.terms[name], t.detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(out.total, ref, rtol=1e-12, atol=1e-10)
    inputs = [*views.values(), tau]
    for g, g_ref in zip(torch.autograd.grad(out.total, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("in_modal, cross_modal", [(True, False), (False, True)])
def test_single_family_matches_reference(in_modal, cross_modal):
    views = make_views(3, 3)
    out = turbo_loss(views, temperature=0.2, in_modal=in_modal, cross_modal=cross_modal)
    ref, ref_terms = ref_turbo(views, 0.2, in_modal=in_modal, cross_modal=cross_modal)
    assert list(out.terms) == list(ref_terms)
    torch.testing.assert_close(out.total, ref, rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(torch.autograd.grad(out.total, list(views.values())),
                        torch.autograd.grad(ref, list(views.values()))):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tau", [0.07, 0.01])  # float32: one-exp path, then the logsumexp path
def test_float32_close_to_float64_reference(tau):
    views = make_views(3, 2, B=64, d=32, dtype=torch.float32)
    out = turbo_loss(views, temperature=tau)
    views64 = {m: v.detach().double().requires_grad_() for m, v in views.items()}
    ref, _ = ref_turbo(views64, tau)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total.double(), ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.total, list(views.values()))
    for g, g_ref in zip(grads, torch.autograd.grad(ref, list(views64.values()))):
        torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-4 * g_ref.abs().max().item())


def test_low_precision_views_are_computed_in_float32():
    views = {m: v.detach().bfloat16().requires_grad_() for m, v in make_views(2, 2, dtype=torch.float32).items()}
    out = turbo_loss(views)
    ref, _ = ref_turbo({m: v.double() for m, v in views.items()}, 0.07)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.total.double(), ref, rtol=1e-5, atol=1e-5)
    out.total.backward()
    assert all(v.grad.dtype == torch.bfloat16 and torch.isfinite(v.grad).all() for v in views.values())


def test_info_nce_matches_reference():
    x, y = torch.randn(6, 4, dtype=F64), torch.randn(6, 4, dtype=F64)
    for symmetric in (True, False):
        torch.testing.assert_close(info_nce(x, y, 0.1, symmetric), ref_infonce(x, y, 0.1, symmetric))
    assert torch.allclose(info_nce(x, y, 0.1, False), turbo_loss({"x": x[None], "y": y[None]}, temperature=0.1,
                                                                 symmetric=False).total)


# ---------------------------------------------------------------- names and counts
def test_paper_eq4_terms():
    names = pair_names(["audio", "text"], 2, True, True)
    assert names == ["audio1~audio2", "audio1~text1", "audio1~text2", "audio2~text1", "audio2~text2", "text1~text2"]
    out = turbo_loss(make_views(2, 2))
    assert list(out.terms) == names
    assert [n for n in names if n.count("audio") == 2 or n.count("text") == 2] == ["audio1~audio2", "text1~text2"]


@pytest.mark.parametrize("M, K", [(1, 3), (2, 1), (2, 3), (3, 2), (3, 4), (4, 2)])
def test_term_counts(M, K):
    mods = [f"m{i}" for i in range(M)]
    assert len(pair_names(mods, K, True, False)) == M * K * (K - 1) // 2
    assert len(pair_names(mods, K, False, True)) == M * (M - 1) // 2 * K * K
    assert len(pair_names(mods, K, True, True)) == M * K * (M * K - 1) // 2


def test_three_modalities_two_passes():
    out = turbo_loss(make_views(3, 2))
    in_modal = [n for n in out.terms if n.split("~")[0][:-1] == n.split("~")[1][:-1]]
    assert in_modal == ["audio1~audio2", "text1~text2", "video1~video2"]
    assert len(out.terms) - len(in_modal) == 12
    assert "text2~video1" in out.terms and "video1~text2" not in out.terms  # dict order = modality order


# ---------------------------------------------------------------- symmetric vs one-directional
def test_symmetric_is_average_of_both_one_directional_orders():
    views = make_views(2, 2)
    K = 2
    sym = turbo_loss(views, symmetric=True).terms
    fwd = turbo_loss(views, symmetric=False).terms
    # reversed modality order and reversed passes: every pair keeps its views but swaps the anchor
    rev = turbo_loss({m: v.flip(0) for m, v in reversed(views.items())}, symmetric=False).terms
    for name in sym:
        (m, k), (n, l) = [(s[:-1], int(s[-1])) for s in name.split("~")]
        swapped = f"{n}{K + 1 - l}~{m}{K + 1 - k}"
        torch.testing.assert_close(sym[name], 0.5 * (fwd[name] + rev[swapped]))
        assert not torch.allclose(sym[name], fwd[name])


# ---------------------------------------------------------------- families, weights, reductions
def test_families_and_weights():
    views = make_views(2, 2)
    terms = turbo_loss(views).terms
    in_sum = terms["audio1~audio2"] + terms["text1~text2"]
    cross_sum = sum(t for n, t in terms.items() if n not in ("audio1~audio2", "text1~text2"))
    torch.testing.assert_close(turbo_loss(views, in_modal_weight=0.0).total, cross_sum)
    torch.testing.assert_close(turbo_loss(views, cross_modal_weight=0.0).total, in_sum)
    torch.testing.assert_close(turbo_loss(views, in_modal_weight=2.0, reduction="mean").total,
                               (2 * in_sum + cross_sum) / 6)
    assert list(turbo_loss(views, in_modal=False).terms) == [n for n in terms if n.split("~")[0][0] != n.split("~")[1][0]]
    assert list(turbo_loss(views, cross_modal=False).terms) == ["audio1~audio2", "text1~text2"]


@pytest.mark.parametrize("views, opts", [
    (make_views(2, 2), dict(in_modal=False, cross_modal=False)),
    (make_views(1, 1), {}),  # one modality, one pass: no pair at all
    (make_views(1, 1, B=1), {}),  # and then B = 1 is not an error
    (make_views(2, 1), dict(cross_modal=False)),
])
def test_no_terms_gives_a_connected_zero(views, opts):
    out = turbo_loss(views, **opts)
    assert out.terms == {} and out.total.item() == 0.0 and out.total.dtype == F64
    out.total.backward()
    assert all(torch.equal(v.grad, torch.zeros_like(v)) for v in views.values())


def test_terms_are_detached_total_is_not():
    out = turbo_loss(make_views(2, 2))
    assert out.total.requires_grad and out.total.ndim == 0
    assert all(t.ndim == 0 and not t.requires_grad for t in out.terms.values())


# ---------------------------------------------------------------- known answers
def test_identical_well_separated_views_give_near_zero():
    B, d = 4, 8
    one_hot = torch.eye(B, d)  # orthogonal rows
    views = {m: one_hot.expand(2, B, d) for m in ("audio", "text")}
    for tau in (0.05, 0.01):  # one-exp and logsumexp paths
        out = turbo_loss(views, temperature=tau)
        assert out.total.item() < 1e-6
        assert out.total.item() == pytest.approx(6 * math.log(1 + (B - 1) * math.exp(-1 / tau)), abs=1e-7)


def test_all_equal_views_give_log_batch_size_per_term():
    B = 8
    views = {m: torch.ones(3, B, 5) for m in ("audio", "text")}
    out = turbo_loss(views)
    assert len(out.terms) == 15
    for t in out.terms.values():
        assert t.item() == pytest.approx(math.log(B), rel=1e-6)
    assert out.total.item() == pytest.approx(15 * math.log(B), rel=1e-6)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("tau", [0.0, -0.1, torch.tensor(0.0), torch.tensor(-1.0), float("nan")])
def test_bad_temperature(tau):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        turbo_loss(make_views(2, 2), temperature=tau)


def test_errors_name_the_culprit():
    with pytest.raises(ValueError, match="InfoNCE needs negatives"):
        turbo_loss(make_views(2, 2, B=1))
    with pytest.raises(ValueError, match=r"same \[K passes, B items, d dims\].*text: \(3, 5, 7\)"):
        turbo_loss({"audio": torch.randn(2, 5, 7), "text": torch.randn(3, 5, 7)})
    with pytest.raises(ValueError, match=r"same .*text: \(2, 4, 7\)"):
        turbo_loss({"audio": torch.randn(2, 5, 7), "text": torch.randn(2, 4, 7)})
    with pytest.raises(ValueError, match=r"same .*text: \(2, 5, 8\)"):
        turbo_loss({"audio": torch.randn(2, 5, 7), "text": torch.randn(2, 5, 8)})
    with pytest.raises(ValueError, match=r"views\['text'\] must be a tensor \[K passes"):
        turbo_loss({"audio": torch.randn(2, 5, 7), "text": torch.randn(5, 7)})
    with pytest.raises(ValueError, match="views is empty"):
        turbo_loss({})
    with pytest.raises(ValueError, match="reduction must be one of"):
        turbo_loss(make_views(2, 2), reduction="max")


# ---------------------------------------------------------------- the module
def test_turbo_loss_module_fixed_temperature_is_a_buffer():
    loss = TurboLoss(temperature=0.1, symmetric=False, reduction="mean")
    assert list(loss.parameters()) == [] and "log_temperature" in dict(loss.named_buffers())
    assert not loss.temperature.requires_grad
    assert "temperature=0.1," in repr(loss)
    views = make_views(2, 2, dtype=torch.float32)
    torch.testing.assert_close(loss(views).total, turbo_loss(views, temperature=0.1, symmetric=False,
                                                             reduction="mean").total)


def test_turbo_loss_module_learnable_temperature():
    loss = TurboLoss(temperature=0.07, learnable=True, min_temperature=0.01)
    assert loss.temperature.item() == pytest.approx(0.07)
    loss(make_views(2, 2, dtype=torch.float32)).total.backward()
    assert loss.log_temperature.grad is not None and loss.log_temperature.grad.item() != 0.0

    with torch.no_grad():
        loss.log_temperature.fill_(math.log(0.001))  # an optimizer step below the bound
    assert loss.temperature.item() == pytest.approx(0.01)
    loss.log_temperature.grad = None
    out = loss(make_views(2, 2, dtype=torch.float32))  # the forward pulls the parameter back to the bound
    torch.testing.assert_close(out.total, turbo_loss(make_views(2, 2, dtype=torch.float32), temperature=0.01).total)
    assert loss.log_temperature.item() == pytest.approx(math.log(0.01))
    out.total.backward()
    assert loss.log_temperature.grad.item() != 0.0  # at the bound the gradient still flows


def test_turbo_loss_module_errors():
    with pytest.raises(TypeError, match="unknown option"):
        TurboLoss(temprature=0.1)
    with pytest.raises(ValueError, match="min_temperature <= temperature"):
        TurboLoss(temperature=0.005)
    with pytest.raises(ValueError, match="reduction must be one of"):
        TurboLoss(reduction="max")
