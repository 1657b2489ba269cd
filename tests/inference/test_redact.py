"""--redact-paths: a salted hash per file name; same name and salt, same hash."""

from __future__ import annotations

import hashlib
import hmac
import re

from cxrguide.inference.redact import SALT_ENV, Redactor, redactor


def test_the_hash_is_hmac_sha256_of_the_name_under_the_salt(monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    r = Redactor("pepper")
    name = "scans/Doe_John_MRN12345.dcm"
    want = hmac.new(b"pepper", name.encode(), hashlib.sha256).hexdigest()[:16]
    assert r(name) == "file-" + want and re.fullmatch(r"file-[0-9a-f]{16}", r(name))
    assert r(name) == Redactor("pepper")(name) and r.salted
    assert Redactor("salt2")(name) != r(name) and r("scans/Roe_Jane.dcm") != r(name)


def test_salt_from_the_environment_else_random_per_instance(monkeypatch):
    monkeypatch.setenv(SALT_ENV, "from-env")
    assert Redactor()("a.png") == Redactor("from-env")("a.png")
    assert Redactor("flag")("a.png") == Redactor("flag")("a.png") != Redactor()("a.png")
    monkeypatch.delenv(SALT_ENV)
    one, two = Redactor(), Redactor()
    assert not one.salted and one("a.png") == one("a.png") != two("a.png")
    assert redactor(False, "x") is None and redactor(True, "x")("a.png") == Redactor("x")("a.png")
