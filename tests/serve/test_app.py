from __future__ import annotations

import base64
import io
import shutil
import stat
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from cxrguide.data import decode_guard
from cxrguide.inference.predictor import Predictor
from cxrguide.inference.redact import Redactor
from cxrguide.labels import CLASSES
from cxrguide.serve.app import DISCLAIMER, create_app
from inference_helpers import film, gated_run


@pytest.fixture
def systmp(tmp_path, monkeypatch) -> Path:
    """The system temp folder, redirected so a test can see everything written there."""
    root = tmp_path / "systmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def client(predictor, systmp):
    app = create_app(predictor, max_upload_bytes=200_000)
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def _png(tmp_path: Path, name: str = "f.png", **kw) -> bytes:
    return film(tmp_path / name, **kw).read_bytes()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def test_predict_png_matches_the_predictor(client, predictor, tmp_path):
    path = film(tmp_path / "f.png")
    r = client.post("/v1/predict", files={"file": ("f.png", path.read_bytes(), "image/png")})
    assert r.status_code == 200
    body = r.json()
    expected = predictor.predict_file(path)
    assert body["label"] == expected.label and body["label"] in CLASSES
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert body["image"] == {"format": "PNG", "width": 80, "height": 96}
    assert body["run_id"] == predictor.run_id and body["disclaimer"] == DISCLAIMER
    assert body["overlay_png_base64"] is None and body["lung"] is None


