"""Audio guidance on a finished `emodiff real-clips` run: does s_a > 1 make the mouth follow the speech?

    python scripts/real_clips_guidance.py RUN OUT [--seconds 4] [--cfg-audio 1 3] [--part heldout|train]

Samples the first SECONDS of every held-out segment of RUN (its pipeline and store_heldout; `--part train`: of the
training parts, store_train, which the denoiser saw) from the segment's first
frame and its speech, once per audio guidance scale s_a (docs/design.md §5.1), both as the autoregressive rollout and
with the real previous frames as motion frames (teacher forcing), writes OUT/videos/<run>/<clip>.mp4 beside the real
frames, and scores them with `emodiff evaluate`'s harness (OUT/report, as `emodiff real-clips` does); the table printed
is in docs/real_clips/diagnosis.md. Only the first seconds: s_a > 1 triples the UNet forwards per frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodiff.data.datasets import frames_to_tensor, to_uint8  # noqa: E402
from emodiff.data.media import SAMPLE_RATE  # noqa: E402
from emodiff.data.store import ClipStore  # noqa: E402
from emodiff.experiments.real_clips import REAL, write_video  # noqa: E402
from emodiff.metrics.evaluate import evaluate_folders  # noqa: E402
from emodiff.pipeline import EmoDiffPipeline  # noqa: E402

COLUMNS = ("psnr", "ssim", "m_lmd", "f_lmd", "mouth_r")


def sample_runs(run: Path, videos: Path, seconds: float, scales: list[float], steps: int, seed: int = 0,
                part: str = "heldout") -> list[str]:
    """OUT/videos/<cfg…>/<clip>.mp4 for every scale, rolled out and teacher-forced, and the real frames; the names.
    `part` "train" samples the first seconds of the training parts instead (what the denoiser saw)."""
    store = ClipStore.open(run / f"store_{part}")
    pipeline = EmoDiffPipeline.from_pretrained(run / "pipeline")
    resolution, fps = pipeline.settings["resolution"], pipeline.settings["fps"]
    clips = [store.clip(c) for c in store.clip_ids()]
    n = int(round(seconds * fps))
    audios = [clip.audio()[0][:int(n / fps * SAMPLE_RATE)] for clip in clips]
    real = [frames_to_tensor(np.array(clip.frames[:n]), resolution) for clip in clips]
    for clip, audio, frames in zip(clips, audios, real):
        write_video(videos / REAL / f"{clip.clip_id}.mp4", to_uint8(frames), fps, audio)
    names = []
    for scale in scales:
        for real_motion in (False, True):
            name = f"cfg_audio_{scale:g}" + ("_real_motion" if real_motion else "")
            names.append(name)
            if all((videos / name / f"{clip.clip_id}.mp4").is_file() for clip in clips):
                continue
            conditions = [pipeline.conditions(np.array(clip.frames[0]), audio, "neutral", 0.0, seed=seed, aligned=True)
                          for clip, audio in zip(clips, audios)]
            generated: list[list[np.ndarray]] = [[] for _ in clips]
            with torch.inference_mode():
                for _, frames in pipeline.sample(conditions, steps=steps, sampler="ddim", cfg_audio=scale, seeds=[seed] * len(clips),
                                                 real_frames=real if real_motion else None):
                    for v, frame in frames.items():
                        generated[v].append(to_uint8(frame))
            for clip, audio, frames in zip(clips, audios, generated):
                write_video(videos / name / f"{clip.clip_id}.mp4", np.stack(frames), fps, audio)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished `emodiff real-clips` run folder")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds sampled from the start of each segment")
    parser.add_argument("--cfg-audio", type=float, nargs="+", default=[1.0, 3.0], help="audio guidance scales s_a")
    parser.add_argument("--steps", type=int, default=16, help="DDIM steps (configs/real_clips.yaml's sample.steps)")
    parser.add_argument("--part", choices=["heldout", "train"], default="heldout",
                        help="the held-out segments, or the training parts the denoiser saw")
    args = parser.parse_args()
    videos = args.out / "videos"
    names = sample_runs(args.run, videos, args.seconds, args.cfg_audio, args.steps, part=args.part)
    evaluate_folders(videos / REAL, {name: videos / name for name in names}, args.out / "report", aligned=True,
                     expression="none")
    metrics = json.loads((args.out / "report" / "metrics.json").read_text())["metrics"]
    print("| run | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{metrics[name].get(c, float('nan')):.3f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
