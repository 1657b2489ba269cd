"""The report's table and number formats, shared by the report and its sections."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Table:
    id: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""

    @property
    def text_cols(self) -> list[bool]:
        """Per column: words (left-aligned) rather than numbers (right-aligned)."""

        def number(c: str) -> bool:
            return c in ("", "n/a") or c[0].isdigit() or (c[0] in "-+." and c[1:2].isdigit())

        return [
            not all(number(r[i]) for r in self.rows if i < len(r)) for i in range(len(self.header))
        ]


def pct(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.1f}"


def with_ci(v: float | None, ci: list[float] | None) -> str:
    return pct(v) + (f" [{pct(ci[0])}, {pct(ci[1])}]" if ci and v is not None else "")
