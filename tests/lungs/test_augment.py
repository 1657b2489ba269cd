from __future__ import annotations

import torch

from cxrguide.lungs.augment import PairAugment


def _pair(b=4, size=48):
    mask = torch.zeros(b, 1, size, size)
    mask[:, :, 10:38, 6:20] = 1
    mask[:, :, 12:36, 28:42] = 1
    return mask.clone(), mask


def test_image_and_mask_move_together():
    torch.manual_seed(0)
    image, mask = _pair()
    aug_img, aug_mask = PairAugment(rotate=15, zoom=0.15, shift=0.1, contrast=0.0, hflip=True)(
        image, mask
    )
    assert set(aug_mask.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(aug_mask, mask)  # something moved
    agree = ((aug_img >= 0.5) == (aug_mask > 0)).float().mean()
    assert agree > 0.99  # an image equal to its mask stays equal to its mask


def test_zero_strength_is_identity_and_seed_reproducible():
    image, mask = _pair()
    image = image * 0.5 + 0.2
    same = PairAugment(rotate=0, zoom=0, shift=0, contrast=0)(image, mask)
    assert torch.allclose(same[0], image, atol=1e-5) and torch.equal(same[1], mask)
    aug = PairAugment()
    torch.manual_seed(3)
    a = aug(image, mask)
    torch.manual_seed(3)
    b = aug(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_contrast_changes_image_only_and_stays_in_range():
    torch.manual_seed(1)
    image = torch.rand(3, 1, 32, 32)
    mask = (image > 0.5).float()
    out_img, out_mask = PairAugment(rotate=0, zoom=0, shift=0, contrast=0.5)(image, mask)
    assert torch.equal(out_mask, mask) and not torch.allclose(out_img, image)
    assert out_img.min() >= 0 and out_img.max() <= 1
    single = PairAugment()(image[0], mask[0])  # (1, H, W) works too
    assert single[0].shape == (1, 32, 32)
