"""The front door: bearer token, Host allow-list, cross-site writes, protective headers."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from cxrguide.serve.app import create_app
from cxrguide.serve.guard import allowed_hosts
from inference_helpers import film

TOKEN = "s3cret-token-0123456789"
LOCAL = "http://localhost"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> bytes:
    return film(tmp_path_factory.mktemp("guard") / "f.png").read_bytes()


@pytest.fixture(scope="module")
def locked(predictor):
    with TestClient(create_app(predictor, token=TOKEN), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def open_client(predictor):
    with TestClient(create_app(predictor), base_url=LOCAL) as c:
        yield c


def _upload(image: bytes) -> dict:
    return {"files": {"file": ("f.png", image, "image/png")}}


def test_every_v1_call_needs_the_token(locked, image):
    for method, path, kw in [
        ("GET", "/v1/model", {}),
        ("GET", "/v1/health", {}),
        ("POST", "/v1/predict", _upload(image)),
    ]:
        r = locked.request(method, path, **kw)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == 'Bearer realm="cxrguide"'
        assert "Authorization: Bearer" in r.json()["detail"]
        r = locked.request(
            method, path, headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"}, **kw
        )
        assert r.status_code == 401 and r.json()["detail"] == "wrong token"
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        r = locked.request(method, path, headers={"Authorization": "Basic " + TOKEN}, **kw)
        assert r.status_code == 401
        r = locked.request(method, path, headers={"Authorization": "bearer " + TOKEN}, **kw)
        assert r.status_code == 200, path
    assert locked.post(
        "/v1/predict", headers={"Authorization": f"Bearer {TOKEN}"}, **_upload(image)
    ).json()["label"]
    # the page and the API description stay open; the description says /v1 needs a bearer
    assert locked.get("/").status_code == 200
    spec = locked.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/predict"]["post"]["security"] == [{"bearer": []}]
    assert (
        locked.get("/v1/model", headers={"Authorization": f"Bearer {TOKEN}"}).json()["auth"]
        == "bearer"
    )


def test_refused_before_the_body_is_read(predictor):
    """A 401 costs the server nothing: the upload is never parsed."""
    app = create_app(predictor, token=TOKEN, max_upload_bytes=100)
    with TestClient(app, base_url=LOCAL) as c:
        r = c.post("/v1/predict", files={"file": ("f.png", b"x" * 10_000, "image/png")})
        assert r.status_code == 401  # not the 413 that reading it would give


def test_host_header_allow_list(open_client):
    """DNS rebinding: a page on attacker.example that resolves to 127.0.0.1 gets 400."""
    for host in (
        "attacker.example",
        "attacker.example:8000",
        "localhost.attacker.example",
        "127.0.0.2",
        "[::2]",
    ):
        r = open_client.get("/v1/health", headers={"Host": host})
        assert r.status_code == 400, host
        assert r.headers["x-frame-options"] == "DENY"
    for host in ("localhost", "LOCALHOST:8000", "127.0.0.1:8000", "[::1]:8000"):
        assert open_client.get("/v1/health", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_add_the_bound_host_and_extras(predictor):
    assert allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]"]
    assert allowed_hosts("0.0.0.0", ["CXR.example.org"])[-1] == "cxr.example.org"
    assert "0.0.0.0" not in allowed_hosts("0.0.0.0") and "[::]" not in allowed_hosts("::")
    assert allowed_hosts("10.1.2.3")[-1] == "10.1.2.3"
    assert allowed_hosts("fe80::1")[-1] == allowed_hosts("[FE80::1]")[-1] == "[fe80::1]"
    hosts = allowed_hosts("0.0.0.0", ["cxr.example.org", "*.lab.example"])
    with TestClient(create_app(predictor, allowed_hosts=hosts), base_url=LOCAL) as c:
        for host, status in [
            ("cxr.example.org", 200),
            ("a.lab.example", 200),
            ("attacker.example", 400),
            ("localhost:1", 200),
        ]:
            assert c.get("/v1/health", headers={"Host": host}).status_code == status, host


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://attacker.example"},
        {"Origin": "http://localhost:3000"},  # another local service's page
        {"Origin": "null"},  # sandboxed frame, file:// page
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://attacker.example"},
    ],
)
def test_cross_site_posts_are_refused(open_client, image, headers):
    r = open_client.post("/v1/predict", headers=headers, **_upload(image))
    assert r.status_code == 403 and "cross-site request refused" in r.json()["detail"]


def test_same_origin_and_non_browser_posts_pass(open_client, image):
    for headers in (
        {},
        {"Origin": LOCAL, "Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
    ):
        assert open_client.post("/v1/predict", headers=headers, **_upload(image)).status_code == 200
    # a cross-site GET of the page (a link) is fine: only writes are refused
    assert open_client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_protective_headers_on_every_response(locked, image):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answers = {
        "page": locked.get("/"),
        "docs": locked.get("/docs"),
        "model": locked.get("/v1/model", headers=auth),
        "result": locked.post("/v1/predict", headers=auth, **_upload(image)),
        "422": locked.post("/v1/predict", headers=auth, files={"file": ("x", b"junk", "a/b")}),
        "401": locked.get("/v1/health"),
        "400": locked.get("/v1/health", headers={"Host": "attacker.example"}),
        "404": locked.get("/nowhere"),
    }
    assert [r.status_code for r in answers.values()] == [200, 200, 200, 200, 422, 401, 400, 404]
    for what, r in answers.items():
        assert r.headers["x-frame-options"] == "DENY", what
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], what
        assert r.headers["x-content-type-options"] == "nosniff", what
        assert "server" not in r.headers, what
    for what in ("model", "result", "422", "401", "400"):
        assert answers[what].headers["cache-control"] == "no-store", what
    page_csp = answers["page"].headers["content-security-policy"]
    assert page_csp.startswith("default-src 'self'") and page_csp.count("frame-ancestors") == 1


def test_a_real_server_sends_no_server_header(live_server):
    r = httpx.get(live_server + "/v1/health", timeout=30)
    assert r.status_code == 200
    assert "server" not in r.headers and r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"


def test_a_real_server_with_a_token(predictor, image, serve):
    with serve(create_app(predictor, token=TOKEN)) as url:
        r = httpx.post(url + "/v1/predict", timeout=60, **_upload(image))
        assert r.status_code == 401 and "server" not in r.headers
        r = httpx.post(
            url + "/v1/predict",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
            **_upload(image),
        )
        assert r.status_code == 200 and r.json()["label"]
        r = httpx.get(url + "/v1/health", headers={"Host": "attacker.example"}, timeout=30)
        assert r.status_code == 400
