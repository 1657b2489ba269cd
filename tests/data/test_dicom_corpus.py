"""pydicom's own bundled test corpus, walked through the reader: codecs installed, no tracebacks.

The files ship inside the pydicom wheel (``pydicom/data/test_files``); pydicom is pinned, so the
counts are exact. Every pixel-bearing single-frame file decodes or is refused with a specific
reason; JPEG Lossless, JPEG-LS, JPEG 2000 and 12-bit JPEG Extended decode (the plugins are
dependencies); the radiograph gate refuses the CT/MR/US/NM... ones by name.
"""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import pytest

from cxrguide.cli import main
from cxrguide.data.imaging import read_image
from cxrguide.errors import ImageReadError

pydicom = pytest.importorskip("pydicom")
CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS} not shipped")

# Codec-dependent files that must decode (one per compressed transfer syntax family).
MUST_DECODE = [
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless (pyjpegls)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPGExtended.dcm",  # JPEG Extended 12-bit (pylibjpeg-libjpeg)
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (pylibjpeg-openjpeg)
    "693_J2KI.dcm",  # JPEG 2000
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG baseline
    "MR_small_RLE.dcm",  # RLE
]
# Deliberately broken files of the corpus, and the reason they are refused with.
BROKEN = {
    "JPEG-lossy.dcm": "cannot decode DICOM JPEG Extended (Process 2 and 4) pixel data (pylibjpeg",
    # its own SIZ declares a 3722445056-pixel-wide image: refused before the codec allocates it
    "JPEG2000-embedded-sequence-delimiter.dcm": "the JPEG 2000 frame is 3722445056x1024 but the "
    "DICOM header says 256x1024 (refused before decoding)",
    "MR_truncated.dcm": "truncated image data",
    "badVR.dcm": "corrupt DICOM data",
}


def _walk(**kwargs) -> tuple[collections.Counter, dict[str, str]]:
    counts: collections.Counter = collections.Counter()
    reasons: dict[str, str] = {}
    for path in sorted(p for p in CORPUS.rglob("*") if p.is_file()):
        try:
            read_image(path, min_side=1, **kwargs)
            counts["decoded"] += 1
        except ImageReadError as err:  # anything else is a traceback and fails the test
            reasons[path.name] = err.reason
            counts[err.reason.split(" (")[0]] += 1
    return counts, reasons


def test_corpus_decodes_or_refuses_with_a_reason():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reader must not leak library warnings either
        counts, reasons = _walk(allow_modality=["all"])
    for name in MUST_DECODE:
        assert name not in reasons, f"{name}: {reasons.get(name)}"
    for name, reason in BROKEN.items():
        assert reasons[name].startswith(reason), reasons[name]
    assert not [r for r in reasons.values() if r.startswith("cannot decode") and "(" not in r]
    assert counts == {
        "decoded": 81,
        "DICOM has no pixel data": 71,  # DICOMDIRs, RT plans, SRs, waveforms
        "not an image file": 10,  # README, JSON, dumps, an ICC profile, a gzip
        "multi-frame DICOM": 7,
        "DICOM has no Rows/Columns": 2,
        "cannot decode DICOM JPEG Extended": 1,
        "the JPEG 2000 frame is 3722445056x1024 but the DICOM header says 256x1024": 1,
        "truncated image data": 1,
        "corrupt DICOM data": 1,
        "unsupported DICOM photometric interpretation PALETTE COLOR": 1,
    }


def test_corpus_radiograph_gate_names_the_modality():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counts, reasons = _walk()
    gated = collections.Counter(
        r.split()[2] for r in reasons.values() if r.startswith("DICOM modality")
    )
    # the gate comes before the codec and frame checks, so broken/multi-frame CT/MR count here
    # Secondary Captures with Modality OT are read (with no_modality), not gated
    assert gated == {"MR": 27, "CT": 14, "RTDOSE": 7, "US": 5, "NM": 4, "SEG": 2}
    assert reasons["CT_small.dcm"] == (
        "DICOM modality CT is not a radiograph (CR/DX/DR/RG); pass --allow-modality CT to read it "
        "anyway"
    )
    assert counts["decoded"] == 31  # 3 CR films, 8 files that state no modality, 20 OT captures
    assert "6154" not in reasons  # a CR film (a lateral one) is read


def test_inspect_over_the_corpus_prints_one_line_per_file_and_nothing_else(capfd):
    files = sorted(str(p) for p in CORPUS.glob("*.dcm"))
    assert main(["inspect", *files, "--allow-modality", "all"]) == 2
    out, err = capfd.readouterr()
    assert err == ""  # no library warnings, no C-level decoder chatter
    assert len(out.splitlines()) == len(files)
