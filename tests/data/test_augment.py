"""The one augmenter: image and mask move together; torch's RNG; identity at zero strength."""

from __future__ import annotations

import torch

from cxrguide.data.augment import CxrAugment


def _blobs(size: int = 48) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[:, 10:38, 6:20] = 1
    mask[:, 12:36, 28:42] = 1
    return mask


def test_a_mask_pixel_lands_where_its_image_pixel_lands():
    aug = CxrAugment(rotate=15, zoom=0.15, shift=0.1, brightness=0, contrast=0, hflip=True)
    mask = _blobs()
    moved = 0
    for seed in range(6):
        torch.manual_seed(seed)
        image, out = aug(mask.clone(), mask.clone())  # an image equal to its mask
        assert out is not None and set(out.unique().tolist()) <= {0.0, 1.0}
        moved += not torch.equal(out, mask)
        assert ((image >= 0.5) == (out > 0)).float().mean() > 0.99
    assert moved >= 5  # the geometry really changed


def test_a_marked_pixel_is_followed_exactly():
    """One bright image pixel and one mask pixel at the same place end up at the same place."""
    aug = CxrAugment(rotate=20, zoom=0.1, shift=0.1, brightness=0, contrast=0, hflip=True)
    image = torch.zeros(1, 41, 41)
    image[0, 12:15, 25:28] = 1.0
    mask = (image > 0).float()
    for seed in range(5):
        torch.manual_seed(seed)
        out_img, out_mask = aug(image, mask)
        peak = torch.nonzero(out_img[0] == out_img[0].max())[0]
        assert out_mask[0, peak[0], peak[1]] == 1
        centre_img = torch.nonzero(out_img[0] > 0.5).float().mean(0)
        centre_mask = torch.nonzero(out_mask[0] > 0).float().mean(0)
        assert torch.allclose(centre_img, centre_mask, atol=1.0)


def test_seeded_by_torch_and_identity_at_zero_strength():
    image = torch.rand(1, 32, 32)
    mask = (image > 0.5).float()
    aug = CxrAugment(rotate=10, zoom=0.1, shift=0.06, brightness=0.2, contrast=0.25)
    torch.manual_seed(3)
    a = aug(image, mask)
    torch.manual_seed(3)
    b = aug(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = aug(image, mask)  # the generator moved on: different draws
    assert not torch.equal(a[0], c[0])
    same = CxrAugment(rotate=0, zoom=0, shift=0, brightness=0, contrast=0)(image, mask)
    assert torch.allclose(same[0], image, atol=1e-6) and torch.equal(same[1], mask)


def test_photometric_changes_image_only_and_stays_in_range():
    torch.manual_seed(1)
    image = torch.rand(1, 32, 32)
    mask = (image > 0.5).float()
    out_img, out_mask = CxrAugment(rotate=0, zoom=0, shift=0, brightness=0.5, contrast=0.5)(
        image, mask
    )
    assert torch.equal(out_mask, mask) and not torch.allclose(out_img, image)
    assert out_img.min() >= 0 and out_img.max() <= 1
    alone, none = CxrAugment()(image)  # classification without masks
    assert none is None and alone.shape == (1, 32, 32)
