import pytest

from cxrguide.serve.upload import safe_name


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\films\\chest.dcm", "chest.dcm"),
        ("a\x00b\nc.png", "abc.png"),
        ("x" * 300, "x" * 120),
        ("", None),
        (None, None),
        ("dir/", None),
    ],
)
def test_safe_name_keeps_a_printable_last_component(name, shown):
    assert safe_name(name) == shown
