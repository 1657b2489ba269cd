import pytest
import torch
import torch.nn.functional as F

from cxrguide.models.grid import area_matrix, feature_stages, mask_to_grid
from cxrguide.models.zoo import create_model


@pytest.mark.parametrize(("n_in", "n_out"), [(64, 2), (224, 7), (299, 8), (300, 10), (13, 5)])
def test_area_matrix_equals_area_interpolation(n_in, n_out):
    a_rows, a_cols = area_matrix(n_in, n_out), area_matrix(n_in + 3, n_out + 1)
    mask = (torch.rand(2, 1, n_in, n_in + 3) > 0.5).float()
    expected = F.interpolate(mask, size=(n_out, n_out + 1), mode="area")
    torch.testing.assert_close(a_rows @ mask @ a_cols.T, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(a_rows.sum(1), torch.ones(n_out))


@pytest.mark.parametrize(("side", "grid"), [(64, (2, 2)), (224, (7, 7)), (64, (64, 64))])
def test_mask_to_grid_is_bit_identical_to_area_interpolation_where_the_grid_divides(side, grid):
    mask = torch.rand(3, 1, side, side, generator=torch.Generator().manual_seed(side))
    assert torch.equal(mask_to_grid(mask, grid), F.interpolate(mask, size=grid, mode="area"))


@pytest.mark.parametrize(("side", "grid"), [(299, (8, 8)), (64, (3, 5))])
def test_mask_to_grid_matches_area_interpolation_elsewhere(side, grid):
    mask = torch.rand(2, 1, side, side, generator=torch.Generator().manual_seed(1))
    out = mask_to_grid(mask, grid)
    assert out.shape == (2, 1, *grid)
    torch.testing.assert_close(out, F.interpolate(mask, size=grid, mode="area"), atol=2e-6, rtol=0)


def test_feature_stages_reads_timm_feature_info_up_to_a_stride():
    body = create_model("mobilenet_v2", "none", seed=0).body
    stages = feature_stages(body, 16)
    assert [s.reduction for s in stages] == [2, 4, 8, 16]
    assert [s.channels for s in stages] == [16, 24, 32, 96]
    modules = dict(body.named_modules())
    assert all(modules[s.name] is s.module for s in stages)
    assert [s.reduction for s in feature_stages(body, 8)] == [2, 4, 8]
    assert feature_stages(torch.nn.Linear(2, 2), 32) == []
