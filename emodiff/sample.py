"""Generate talking-head videos from an identity image, speech, an emotion and an intensity schedule.

One video:   emodiff sample --checkpoint DIR --identity face.png --audio speech.wav --emotion happy
                            --intensity "0:0.2,1.5:0.9" --out out.mp4 [--steps 25] [--sampler ddim] ...
Many videos: emodiff sample --checkpoint DIR --jobs jobs.jsonl   (also under `accelerate launch -m emodiff.sample`,
             which splits the jobs across processes). Each JSON line has identity, audio, emotion, intensity,
             out and optionally seed; the other settings come from the flags.

--emotion takes a name or a timeline ("happy@0,surprised@2", --crossfade seconds); --intensity takes a number, key
frames in seconds ("0:0.2,1.5:0.9", --interpolation), a per-frame .csv/.npy or `audio` (predicted from the speech;
--scale, --clip, --smooth-frames, --temperature). --precision bf16|fp16, --channels-last, --compile and --attention
run the networks faster on a GPU (`emodiff.inference`). Each OUT.mp4 (H.264 with the input audio) comes with
OUT.intensity.png (the schedule) and, with --preview, OUT.preview.mp4 (identity | video). A video that fails leaves
no mp4 behind. A face that a pipeline trained in the synthetic world cannot animate (anything but that world's
renders, e.g. a photo) gets a one-sentence warning; a render of the world is used as the aligned crop it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from emodiff.control import ScheduleOptions, add_schedule_arguments, plot_schedule
from emodiff.data.datasets import to_uint8
from emodiff.data.labels import EMOTIONS
from emodiff.data.media import VideoWriter, load_audio
from emodiff.data.synthetic import render_origin, trained_world
from emodiff.errors import EmodiffError
from emodiff.inference import InferenceOptions, add_inference_arguments
from emodiff.metrics.super_resolution import describe
from emodiff.models.rrdbnet import RELEASED_WEIGHTS, RRDBNet
from emodiff.diffusion.schedulers import SAMPLERS
from emodiff.pipeline import EmoDiffPipeline, VideoConditions, pipeline_folder

SR_SCALES = {"none": None, "x2": 2, "x4": 4}
JOB_KEYS = ("identity", "audio", "emotion", "intensity", "out")


@dataclass
class Job:
    identity: str
    audio: str
    emotion: str
    intensity: str
    out: str
    seed: int = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="pipeline folder written by EmoDiffPipeline.save_pretrained, or its Hugging Face Hub id")
    parser.add_argument("--identity", help="identity image (any face photo; it is aligned like the training data)")
    parser.add_argument("--audio", help="driving speech (wav, mp3, m4a, flac or a video's audio)")
    parser.add_argument("--emotion", help=f"one of {', '.join(EMOTIONS)}, or a timeline like 'happy@0,surprised@2'")
    parser.add_argument("--intensity", default="1.0", help="k ∈ [0, 1]: a number, key frames, a .csv/.npy or 'audio'")
    add_schedule_arguments(parser)
    parser.add_argument("--out", help="output .mp4")
    parser.add_argument("--jobs", help="a .jsonl file of jobs (identity, audio, emotion, intensity, out[, seed])")
    parser.add_argument("--batch-size", type=int, default=4, help="videos sampled together in --jobs mode")
    parser.add_argument("--steps", type=int, help="sampling steps per frame (default: the pipeline's own, "
                        "e.g. 4 for a distilled one, else 25)")
    parser.add_argument("--sampler", choices=list(SAMPLERS), default="ddim")
    parser.add_argument("--cfg-audio", type=float, help="classifier-free guidance scale for the audio (default 1, none; "
                        "a distilled pipeline has its scales baked in)")
    parser.add_argument("--cfg-exp", type=float, help="classifier-free guidance scale for the expression (default 1, "
                        "none; a distilled pipeline has its scales baked in)")
    parser.add_argument("--seed", type=int, default=0)
    add_inference_arguments(parser)
    parser.add_argument("--sr", choices=list(SR_SCALES), default="none", help="super-resolution of the output frames: the pipeline's own super_resolution "
                        "of that scale (`emodiff assemble --super-resolution`), else --sr-weights; recorded in the mp4")
    parser.add_argument("--sr-weights", default=os.environ.get("EMODIFF_SR_WEIGHTS"),
                        help=f"{RELEASED_WEIGHTS[4]} / {RELEASED_WEIGHTS[2]} (default: $EMODIFF_SR_WEIGHTS)")
    parser.add_argument("--preview", action="store_true", help="also write OUT.preview.mp4: identity | video")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def read_jobs(args: argparse.Namespace) -> list[Job]:
    """The jobs of `--jobs FILE`, or the single job given by the flags."""
    if args.jobs is None:
        missing = [f"--{key}" for key in JOB_KEYS if getattr(args, key) is None]
        if missing:
            raise EmodiffError(f"Give {', '.join(missing)} (or --jobs FILE).")
        return [Job(args.identity, args.audio, args.emotion, args.intensity, args.out, args.seed)]
    path = Path(args.jobs)
    if not path.is_file():
        raise EmodiffError(f"Jobs file {path} does not exist.")
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            jobs.append(Job(**{key: str(entry[key]) for key in JOB_KEYS}, seed=int(entry.get("seed", args.seed))))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise EmodiffError(f"Line {number} of {path} is not a job with keys {', '.join(JOB_KEYS)} ({err}).") from None
    if not jobs:
        raise EmodiffError(f"Jobs file {path} has no jobs.")
    return jobs


def read_image(path: str) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image; unreadable files are one sentence."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))  # a writable copy (torch warns about read-only arrays)
    except FileNotFoundError:
        raise EmodiffError(f"Identity image {path} does not exist.") from None
    except (UnidentifiedImageError, OSError) as err:
        raise EmodiffError(f"Cannot read the identity image {path} ({err}).") from None


def load_super_resolution(pipeline: EmoDiffPipeline, choice: str, weights: str | None) -> RRDBNet | None:
    """The RRDBNet for `--sr x2|x4`: the given weights file, else the pipeline's own of that scale."""
    scale = SR_SCALES[choice]
    if scale is None:
        return None
    own = pipeline.super_resolution
    if weights is None and own is not None and own.config.scale == scale:
        return own
    if weights is None:
        raise EmodiffError(f"--sr {choice} needs --sr-weights: download {RELEASED_WEIGHTS[scale]} from "
                           "https://github.com/xinntao/Real-ESRGAN/releases and pass its path.")
    model = RRDBNet.from_basicsr(weights)
    if model.config.scale != scale:
        raise EmodiffError(f"{weights} is a x{model.config.scale} model but --sr {choice} was asked.")
    return model



