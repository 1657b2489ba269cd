"""A cache file reserves its disk space up front: a full disk is an OSError naming the file (a
memory map over a sparse file would die with SIGBUS later), and nothing is left behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_no_space_is_an_os_error_naming_the_cache_file(tmp_path):
    # RLIMIT_FSIZE stands in for a full disk (root ignores permissions; no tmpfs here)
    script = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        from cxrguide.data import cache
        try:
            cache.create(Path({str(tmp_path)!r}) / "cache/images_512.npy", 100, 512)
        except OSError as err:
            print(err.filename)
        print(sorted(p.name for p in (Path({str(tmp_path)!r}) / "cache").iterdir()))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": ":".join(sys.path)},
        check=True,
    ).stdout.split("\n")
    assert out[0] == str(tmp_path / "cache/images_512.npy") and out[1] == "[]"
