"""Grad-CAM in the film's own geometry: the letterbox undone (unfit_square), the film's rows and
columns, the heat where the model's square put it."""

from __future__ import annotations

import numpy as np
import pytest

from cxrguide.data.imaging import fit_square, unfit_square
from cxrguide.inference.film_cam import film_overlay
from cxrguide.inference.predictor import Predictor
from inference_helpers import film, study_film, tiny_run


@pytest.mark.parametrize("shape", [(50, 80), (96, 80), (64, 64)])
def test_unfit_square_inverts_fit_square(shape):
    h, w = shape
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    assert np.array_equal(unfit_square(fit_square(img, max(h, w)), h, w), img)  # no resize: exact
    box = np.zeros(shape, np.float32)
    box[h // 4 : h // 2, w // 2 : 3 * w // 4] = 1.0
    back = unfit_square(fit_square(box, 32), h, w)  # shrunk, then enlarged back
    assert back.shape == shape and back.dtype == np.float32
    assert np.abs(back - box).mean() < 0.08 and back[box == 1].mean() > 0.6
    mask = unfit_square(fit_square(box > 0, 32, mask=True), h, w, mask=True)
    assert mask.dtype == np.bool_ and (mask != (box > 0)).mean() < 0.05


def test_unfit_square_refuses_what_is_not_a_square():
    with pytest.raises(ValueError, match="square"):
        unfit_square(np.zeros((4, 5)), 4, 5)


def test_film_overlay_puts_the_heat_where_the_square_had_it():
    film_gray = np.full((60, 120), 0.5, np.float32)  # wide film: padded above and below
    heat = np.zeros((40, 40), np.float32)
    heat[10:20, 30:40] = 1.0  # square rows 10-20 = film rows 0-30, cols 30-40 = its right quarter
    lungs = np.zeros((40, 40), bool)
    lungs[12:18, 5:15] = True
    rgb = film_overlay(film_gray, heat, lungs)
    assert rgb.shape == (60, 120, 3) and rgb.dtype == np.uint8
    red_minus_blue = rgb[..., 0].astype(int) - rgb[..., 2].astype(int)
    assert red_minus_blue[2:25, 95:].mean() > 60 and red_minus_blue[35:, :60].mean() < -60
    contour = np.all(rgb == (255, 0, 255), axis=-1)
    rows, cols = np.nonzero(contour)
    assert contour.sum() > 20 and rows.min() >= 5 and rows.max() <= 25 and cols.max() < 50


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor(tiny_run(tmp_path_factory), backend="fp32")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["wide.png", "tall.dcm"])
def test_film_cam_has_the_films_rows_and_columns(predictor, tmp_path, name):
    width, height = (120, 72) if name.startswith("wide") else (80, 150)
    path = (study_film if name.endswith(".dcm") else film)(tmp_path / name, width, height)
    prediction = predictor.predict_file(path)
    rgb = predictor.film_cam(prediction)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    square = predictor.cam(prediction)  # the model-side overlay stays what it was
    assert square.shape == (predictor.size, predictor.size, 3)
