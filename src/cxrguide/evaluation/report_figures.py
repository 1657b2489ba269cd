"""Figures of the HTML report, rendered with matplotlib (Agg, no pyplot state) to base64 PNG.

Embedding every figure as a ``data:`` URI keeps the report one file that opens offline and can
be mailed or archived as is.
"""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrguide.files import atomic_open
from cxrguide.labels import CLASSES

CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#d62728")


def png_b64(path: Path) -> str:
    """``data:`` URI of a PNG file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def fig_b64(fig: Any) -> str:
    """``data:`` URI of a matplotlib Figure (saved at its own dpi)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _confusion(ax: Any, matrix: list[list[int]], title: str) -> None:
    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{100 * share[i, j]:.0f}%",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(len(CLASSES)), CLASSES, fontsize=8)
    ax.set_yticks(range(len(CLASSES)), CLASSES, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)


def _roc(ax: Any, predictions: pd.DataFrame, title: str) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    y = predictions["true"].to_numpy()
    for k, name in enumerate(CLASSES):
        positive = y == name
        if positive.all() or not positive.any():
            continue
        score = predictions[f"p_{name}"].to_numpy(float)
        fpr, tpr, _ = roc_curve(positive, score)
        auc = roc_auc_score(positive, score)
        ax.plot(fpr, tpr, color=CLASS_COLORS[k], label=f"{name} (AUC {auc:.2f})")
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")


def _curves(ax: Any, history: pd.DataFrame) -> None:
    epoch = history["epoch"] if "epoch" in history else np.arange(1, len(history) + 1)
    marker = "o" if len(history) < 3 else None
    for col, style in (("train_loss", "-"), ("val_loss", "--")):
        if col in history:
            ax.plot(epoch, history[col], style, color="#444444", marker=marker, label=col)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if len(history) <= 12:
        ax.set_xticks(list(epoch))
        ax.set_xlim(min(epoch) - 0.5, max(epoch) + 0.5)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc = ax.twinx()
    for col, style in (("train_acc", "-"), ("val_acc", "--")):
        if col in history:
            acc.plot(epoch, history[col], style, color="#1a7f37", marker=marker, label=col)
    acc.set_ylim(0, 1)
    acc.set_ylabel("accuracy", color="#1a7f37")
    lines = ax.get_lines() + acc.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="center right")
    ax.set_title("training curves", fontsize=10)


def run_figure(
    label: str,
    matrix: list[list[int]] | None,
    predictions: pd.DataFrame | None,
    history: pd.DataFrame | None,
    split: str,
) -> str | None:
    """One row of panels for a run: confusion matrix, ROC curves, training curves."""
    from matplotlib.figure import Figure

    panels = [
        p
        for p, ok in (
            ("cm", matrix is not None),
            ("roc", predictions is not None),
            ("hist", history is not None and len(history) > 0),
        )
        if ok
    ]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.8), dpi=90)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, kind in zip(axes, panels, strict=True):
        if kind == "cm":
            _confusion(ax, matrix, f"confusion ({split})")
        elif kind == "roc":
            _roc(ax, predictions, f"ROC one-vs-rest ({split})")
        else:
            _curves(ax, history)
    fig.suptitle(label, fontsize=11)
    fig.tight_layout()
    return fig_b64(fig)


def render_grid(
    cells: list[list[tuple[np.ndarray, str, str] | np.ndarray | None]],
    path: Path,
    *,
    title: str,
    caption: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str] | None = None,
    cell: float = 2.3,
) -> Path:
    """A PNG grid of RGB images; a ``(rgb, text, color)`` cell is titled ``text`` in
    ``color``; ``None`` cells read "none". Column labels sit in bold above the first row.
    Images are drawn with nearest-neighbour sampling so the magenta contour keeps its exact
    colour (and stays findable in the PNG)."""
    from matplotlib.figure import Figure

    rows, cols = len(cells), max(len(r) for r in cells)
    width = max(cols * cell + 0.9, 4.6)
    title_lines = textwrap.wrap(title, int(width * 11)) or [""]
    caption_lines = textwrap.wrap(caption, int(width * 15))
    top, bottom = 0.2 + 0.2 * len(title_lines), 0.15 + 0.14 * len(caption_lines)
    height = rows * (cell + 0.45) + top + bottom
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, row in enumerate(cells):
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            item = row[j] if j < len(row) else None
            if isinstance(item, tuple):
                ax.imshow(item[0], interpolation="nearest")
                ax.set_title(item[1], fontsize=9, color=item[2])
            elif isinstance(item, np.ndarray):
                ax.imshow(item, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "none", ha="center", va="center", color="gray")
                for spine in ax.spines.values():
                    spine.set_color("#dddddd")
            if i == 0 and col_labels is not None:  # bold column head above the prediction
                ax.annotate(
                    col_labels[j],
                    (0.5, 1.0),
                    xycoords="axes fraction",
                    xytext=(0, 19 if ax.get_title() else 5),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=9,
                    fontweight="bold",
                )
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=9)
    fig.suptitle("\n".join(title_lines), fontsize=11)
    fig.text(0.5, 0.05 / height, "\n".join(caption_lines), ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, bottom / height, 1, 1 - top / height))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:  # the CAM figure appears whole or not at all
        fig.savefig(fh, format="png")
    return path
