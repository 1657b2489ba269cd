import pandas as pd
import pytest

from cxrguide.errors import CxrGuideError
from cxrguide.evaluation.shortcut_summary import read_runs, summary_rows


def _runs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "variant": ["stage2", "gate", "stage2"],
            "seed": [0, 0, 1],
            "test_accuracy": [0.9, 0.85, 0.8],
            "shortcut_accuracy": [0.1, 0.6, 0.3],
            "minutes": [1.0, 2.0, 1.5],
        }
    )


def test_one_row_per_variant_mean_and_sd_over_seeds():
    head, rows = summary_rows(_runs())
    assert head[:4] == ["variant", "seeds", "test acc", "shortcut_test acc"]
    assert [r[:2] for r in rows] == [["stage2", "2"], ["gate", "1"]]
    assert rows[0][2] == "85.0 ± 5.0" and rows[0][3] == "20.0 ± 10.0"
    assert rows[1][2] == "85.0" and rows[0][head.index("min/run")] == "1.2"
    assert rows[0][head.index("follows marker")] == "n/a"  # a column the runs predate


def test_runs_csv_is_read_from_its_file_or_folder(tmp_path):
    _runs().to_csv(tmp_path / "shortcut_runs.csv", index=False)
    assert len(read_runs(tmp_path)) == 3 == len(read_runs(tmp_path / "shortcut_runs.csv"))
    with pytest.raises(CxrGuideError, match="no \\*_runs.csv"):
        read_runs(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else tmp_path)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(CxrGuideError, match="no 'variant' column"):
        read_runs(tmp_path / "bad.csv")
