"""Charts as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence

ORIGINAL_COLOR = "#9aa4b1"  # grey: what the model did before
COMPRESSED_COLOR = "#1f6feb"  # blue: what it does now
BASELINE_COLOR = "#d9822b"  # orange: the random-drop baseline
ACCURACY_COLOR = "#2da44e"  # green: accuracy


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from tokcomp.errors import TokcompError

        raise TokcompError("charts need matplotlib, which is not installed", hint="pip install matplotlib") from None

    matplotlib.use("Agg", force=True)  # never open a window, even where a display exists
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def paired_bars(original: Sequence[float], compressed: Sequence[float], title: str, ylabel: str) -> bytes:
    """One pair of bars per layer: original vs compressed."""
    plt = _pyplot()
    layers = range(len(original))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(original) + 2), 3.4))
    width = 0.4
    ax.bar([i - width / 2 for i in layers], original, width, label="original", color=ORIGINAL_COLOR)
    ax.bar([i + width / 2 for i in layers], compressed, width, label="compressed", color=COMPRESSED_COLOR)
    ax.set_xticks(list(layers))
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars fill the axes
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def tokens_per_layer(original: Sequence[int], compressed: Sequence[int]) -> bytes:
    return paired_bars(original, compressed, "Tokens kept after each layer", "tokens")


def flops_per_layer(original: Sequence[float], compressed: Sequence[float]) -> bytes:
    return paired_bars(original, compressed, "Compute per layer", "GMACs")


def tradeoff_curve(rows: Sequence[dict], title: str) -> bytes:
    """Fidelity (and accuracy when measured) against GMACs, one point per budget, labeled by budget."""
    plt = _pyplot()
    with_accuracy = any(r.get("top1_accuracy") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if with_accuracy else 1, figsize=(11 if with_accuracy else 6, 4), squeeze=False)
    fidelity_ax = axes[0][0]
    series = [
        ("cosine_mean", "output cosine (mean)", COMPRESSED_COLOR, "-"),
        ("top1_agreement", "top-1 agreement", "#8250df", "-"),
        ("random_drop_cosine_mean", "random drop, same tokens (cosine)", BASELINE_COLOR, "--"),
    ]
    for key, label, color, style in series:
        _line(fidelity_ax, rows, key, label, color, style)
    fidelity_ax.set_ylabel("fidelity to the original")
    _annotate(fidelity_ax, rows, "cosine_mean")
    if with_accuracy:
        accuracy_ax = axes[0][1]
        _line(accuracy_ax, rows, "top1_accuracy", "top-1 accuracy", ACCURACY_COLOR, "-")
        _line(accuracy_ax, rows, "top5_accuracy", "top-5 accuracy", "#57ab5a", ":")
        accuracy_ax.set_ylabel("accuracy")
        _annotate(accuracy_ax, rows, "top1_accuracy")
    for ax in axes[0]:
        ax.set_xlabel("GMACs")
        ax.legend(frameon=False, fontsize=8)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title)
    return _png(fig)


def _points(rows: Sequence[dict], key: str) -> list[tuple[float, float, str]]:
    found = [(r["gmacs"], r[key], str(r["budget"])) for r in rows if r.get(key) is not None]
    return sorted(found)


def _line(ax, rows, key, label, color, style) -> None:
    points = _points(rows, key)
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", color=color, label=label)


def _annotate(ax, rows, key) -> None:
    labels: dict[tuple[float, float], list[str]] = {}  # points that coincide share one label
    for x, y, budget in _points(rows, key):
        labels.setdefault((x, y), []).append(budget)
    for (x, y), names in labels.items():
        ax.annotate(" = ".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