def output_paths(out: str) -> dict[str, Path]:
    path = Path(out)
    if path.suffix.lower() != ".mp4":
        raise EmodiffError(f"The output {out} must be an .mp4 file.")
    return {"video": path, "schedule": path.with_suffix(".intensity.png"), "preview": path.with_suffix(".preview.mp4")}


def identity_warning(checkpoint: str | Path, identity: str, is_render: bool) -> str | None:
    """One sentence when a pipeline trained in the synthetic world gets a face that is not one of the world's renders.

    A warning, not a refusal: sampling such a face works, it only cannot look like the face, and a render saved
    by other means than `save_render` (a frame cut from a synthetic video) is not recognised as one."""
    if is_render or trained_world(checkpoint) is None:
        return None
    return (f"The pipeline {checkpoint} was trained only on the cartoon faces of the synthetic world, so "
            f"{Path(identity).name}, which is not one of its renders, will come out as a noisy ghost of itself; use a "
            "face of that world (the identity.png of `emodiff demo`, or an example face in `emodiff app`) or a pipeline "
            "trained on real recordings.")


def prepare_video(pipeline: EmoDiffPipeline, job: Job, args: argparse.Namespace) -> tuple[VideoConditions, np.ndarray, str | None]:
    """The conditions of one job, its speech (16 kHz mono) and the `identity_warning` for its face (or None).

    A render of the synthetic world (`render_origin`) is taken as the aligned crop it is; other images are aligned."""
    audio = load_audio(job.audio)
    image = read_image(job.identity)
    is_render = render_origin(job.identity) is not None
    video = pipeline.conditions(image, audio, job.emotion, job.intensity, options=ScheduleOptions.from_args(args),
                                seed=job.seed, aligned=is_render)
    return video, audio, identity_warning(args.checkpoint, job.identity, is_render)


