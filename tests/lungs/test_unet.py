from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrguide.errors import ConfigError
from cxrguide.lungs.unet import DiceBCELoss, LungSegmenter, build_unet, normalize

SMALL = (4, 8, 8, 16, 16, 4)


def test_basicunet_maps_gray_images_to_one_logit_map():
    torch.manual_seed(0)
    model = build_unet("basicunet", SMALL).eval()
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        out = model(x)
        # per-image standardisation: exposure and contrast changes do not change the output
        shifted = model(0.5 * x + 0.2)
    assert isinstance(model, LungSegmenter) and out.shape == (2, 1, 48, 48)
    assert torch.allclose(out, shifted, atol=1e-4)


def test_normalize_is_per_image_and_safe_on_blank_images():
    x = torch.stack([torch.rand(1, 8, 8) * 3 + 1, torch.zeros(1, 8, 8)])
    y = normalize(x)
    assert torch.allclose(y[0].mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(y[0].std(), torch.tensor(1.0), atol=1e-3)
    assert torch.equal(y[1], torch.zeros(1, 8, 8))


def test_dice_bce_loss_ranks_predictions_and_trains():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    loss = DiceBCELoss()
    good, bad = (target * 2 - 1) * 10, (1 - target * 2) * 10
    assert loss(good, target) < 0.01 < 10 < loss(bad, target)
    assert loss(good, target) < DiceBCELoss(bce_weight=0)(torch.zeros_like(target), target)
    logits = torch.zeros_like(target, requires_grad=True)
    loss(logits, target).backward()
    assert (logits.grad[target.bool()] < 0).all() and (logits.grad[~target.bool()] > 0).all()


def test_unknown_arch_is_a_config_error():
    with pytest.raises(ConfigError, match="arch"):
        build_unet("vnet")


def test_smp_unet_offline_and_with_a_local_encoder_file(tmp_path):
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = build_unet("smp", encoder="resnet18", encoder_weights=None)
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    # a 3-channel encoder checkpoint (what ImageNet files are): the stem is summed to 1 channel
    donor = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=1).encoder
    state = {k: v for k, v in donor.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # classifier keys are ignored
    torch.save(state, tmp_path / "r18.pth")
    loaded = build_unet("smp", encoder="resnet18", encoder_weights=str(tmp_path / "r18.pth"))
    stem = loaded.net.encoder.conv1.weight
    assert torch.allclose(stem, donor.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(loaded.net.encoder.layer4[0].conv1.weight, donor.layer4[0].conv1.weight)
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="matches only 0"):
        build_unet("smp", encoder="resnet18", encoder_weights=str(tmp_path / "bad.pth"))
    with pytest.raises(ConfigError, match="not found"):
        build_unet("smp", encoder="resnet18", encoder_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="not an smp encoder"):
        build_unet("smp", encoder="no_such_encoder")


def _old_dice_bce(logits, target, dice_weight=1.0, bce_weight=1.0):
    """The hand-written loss DiceBCELoss replaced (per-image soft Dice + mean BCE), verbatim."""

    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(2, 3))
    denom = p.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    dice = (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
    return dice_weight * dice + bce_weight * F.binary_cross_entropy_with_logits(logits, target)


def test_dice_bce_loss_is_monai_dice_ce_with_the_old_values():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 12, 12, generator=gen) * 3
    target = (torch.rand(3, 1, 12, 12, generator=gen) > 0.6).float()
    target[2] = 0  # an empty mask: the smoothing constants decide its Dice
    for dw, bw in ((1.0, 1.0), (0.3, 2.0), (0.0, 1.0), (1.0, 0.0)):
        new = DiceBCELoss(dw, bw)(logits, target)
        assert torch.allclose(new, _old_dice_bce(logits, target, dw, bw), atol=1e-6), (dw, bw)
    assert type(DiceBCELoss().loss).__name__ == "DiceCELoss"
