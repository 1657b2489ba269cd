"""GAIN pieces and the Stage III wrapper: losses, BatchNorm handling, gradients, switches."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from cxrguide.attention.gain import (
    GainSettings,
    GuidedAttention,
    attention_mining_loss,
    batchnorm_eval,
    batchnorm_with_stats,
    erase,
    external_loss,
    input_gradient_penalty,
    parse_attention,
    record_batch_stats,
    soft_mask,
)
from cxrguide.errors import ConfigError
from cxrguide.models.zoo import create_model


def _batch(n: int = 4, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    lung = torch.zeros(n, 1, size, size)
    lung[:, :, size // 8 : -size // 8, size // 8 : -size // 8] = 1
    return x, torch.arange(n) % 3, lung


def test_soft_mask_erase_and_losses_by_hand():
    cam = torch.tensor([[[[0.0, 0.5], [0.6, 1.0]]]])
    t = soft_mask(cam, sigma=0.5, omega=10)
    assert t[0, 0, 0, 1] == pytest.approx(0.5)
    assert t[0, 0, 1, 1] == pytest.approx(1 / (1 + math.exp(-5)))
    assert t[0, 0, 0, 0] == pytest.approx(1 / (1 + math.exp(5)))
    img = torch.full_like(cam, 0.8)
    assert torch.allclose(erase(img, t), 0.8 * (1 - t))
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    p = torch.softmax(logits, 1)
    assert attention_mining_loss(logits, torch.tensor([0, 2])) == pytest.approx(
        float((p[0, 0] + p[1, 2]) / 2)
    )
    guide = torch.ones_like(cam)
    assert external_loss(cam, guide) == pytest.approx(float(((cam - 1) ** 2).mean()))


def test_parse_attention_and_settings():
    assert parse_attention(["external,gate", " gain "]) == ["gate", "gain", "external"]
    with pytest.raises(ConfigError, match="unknown mechanism.*lungs"):
        parse_attention(["gate,lungs"])
    with pytest.raises(ConfigError, match="at least one"):
        parse_attention([""])
    s = GainSettings.from_names(["gain"], alpha=2.0)
    assert (s.gate, s.gain, s.external, s.alpha) == (False, True, False, 2.0)
    assert not s.needs_lungs and s.needs_cam


def test_batchnorm_eval_restores_modes():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout()).train()
    with batchnorm_eval(net):
        assert not net[1].training and net[2].training
    assert net[1].training


def test_erased_pass_normalises_with_the_clean_batch_statistics():
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)).train()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(4, 1, 8, 8, generator=g), torch.rand(4, 1, 8, 8, generator=g) * 3
    stats: dict = {}
    with record_batch_stats(net, stats):
        net(x1)
    bn = net[1]
    running = (bn.running_mean, bn.running_var)
    before = (bn.running_mean.clone(), bn.running_var.clone())
    h1 = net[0](x1).detach()
    assert torch.allclose(stats[bn][0], h1.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(stats[bn][1], h1.var((0, 2, 3), unbiased=False), atol=1e-6)
    with batchnorm_with_stats(net, stats):
        out = net(x2)
    h2 = net[0](x2)
    expected = (h2 - stats[bn][0].view(1, -1, 1, 1)) / torch.sqrt(
        stats[bn][1].view(1, -1, 1, 1) + bn.eps
    ) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()  # the swapped buffers are not modified in place: backward works
    assert net[0].weight.grad is not None
    assert bn.training and bn.running_mean is running[0] and bn.running_var is running[1]
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])


@pytest.mark.parametrize("erased_bn", ["clean", "eval"])
def test_erased_pass_does_not_touch_batchnorm_statistics(erased_bn):
    base = create_model("mobilenet_v2", "none", seed=0).train()
    plain, guided = copy.deepcopy(base), copy.deepcopy(base)
    x, y, lung = _batch()
    torch.manual_seed(0)
    plain(x, lung)
    torch.manual_seed(0)
    settings = GainSettings(gate=True, gain=True, erased_bn=erased_bn)
    out = GuidedAttention(guided, settings)(x, y, lung)
    assert out["am"] > 0
    for (name, a), b in zip(plain.state_dict().items(), guided.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # running stats as after one ordinary forward
    assert all(m.training for m in guided.modules())


def test_forward_terms_and_gradients():
    model = create_model("mobilenet_v2", "none", seed=0).train()
    net = GuidedAttention(model, GainSettings(gate=True, gain=True, external=True))
    x, y, lung = _batch()
    out = net(x, y, lung)
    assert out["logits"].shape == (4, 3) and out["cam"].shape == (4, 1, 64, 64)
    assert 0 < out["am"] < 1 and out["ext"] > 0
    (out["am"] + out["ext"]).backward()  # the attention terms alone train body and head
    assert any(p.grad.abs().sum() > 0 for p in model.body.parameters() if p.grad is not None)
    assert model.head.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("second_order", [True, False])
def test_second_order_switch_decides_whether_cam_weights_carry_gradient(second_order):
    model = create_model("mobilenet_v2", "none", seed=0).train()
    net = GuidedAttention(
        model, GainSettings(gate=False, gain=False, external=True, second_order=second_order)
    )
    x, y, lung = _batch()
    net(x, y, lung)["ext"].backward()
    head = model.head.fc.weight.grad
    assert (head is not None and head.abs().sum() > 0) == second_order
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.body.parameters())


def test_gate_only_is_the_gated_classifier_and_eval_needs_no_graph():
    model = create_model("mobilenet_v2", "none", seed=0).eval()
    x, y, lung = _batch()
    gate = GuidedAttention(model, GainSettings(gate=True, gain=False))
    assert torch.allclose(gate(x, y, lung)["logits"], model(x, lung))
    with pytest.raises(ValueError, match="lung"):
        gate(x, y, None)
    net = GuidedAttention(model, GainSettings(gate=True, gain=True)).eval()
    with torch.no_grad():  # the engine's validation: Grad-CAM enables gradients itself
        out = net(x, y, lung)
    assert not out["logits"].requires_grad and not out["am"].requires_grad
    assert 0 < out["am"] < 1
    assert all(p.grad is None for p in model.parameters())


def test_frozen_batchnorm_trains_the_network_that_is_evaluated():
    base = create_model("mobilenet_v2", "none", seed=0)
    net = GuidedAttention(base, GainSettings(gate=True, gain=True)).train()  # default: frozen
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert bns and not any(m.training for m in bns) and all(m.training for m in drops)
    before = copy.deepcopy(base.state_dict())
    x, y, lung = _batch()
    out = net(x, y, lung)
    assert 0 < out["am"] < 1 and out["am"].requires_grad
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k  # no running statistic moved
    gate_only = GuidedAttention(base, GainSettings(gate=True, gain=False)).train()
    assert all(m.training for m in gate_only.modules())  # frozen only matters with GAIN
    with pytest.raises(ConfigError, match="gain_bn"):
        GuidedAttention(base, GainSettings(erased_bn="train"))


# --- Right for the Right Reasons (issue 16) ------------------------------------------------


def test_input_gradient_penalty_is_zero_without_gradient_outside_and_positive_with_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g).requires_grad_()
    labels = torch.tensor([0, 1, 2])
    inside = torch.zeros(1, 1, 16, 16)
    inside[..., 4:12, 4:12] = 1
    w = torch.randn(3, 256, generator=g)
    reads_lungs = (x * inside).flatten(1) @ w.T  # d logits / d x is 0 outside
    reads_all = x.flatten(1) @ w.T
    zero = input_gradient_penalty(x, reads_lungs, labels, 1 - inside, create_graph=True)
    assert zero.item() == 0.0
    pos = input_gradient_penalty(x, reads_all, labels, 1 - inside, create_graph=True)
    assert pos.item() > 0
    # it trains: the penalty's gradient reaches the weights (double backward)
    w.requires_grad_()
    loss = input_gradient_penalty(x, x.flatten(1) @ w.T, labels, 1 - inside, create_graph=True)
    (gw,) = torch.autograd.grad(loss, w)
    assert gw.abs().sum() > 0


@pytest.mark.parametrize(("names", "zero"), [(["rrr"], False), (["lung-input", "rrr"], True)])
def test_rrr_term_in_the_wrapper(names, zero):
    """A network that blanks the film outside the grown mask has no gradient there: R is 0."""
    x, y, lung = _batch()
    net = GuidedAttention(
        create_model("mobilenet_v2", "none", seed=0), GainSettings.from_names(names, rrr_weight=1.0)
    )
    out = net.train()(x, y, lung)
    assert (out["rrr"].item() == 0.0) is zero
    assert out["rrr"].item() >= 0 and out["rrr"].requires_grad
    net.eval()
    with torch.no_grad():  # validation: the term without a graph
        assert not net(x, y, lung)["rrr"].requires_grad
