"""The report of `emodiff evaluate` (emodiff/cli/evaluate.py): the metric table (emodiff/metrics/table.py) written
as metrics.md, metrics.csv and metrics.json, and its PNG plots.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from emodiff.data.labels import EMOTIONS
from emodiff.files import atomic_path, write_json_atomic, write_text_atomic
from emodiff.metrics.table import METRICS


def _format(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.4g}"


def report_markdown(report: dict) -> str:
    """The report as a Markdown table (runs × metrics) plus settings and skipped metrics."""
    keys = [m for m in METRICS if any(m[0] in row for row in report["metrics"].values())]
    lines = ["# emodiff evaluation", ""]
    lines += [f"- {k}: {v}" for k, v in report["settings"].items()] + [""]
    lines.append("| run | " + " | ".join(f"{title} {arrow}" for _, title, arrow in keys) + " |")
    lines.append("|---" * (len(keys) + 1) + "|")
    for run, row in report["metrics"].items():
        lines.append(f"| {run} | " + " | ".join(_format(row.get(k)) for k, _, _ in keys) + " |")
    if report["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {k}: {why}" for k, why in report["skipped"].items()]
    titles = {key: title for key, title, _ in METRICS}
    not_computed = [f"- {titles[metric]}, {run}/{name}: {why}" for run, extras in report["extras"].items()
                    for metric, reasons in extras.get("not_computed", {}).items() for name, why in reasons.items()]
    if not_computed:
        lines += ["", "Not computed for some videos (n/a; the run's value is the mean over its other videos):", ""]
        lines += not_computed
    if report.get("left_out"):
        lines += ["", "Videos left out (not read):", ""] + [f"- {name}: {why}" for name, why in report["left_out"].items()]
    return "\n".join(lines) + "\n"


def report_csv(report: dict) -> str:
    keys = [k for k, _, _ in METRICS]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["run", *keys])
    for run, row in report["metrics"].items():
        writer.writerow([run, *(row.get(k, "") for k in keys)])
    return buffer.getvalue()


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """Intensity curves (target vs measured), per-emotion accuracy and FLIE curves, as PNG files."""
    from matplotlib.figure import Figure

    written = []

    def save(fig: Figure, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
        written.append(path)

    extras = report["extras"]
    curves = {run: e["intensity_curves"] for run, e in extras.items() if "intensity_curves" in e}
    if curves:
        fig = Figure(figsize=(4.5 * len(curves), 3.5))
        axes = fig.subplots(1, len(curves), squeeze=False)
        for ax, (run, per_video) in zip(axes[0], curves.items()):
            # schedules that vary over time first: they show frame-wise control best
            ordered = sorted(per_video.items(), key=lambda item: np.ptp(item[1]["target"]) == 0)
            for name, c in ordered[:4]:
                line, = ax.plot(c["measured"], label=f"{name} measured")
                ax.plot(c["target"], "--", color=line.get_color(), label=f"{name} target")
            ax.set(title=run, xlabel="frame", ylabel="intensity k")
            ax.legend(fontsize=6)
        save(fig, "intensity_curves.png")
    per_class = {run: e["per_class"] for run, e in extras.items() if "per_class" in e}
    if per_class:
        fig = Figure(figsize=(8, 3.5))
        ax = fig.subplots()
        width = 0.8 / len(per_class)
        for r, (run, table) in enumerate(per_class.items()):
            x = np.array([EMOTIONS.index(e) for e in table]) + r * width
            ax.bar(x, [t["mean_logits"] for t in table.values()], width, label=run)
        ax.set_xticks(np.arange(len(EMOTIONS)) + 0.4 - width / 2, EMOTIONS, rotation=30)
        ax.set(ylabel="video accuracy", ylim=(0, 1), title="EmoAcc per emotion")
        ax.legend(fontsize=7)
        save(fig, "emotion_accuracy.png")
    flie = {run: e["flie_curves"] for run, e in extras.items() if "flie_curves" in e}
    if flie:
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for r, (run, sweeps) in enumerate(flie.items()):
            for i, s in enumerate(sweeps):
                means = np.asarray(s["mean_expression"])
                progress = np.linalg.norm(means - means[0], axis=1) / max(np.linalg.norm(means[-1] - means[0]), 1e-12)
                ax.plot(s["k"], progress, "o-", color=f"C{r}", alpha=0.7, label=run if i == 0 else None)
        ax.plot([0, 1], [0, 1], "k:", label="linear")
        ax.set(xlabel="target intensity k", ylabel="‖ē_k − ē_0‖ / ‖ē_max − ē_0‖", title="FLIE curves")
        ax.legend(fontsize=7)
        save(fig, "flie_curves.png")
    rows = report["metrics"]
    shown = [m for m in METRICS if any(m[0] in row and math.isfinite(row[m[0]]) for row in rows.values())]
    if shown:
        colour = {run: f"C{i}" for i, run in enumerate(rows)}
        fig = Figure(figsize=(2.2 * len(shown), 3))
        axes = fig.subplots(1, len(shown), squeeze=False)
        for ax, (key, title, arrow) in zip(axes[0], shown):
            names = [run for run, row in rows.items() if key in row and math.isfinite(row[key])]
            ax.bar(range(len(names)), [rows[run][key] for run in names], color=[colour[run] for run in names])
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{title} {arrow}", fontsize=9)
        save(fig, "metrics.png")
    return written


def _json_safe(obj):
    """Strict JSON: non-finite floats (PSNR of identical videos) become the strings "inf" / "-inf" / "nan"."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """metrics.md, metrics.csv, metrics.json (∞ written as "inf") and the plots, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "metrics.md", report_markdown(report))
    write_text_atomic(out_dir / "metrics.csv", report_csv(report))
    write_json_atomic(out_dir / "metrics.json", _json_safe(report))
    return [out_dir / "metrics.md", out_dir / "metrics.csv", out_dir / "metrics.json", *write_plots(report, out_dir)]

