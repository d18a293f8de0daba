"""The super-resolution report (issue 14): does the SR stage keep the emotion, and does it beat bicubic?

    OMP_NUM_THREADS=2 python scripts/sr_report.py --run /work/exp/final --sr /work/exp/sr/sr128b/super_resolution \
        --readout /work/exp/sr/readout128/model --out docs/sr_report

In the synthetic world of a finished `emodiff synthetic-run` (RUN: synthetic_run.yaml, samples.npz = the sampled
held-out sweep, readout/model = its readout at the world's size), every video of the sweep is rendered again at
the SR's output size from the expression it was asked for (the exact high-resolution truth). The readout trained
at that size (`emodiff train readout --set model.resolution=128 ...`) then reads (a) the true high-resolution
renders, (b) SR and (c) bicubic of the true low-resolution renders, (d) SR and (e) bicubic of the generated
frames; the scores are those of the synthetic report (`emodiff.experiments.synthetic_run.score`: ρ(k, readout·d) per emotion,
EmoAcc@1 at the strongest k, mouth r against the true mouth opening), with PSNR / SSIM against the true
high-resolution render and flicker (`emodiff.metrics.super_resolution.flicker`). Writes OUT/report.md,
OUT/metrics.json and OUT/contact_sheet.png (low-res | bicubic | SR | truth).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's emodiff, not an installed one

from emodiff.data.labels import EMOTIONS  # noqa: E402
from emodiff.files import write_json_atomic  # noqa: E402
from emodiff.data.synthetic import MOUTH_OPEN, SyntheticWorld  # noqa: E402
from emodiff.metrics.quality import psnr, ssim  # noqa: E402
from emodiff.metrics.super_resolution import bicubic, flicker, load_upscaler, upscale_frames  # noqa: E402
from emodiff.models.readout import ExpressionReadout  # noqa: E402
from emodiff.experiments.synthetic_run import video_cache, held_out_speech, score  # noqa: E402

GOAL_DELTA, GOAL_GAIN_DB = 0.02, 2.0
SHEET_VIDEOS = 4


def high_resolution_truth(videos: list, world: SyntheticWorld, speeches: list) -> list[np.ndarray]:
    """Each video's asked expression (its condition with the speech's true mouth opening) rendered by `world`."""
    truths = []
    for v in videos:
        asked = v.condition.copy()
        asked[:, MOUTH_OPEN] = speeches[v.speech].mouth
        truths.append(world.render(world.identity(v.identity), asked))
    return truths


def measure(frames: list[np.ndarray], reader: ExpressionReadout, videos: list, speeches: list,
            intensities: list[float], truth: list[np.ndarray] | None) -> dict:
    """Readout scores, flicker, and PSNR / SSIM against `truth` (when given) of one set of videos."""
    reads = [reader.read(f) for f in frames]
    scores = score(videos, reads, speeches, intensities)
    row = {"spearman": scores["spearman_mean"], "emotion_accuracy": scores["emotion_accuracy"],
           "mouth_pearson": scores["mouth_pearson"], "flicker": float(np.mean([flicker(f) for f in frames])),
           "per_emotion_spearman": {e: s["spearman"] for e, s in scores["per_emotion"].items()}}
    if truth is not None:
        row["psnr"] = float(np.mean([psnr(t, f) for t, f in zip(truth, frames)]))
        row["ssim"] = float(np.mean([ssim(t, f) for t, f in zip(truth, frames)]))
    return row


def contact_sheet(path: Path, picks: list[int], columns: dict[str, list[np.ndarray]], videos: list) -> None:
    """One row per picked video (its middle frame): the columns side by side, the low-res one enlarged by repetition."""
    figure = Figure(figsize=(1.8 * len(columns), 1.9 * len(picks)))
    axes = figure.subplots(len(picks), len(columns), squeeze=False)
    for row, i in enumerate(picks):
        t = len(videos[i].frames) // 2
        for col, (title, frames) in enumerate(columns.items()):
            axes[row, col].imshow(frames[i][t], interpolation="nearest")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(title, fontsize=7)
        axes[row, 0].set_ylabel(f"{EMOTIONS[videos[i].emotion]} k={videos[i].k:g}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def table(rows: dict[str, dict], reference: str) -> list[str]:
    """Markdown rows: the scores and their change against the `reference` row."""
    lines = ["| frames (readout) | ρ(k, readout·d) | Δρ | EmoAcc@1 | ΔEmoAcc | mouth r | Δr | PSNR dB | SSIM | flicker |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ref = rows[reference]
    for name, r in rows.items():
        delta = {k: r[k] - ref[k] for k in ("spearman", "emotion_accuracy", "mouth_pearson")}
        lines.append(f"| {name} | {r['spearman']:.3f} | {delta['spearman']:+.3f} | {r['emotion_accuracy']:.3f} | "
                     f"{delta['emotion_accuracy']:+.3f} | {r['mouth_pearson']:.3f} | {delta['mouth_pearson']:+.3f} | "
                     f"{r.get('psnr', float('nan')):.2f} | {r.get('ssim', float('nan')):.3f} | {r['flicker']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="finished synthetic run (synthetic_run.yaml, samples.npz)")
    parser.add_argument("--sr", type=Path, required=True, help="super-resolution model (component or pipeline folder)")
    parser.add_argument("--readout", type=Path, required=True, help="readout model folder trained at the SR's output size")
    parser.add_argument("--out", type=Path, default=Path("docs/sr_report"))
    args = parser.parse_args()
    start = time.time()
    config = OmegaConf.load(args.run / "synthetic_run.yaml")
    ev, w = config.evaluation, config.world
    model = load_upscaler(args.sr)
    scale = model.config.scale
    low_world, high_world = SyntheticWorld(w.seed, w.size), SyntheticWorld(w.seed, w.size * scale)
    videos = video_cache(args.run / "samples.npz")
    speeches = [held_out_speech(low_world, ev.frames, i, level=(2, 3, 1)[i % 3]) for i in range(ev.audio_clips)]
    intensities = [float(k) for k in ev.intensities]
    truth = high_resolution_truth(videos, high_world, speeches)
    rerendered = high_resolution_truth(videos[:1], low_world, speeches)[0]
    assert np.array_equal(rerendered, videos[0].truth), "the sweep's truth is not re-rendered exactly"
    low_reader = ExpressionReadout.from_pretrained(args.run / "readout" / "model").eval()
    high_reader = ExpressionReadout.from_pretrained(args.readout).eval()

    def upscaled(frames_of: str, how: str) -> list[np.ndarray]:
        fn = model.upscale if how == "SR" else (lambda x: bicubic(x, scale))
        return [upscale_frames(fn, getattr(v, frames_of)) for v in videos]

    frames = {"sr_truth": upscaled("truth", "SR"), "bicubic_truth": upscaled("truth", "bicubic"),
              "sr_generated": upscaled("frames", "SR"), "bicubic_generated": upscaled("frames", "bicubic")}
    hi, lo = f"{w.size * scale} px readout", f"{w.size} px readout"
    on_truth = {
        f"true {w.size * scale} px render ({hi})": measure(truth, high_reader, videos, speeches, intensities, truth),
        f"SR of the true {w.size} px render ({hi})": measure(frames["sr_truth"], high_reader, videos, speeches, intensities, truth),
        f"bicubic of the true {w.size} px render ({hi})": measure(frames["bicubic_truth"], high_reader, videos, speeches,
                                                                   intensities, truth),
        f"true {w.size} px render ({lo})": measure([v.truth for v in videos], low_reader, videos, speeches, intensities, None),
    }
    on_generated = {
        f"generated {w.size} px ({lo})": measure([v.frames for v in videos], low_reader, videos, speeches, intensities, None),
        f"SR of generated ({hi})": measure(frames["sr_generated"], high_reader, videos, speeches, intensities, truth),
        f"bicubic of generated ({hi})": measure(frames["bicubic_generated"], high_reader, videos, speeches, intensities, truth),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    strongest = [i for i, v in enumerate(videos) if v.k == max(intensities)]
    picks = strongest[:: max(1, len(strongest) // SHEET_VIDEOS)][:SHEET_VIDEOS]
    contact_sheet(args.out / "contact_sheet.png", picks, {
        f"true {w.size} px": [v.truth for v in videos], "bicubic": frames["bicubic_truth"], "SR": frames["sr_truth"],
        f"truth {w.size * scale} px": truth, f"generated {w.size} px": [v.frames for v in videos],
        "SR of generated": frames["sr_generated"]}, videos)
    seconds = time.time() - start
    keys = list(on_truth)
    deltas = {k: abs(on_truth[keys[1]][k] - on_truth[keys[0]][k]) for k in ("spearman", "emotion_accuracy", "mouth_pearson")}
    gain = on_truth[keys[1]]["psnr"] - on_truth[keys[2]]["psnr"]
    metrics = {"truth": on_truth, "generated": on_generated, "sr_changes": deltas, "psnr_gain_over_bicubic_db": gain,
               "goals": {"max_change": GOAL_DELTA, "psnr_gain_db": GOAL_GAIN_DB},
               "sr": {"path": str(args.sr), **{k: model.config[k] for k in ("scale", "num_feat", "num_block",
                                                                              "num_grow_ch", "residual")}},
               "readout": json.loads((args.readout / "metrics.json").read_text()) if (args.readout / "metrics.json").is_file() else None,
               "videos": len(videos), "frames": int(sum(len(v.frames) for v in videos)), "seconds": seconds}
    write_json_atomic(args.out / "metrics.json", metrics)
    goals_met = all(d <= GOAL_DELTA for d in deltas.values()) and gain >= GOAL_GAIN_DB
    lines = [
        "# Super-resolution keeps the emotion (synthetic world)", "",
        f"Made by `scripts/sr_report.py --run {args.run} --sr {args.sr} --readout {args.readout}` in {seconds:.0f} s. "
        f"{len(videos)} videos of the held-out sweep ({metrics['frames']} frames, {w.size} px, 2 held-out identities), "
        f"×{scale} to {w.size * scale} px by an RRDBNet ({model.config.num_feat} features, {model.config.num_block} blocks). "
        f"The {w.size * scale} px truth is the world's render of the expression each video was asked for.", "",
        "## On the true low-resolution renders: what SR itself changes", "", *table(on_truth, keys[0]), "",
        f"Goal: SR changes none of ρ, EmoAcc, mouth r by more than {GOAL_DELTA} (measured: "
        + ", ".join(f"{k} {v:.3f}" for k, v in deltas.items()) + f") and beats bicubic by ≥ {GOAL_GAIN_DB} dB PSNR "
        f"(measured: {gain:+.2f} dB): {'met' if goals_met else 'missed'}.", "",
        "## On the generated frames", "", *table(on_generated, next(iter(on_generated))), "",
        "PSNR / SSIM against the true high-resolution render of what was asked (so they include the generator's own "
        "error); flicker = mean |x(t+1) − x(t)| in grey levels at each row's resolution.", "",
        "![low-res | bicubic | SR | truth](contact_sheet.png)", "",
    ]
    (args.out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