def test_overlay_is_a_png_of_the_model_input(client, tmp_path):
    r = client.post(
        "/v1/predict?cam=true&method=gradcam%2B%2B",
        files={"file": ("f.png", _png(tmp_path), "image/png")},
    )
    assert r.status_code == 200 and r.json()["cam_method"] == "gradcam++"
    overlay = Image.open(io.BytesIO(base64.b64decode(r.json()["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (64, 64) and overlay.mode == "RGB"
    rgb = np.asarray(overlay).astype(int)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 30  # coloured heat, not the gray film


def test_format_comes_from_content_and_client_names_are_not_paths(client, tmp_path, systmp):
    data = _png(tmp_path)
    r = client.post("/v1/predict", files={"file": ("../../etc/x.jpg", data, "image/jpeg")})
    assert r.status_code == 200
    assert r.json()["image"]["format"] == "PNG" and r.json()["filename"] == "x.jpg"
    dicom = film(tmp_path / "scan.dcm").read_bytes()
    r = client.post("/v1/predict", files={"file": ("C:\\a\\scan.txt", dicom, "text/plain")})
    assert r.status_code == 200
    assert r.json()["image"]["format"] == "DICOM" and r.json()["filename"] == "scan.txt"
    assert not (tmp_path.parent / "etc").exists()


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        (b"", 422, "empty file"),
        (b"GIF89a not really", 422, "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 422, "cannot use this image"),
    ],
)
def test_bad_images_give_clear_json_errors(client, payload, status, needle):
    r = client.post("/v1/predict", files={"file": ("x.png", payload, "image/png")})
    assert r.status_code == status and needle in r.json()["detail"]


def test_truncated_png(client, tmp_path):
    data = _png(tmp_path, width=200, height=200)
    r = client.post("/v1/predict", files={"file": ("x.png", data[: len(data) // 2], "image/png")})
    assert r.status_code == 422 and "truncated" in r.json()["detail"]


def test_pixel_limit_is_checked_before_decoding(client, monkeypatch):
    """A 50000 x 50000 PNG header: refused from the header (the IDAT is a few bytes)."""

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(decode_guard, "pil_gray", no_decoding)
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 99))
    r = client.post("/v1/predict", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 413 and "too many pixels" in r.json()["detail"]


def test_upload_size_limit(client):
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * 300_000
    r = client.post("/v1/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"]
    just_over = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200_000  # within the multipart slack
    r = client.post("/v1/predict", files={"file": ("big.png", just_over, "image/png")})
    assert r.status_code == 413 and "limit 200,000" in r.json()["detail"]


def test_malformed_requests(client):
    r = client.post("/v1/predict", content=b"abc", headers={"content-type": "image/png"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/v1/predict", data={"note": "no file"})
    assert r.status_code in (400, 415)
    r = client.post("/v1/predict", files={"other": ("a.png", b"x", "image/png")})
    assert r.status_code == 400 and "no file part named 'file'" in r.json()["detail"]
    r = client.post(
        "/v1/predict",
        content=b"--zz\r\ngarbage",
        headers={"content-type": "multipart/form-data; boundary=zz"},
    )
    assert r.status_code == 400 and "no file part" in r.json()["detail"]
    r = client.post(
        "/v1/predict", content=b"--zz\r\n", headers={"content-type": "multipart/form-data"}
    )
    assert r.status_code == 400 and r.json()["detail"].startswith("bad multipart body: Missing")
    r = client.post("/v1/predict?method=scorecam", files={"file": ("a.png", b"x", "image/png")})
    assert r.status_code == 422


def test_nothing_is_written_outside_a_private_temp_folder(predictor, systmp, tmp_path):
    before = set(Path.cwd().iterdir())
    app = create_app(predictor, max_upload_bytes=3_000_000)
    workdir = app.state.workdir
    assert workdir.parent == systmp and stat.S_IMODE(workdir.stat().st_mode) == 0o700
    big = film(tmp_path / "big.png", width=1200, height=1200)  # > 1 MB: would spool to disk
    noisy = np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8)
    Image.fromarray(noisy).save(big)
    assert big.stat().st_size > 1_100_000
    with TestClient(app, base_url="http://localhost") as c:
        for payload in (big.read_bytes(), b"junk"):
            r = c.post("/v1/predict", files={"file": ("../../x.png", payload, "image/png")})
            assert r.status_code in (200, 413, 422)
            assert list(systmp.iterdir()) == [workdir] and list(workdir.iterdir()) == []
    assert not workdir.exists()  # removed at shutdown
    assert set(Path.cwd().iterdir()) == before


def test_health_model_docs_and_page(client, predictor):
    assert client.get("/v1/health").json()["status"] == "ok"
    model = client.get("/v1/model").json()
    assert model["run_id"] == predictor.run_id and model["classes"] == list(CLASSES)
    assert model["backbone"] == "mobilenet_v2" and model["stage"] == 1
    assert model["training_data"]["images"] == 36 and model["limits"]["max_upload_bytes"] == 200_000
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "not a diagnosis" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_concurrent_requests_on_a_live_server(live_server, predictor, tmp_path):
    paths = [film(tmp_path / f"c{i}.png", seed=i) for i in range(6)]
    expected = [predictor.predict_file(p).probabilities for p in paths]

    def post(i: int) -> dict:
        with httpx.Client(base_url=live_server, timeout=120) as http:
            files = {"file": (paths[i].name, paths[i].read_bytes(), "image/png")}
            r = http.post("/v1/predict", files=files, params={"cam": i % 2 == 0})
            r.raise_for_status()
            return r.json()

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    for got, want in zip(results, expected, strict=True):
        assert got["probabilities"] == pytest.approx(want, abs=1e-6)
    assert [r["overlay_png_base64"] is not None for r in results] == [True, False] * 3


def test_gated_run_reports_lung_coverage(tmp_path_factory, tmp_path, systmp):
    app = create_app(Predictor(gated_run(tmp_path_factory), backend="fp32"))
    with TestClient(app, base_url="http://localhost") as c:
        r = c.post("/v1/predict?cam=true", files={"file": ("f.png", _png(tmp_path), "image/png")})
    assert r.status_code == 200
    lung = r.json()["lung"]
    assert lung["quality"] == "ok" and 0.15 < lung["coverage"] < 0.6 and lung["lungs"] == 2
    assert c.app.state.predictor.describe()["lung_model"] == "lungs"


def _walk_strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *_walk_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _walk_strings(v)]
    return [value] if isinstance(value, str) else []


def test_model_card_is_made_once_and_names_no_paths(run, tmp_path, monkeypatch, systmp):
    """/v1/model from a copied run whose manifest names sources by absolute paths: no path in
    the answer, and the answer stays the same once the manifest is gone (never re-read)."""

    info = yaml.safe_load((run / "model.yaml").read_text())
    prep = tmp_path / "secret-study" / "prep"
    shutil.copytree(info["data"], prep)
    table = pd.read_csv(prep / "manifest.csv")
    table["source"] = "/home/jdoe/studies/covid-set"
    table.to_csv(prep / "manifest.csv", index=False)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "model.yaml").write_text(yaml.safe_dump({**info, "data": str(prep)}, sort_keys=False))
    app = create_app(Predictor(copy, backend="fp32"))
    reads = []
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: reads.append(a) or pd.DataFrame())
    with TestClient(app, base_url="http://localhost") as c:
        first = c.get("/v1/model").json()
        (prep / "manifest.csv").unlink()
        assert c.get("/v1/model").json() == first
    assert reads == []
    assert first["training_data"]["images"] == 36
    assert first["training_data"]["sources"] == ["covid-set"]
    assert first["training_data"]["prepared"] == "prep"
    texts = _walk_strings(first)
    assert not [t for t in texts if "/" in t or "\\" in t or "jdoe" in t or "secret" in t]


def test_redacted_file_names_stay_matchable(predictor, tmp_path, systmp):
    data = _png(tmp_path)
    app = create_app(predictor, redact=Redactor("pepper"))
    with TestClient(app, base_url="http://localhost") as c:
        names = []
        for name in ("Doe_John_MRN12345.png", "C:\\PACS\\Doe_John_MRN12345.png", "Roe_Jane.dcm"):
            r = c.post("/v1/predict", files={"file": (name, data, "image/png")})
            assert r.status_code == 200 and "Doe" not in r.text and "MRN" not in r.text
            names.append(r.json()["filename"])
    assert names[0] == names[1] == Redactor("pepper")("Doe_John_MRN12345.png")
    assert names[2] != names[0] and names[2].startswith("file-") and len(names[2]) == 21
    with TestClient(create_app(predictor, redact=Redactor()), base_url="http://localhost") as c:
        r = c.post("/v1/predict", files={"file": ("Doe_John_MRN12345.png", data, "image/png")})
    assert r.json()["filename"] not in names  # no salt given: a random one per server