def sample_batch(pipeline: EmoDiffPipeline, jobs: list[Job], videos: list[VideoConditions], audios: list[np.ndarray],
                 args: argparse.Namespace) -> Iterator[int]:
    """Sample `videos` as one batch, streaming each frame to its writers and yielding its index once written.

    A failure, or a caller that stops iterating (the generator is closed), removes every unfinished mp4."""
    fps = pipeline.settings["fps"]
    stacks = [ExitStack() for _ in jobs]
    writers, previews = [], []
    for stack, job, audio in zip(stacks, jobs, audios):
        paths = output_paths(job.out)
        writers.append(stack.enter_context(VideoWriter(paths["video"], fps, audio=audio, comment=describe(
            pipeline.super_resolution, pipeline.settings["resolution"]))))
        previews.append(stack.enter_context(VideoWriter(paths["preview"], fps, audio=audio)) if args.preview else None)
    open_stacks = set(range(len(jobs)))
    identities: dict[int, torch.Tensor] = {}  # identity crops at the output size, for the previews
    try:
        frames = pipeline.sample(videos, steps=args.steps, sampler=args.sampler, cfg_audio=args.cfg_audio,
                                 cfg_expression=args.cfg_exp, seeds=[job.seed for job in jobs],
                                 progress=not args.no_progress)
        for i, batch in frames:
            for v, frame in batch.items():
                writers[v].write(to_uint8(frame))
                if previews[v] is not None:
                    if v not in identities:
                        identities[v] = F.interpolate(videos[v].identity[None], size=frame.shape[-2:], mode="bilinear",
                                                      antialias=True, align_corners=False)[0].to(frame)
                    previews[v].write(to_uint8(torch.cat([identities[v], frame], -1)))
                if i == videos[v].n_frames - 1:
                    open_stacks.discard(v)
                    stacks[v].close()
            yield i
    except BaseException:
        for v in open_stacks:
            stacks[v].__exit__(*sys.exc_info())
        raise
    for job, video in zip(jobs, videos):
        paths = output_paths(job.out)
        plot_schedule(video.intensity.numpy(), fps, paths["schedule"], video.emotion_weights.numpy(),
                      title=f"{Path(job.out).name}: {job.emotion}, intensity {job.intensity}")
        print(f"wrote {paths['video']} ({video.n_frames} frames at {fps:g} fps) and {paths['schedule'].name}")


def load_pipeline(args: argparse.Namespace) -> EmoDiffPipeline:
    """The pipeline of `--checkpoint` with the super-resolution of `--sr` (none by default)."""
    pipeline = EmoDiffPipeline.from_pretrained(args.checkpoint)
    pipeline.super_resolution = load_super_resolution(pipeline, args.sr, args.sr_weights)
    return pipeline


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    args.checkpoint = pipeline_folder(args.checkpoint)  # a Hub id becomes its cached snapshot
    jobs = read_jobs(args)
    for job in jobs:
        output_paths(job.out)
    if args.batch_size < 1:
        raise EmodiffError(f"--batch-size must be at least 1, not {args.batch_size}.")
    state = PartialState()
    pipeline = load_pipeline(args).to(state.device).accelerate_inference(InferenceOptions.from_args(args))
    failures = 0
    with state.split_between_processes(jobs) as my_jobs:
        ready: list[tuple[Job, VideoConditions, np.ndarray]] = []
        for job in my_jobs:
            try:
                video, audio, warning = prepare_video(pipeline, job, args)
            except EmodiffError as err:
                if len(jobs) == 1:
                    raise
                failures += 1
                print(f"emodiff: error: {job.out}: {err}", file=sys.stderr)
                continue
            if warning:
                print(f"emodiff: warning: {warning}", file=sys.stderr)
            ready.append((job, video, audio))
        for start in range(0, len(ready), args.batch_size):
            batch_jobs, videos, audios = zip(*ready[start:start + args.batch_size])
            for _ in sample_batch(pipeline, list(batch_jobs), list(videos), list(audios), args):
                pass
    return 1 if failures else 0


def main() -> None:
    """`python -m emodiff.sample` / `accelerate launch -m emodiff.sample` entry point."""
    from emodiff.cli import main as cli_main

    sys.exit(cli_main(["sample", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
