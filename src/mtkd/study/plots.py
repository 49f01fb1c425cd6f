"""The study's figures (PNG, matplotlib without a display): accuracy against the number of
teachers, learning curves, per-class change, the best student's confusion matrix, accuracy
against cost."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mtkd.console import say  # noqa: E402
from mtkd.io import atomic_path  # noqa: E402
from mtkd.study.answers import Group, best_by_val  # noqa: E402
from mtkd.study.stats import mean_std  # noqa: E402

DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def accuracy_vs_teachers(groups: list[Group], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    alone = next((g for g in groups if g.method == "none"), None)
    if alone is not None:
        m, s = alone.stat("test_acc")
        ax.axhspan(100 * (m - s), 100 * (m + s), color="0.85", label="alone (mean ± std)")
        ax.axhline(100 * m, color="0.4", lw=1)
    methods = list(dict.fromkeys(g.method for g in groups if g.method != "none"))
    for i, method in enumerate(methods):
        mine = [g for g in groups if g.method == method]
        sizes = sorted({len(g.teachers) for g in mine})
        xs, ys, es = [], [], []
        for k in sizes:
            pick = best_by_val([g for g in mine if len(g.teachers) == k])
            assert pick is not None
            m, s = pick.stat("test_acc")
            xs.append(k + 0.06 * (i - (len(methods) - 1) / 2))
            ys.append(100 * m)
            es.append(100 * s)
            for g in mine:
                if len(g.teachers) == k and g is not pick:
                    ax.plot(xs[-1], 100 * g.stat("test_acc")[0], ".", color=f"C{i}", alpha=0.35)
        ax.errorbar(
            xs, ys, yerr=es, marker="o", capsize=4, color=f"C{i}", label=f"{method} (best set of each size)"
        )
    ax.set_xlabel("number of teachers")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted({len(g.teachers) for g in groups if g.method != "none"} or {1}))
    ax.set_title("accuracy against the number of teachers (mean ± std over seeds)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _curve(folder: Path) -> list[float]:
    """A run's validation accuracy per epoch; none, with a word, when its metrics.csv is damaged."""
    try:
        with open(folder / "metrics.csv", newline="") as fh:
            return [float(r["val_acc"]) for r in csv.DictReader(fh)]
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as exc:
        say(f"{folder / 'metrics.csv'} is damaged ({type(exc).__name__}): its learning curve is left out")
        return []


def learning_curves(groups: list[Group], study: Path, path: Path, prefer: Group | None = None) -> Path:
    """The student alone and, per method, its best configuration on validation (`prefer` for its
    method: a search's pick)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    shown = [g for g in groups if g.method == "none"]
    for method in dict.fromkeys(g.method for g in groups if g.method != "none"):
        pick = (
            prefer
            if prefer is not None and prefer.method == method
            else best_by_val([g for g in groups if g.method == method])
        )
        if pick is not None:
            shown.append(pick)
    for i, g in enumerate(shown):
        curves = [c for c in (_curve(study / row["run"]) for row in g.rows.values()) if c]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        stats = [mean_std([c[e] for c in curves]) for e in range(length)]
        epochs = list(range(1, length + 1))
        mean = [100 * m for m, _ in stats]
        ax.plot(epochs, mean, color=f"C{i}", label=g.short)
        ax.fill_between(epochs, [100 * (m - s) for m, s in stats], [100 * (m + s) for m, s in stats],
                        color=f"C{i}", alpha=0.2)  # fmt: skip
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("learning curves (mean ± std over seeds)")
    low = min(ax.get_ylim()[1] - 15, max(ax.get_ylim()[0], 0))
    ax.set_ylim(bottom=low)
    ax.legend(fontsize=8)
    return _save(fig, path)


def per_class_accuracy(group: Group, summaries: dict[str, dict]) -> list[float]:
    """Per-class test accuracy, mean over the group's seeds, from the saved confusion matrices."""
    per_seed = []
    for row in group.rows.values():
        conf = summaries[row["run"]]["test_confusion"]
        per_seed.append([r[i] / max(1, sum(r)) for i, r in enumerate(conf)])
    return [sum(v) / len(v) for v in zip(*per_seed, strict=True)]


def per_class_change(best: Group, alone: Group, summaries: dict[str, dict], path: Path) -> Path:
    classes = summaries[next(iter(best.rows.values()))["run"]]["classes"]
    change = [
        100 * (b - a)
        for b, a in zip(
            per_class_accuracy(best, summaries), per_class_accuracy(alone, summaries), strict=True
        )
    ]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(classes)), 4.0))
    ax.bar(range(len(classes)), change, color=["C2" if c >= 0 else "C3" for c in change])
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("change in test accuracy (points)")
    ax.set_title(f"per class: {best.short} minus alone (mean over seeds)", fontsize=10)
    return _save(fig, path)


def confusion(summary: dict, title: str, path: Path) -> Path:
    conf, classes = summary["test_confusion"], summary["classes"]
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * n + 2), max(4.2, 0.5 * n + 1.5)))
    ax.imshow(conf, cmap="Blues")
    if n <= 20:
        top = max(max(r) for r in conf) or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(conf[i][j]), ha="center", va="center", fontsize=7,
                        color="white" if conf[i][j] > top / 2 else "black")  # fmt: skip
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def accuracy_vs_cost(points: list[dict], path: Path) -> Path:
    """points: {label, kind, params, latency_ms, acc, std, note}; two panels with log-scaled cost.

    Student configurations share one size, so only the ones with a `note` (alone, best) are named.
    """
    from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, xlabel in (
        (axes[0], "params", "parameters"),
        (axes[1], "latency_ms", "CPU latency per image (ms)"),
    ):
        for p in points:
            if not p.get(key):
                continue
            teacher = p["kind"] == "teacher"
            style = (
                {"marker": "s", "color": "C3"} if teacher else {"marker": "o", "color": "C0", "alpha": 0.6}
            )
            ax.errorbar(p[key], 100 * p["acc"], yerr=100 * p.get("std", 0.0), capsize=3, ls="none", **style)
            if teacher or p.get("note"):
                text = p["label"] if teacher else p["note"]
                ax.annotate(
                    text, (p[key], 100 * p["acc"]), fontsize=7, xytext=(5, 3), textcoords="offset points"
                )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(LogFormatterSciNotation())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.margins(x=0.25)
    axes[0].set_title("accuracy against size (squares: teachers, dots: student configs)", fontsize=10)
    axes[1].set_title("accuracy against latency", fontsize=10)
    return _save(fig, path)
