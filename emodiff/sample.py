"""Generate talking-head videos from identity images, speech, emotions and intensity schedules (`emodiff sample`,
described in emodiff/cli/sample.py).

`sample_videos` runs a list of `Job`s with one `SampleSettings`, split across the processes of `accelerate launch`;
each video streams frame by frame into OUT.mp4 (H.264 with the input audio), with OUT.intensity.png (the schedule)
and optionally OUT.preview.mp4 (identity | video); a video that fails leaves no mp4 behind.
"""

from __future__ import annotations

import json
import shlex
import sys
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from emodiff.control import ScheduleOptions, plot_schedule
from emodiff.data.datasets import to_uint8
from emodiff.data.media import VideoWriter, load_audio
from emodiff.data.synthetic import render_origin, trained_world
from emodiff.errors import EmodiffError
from emodiff.inference import InferenceOptions
from emodiff.metrics.super_resolution import describe
from emodiff.models.rrdbnet import RELEASED_WEIGHTS, RRDBNet
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


@dataclass(frozen=True)
class SampleSettings:
    """What every job of one run shares: the pipeline folder (or Hub id), the schedule options, the sampler and its
    guidance (None: the pipeline's own), the preview videos, the progress bar and the super-resolution (`SR_SCALES`,
    with a weights file or the pipeline's own)."""

    checkpoint: str
    options: ScheduleOptions = ScheduleOptions()
    steps: int | None = None
    sampler: str | None = None
    cfg_audio: float | None = None
    cfg_exp: float | None = None
    preview: bool = False
    progress: bool = True
    sr: str = "none"
    sr_weights: str | None = None


OUTPUT = "talking_head.mp4"  # the video's name inside a request's job folder (the app's download)


@dataclass(frozen=True)
class SampleRequest:
    """One video as `emodiff sample`, the app's form and the demo ask for it: the face and speech files, the
    `--emotion` and `--intensity` specs with their options, and the sampler settings (None: the pipeline's own)."""

    face: Path
    speech: Path
    emotion: str
    intensity: str
    options: ScheduleOptions = ScheduleOptions()
    sampler: str | None = None  # None: the pipeline's own (EmoDiffPipeline.sampler, .default_steps, .guidance_scales)
    steps: int | None = None
    cfg_audio: float | None = None
    cfg_exp: float | None = None
    seed: int = 0
    sr: str = "none"  # SR_SCALES: the pipeline's own super-resolution of that scale

    def input_names(self) -> tuple[str, str]:
        """The names of the face and speech copies in a job folder (their suffixes kept)."""
        return f"identity{self.face.suffix.lower()}", f"speech{self.speech.suffix.lower()}"

    def job(self, folder: Path) -> Job:
        """The `emodiff sample` job of this video, with the job folder's files."""
        face, speech = self.input_names()
        return Job(str(folder / face), str(folder / speech), self.emotion, self.intensity, str(folder / OUTPUT),
                   self.seed)

    def settings(self, checkpoint: Path) -> SampleSettings:
        """The `emodiff sample` settings of this video (those of `sample_argv`)."""
        return SampleSettings(str(checkpoint), self.options, self.steps, self.sampler, self.cfg_audio, self.cfg_exp,
                              sr=self.sr)

    def sample_argv(self, checkpoint: Path, folder: Path | None = None) -> list[str]:
        """The `emodiff sample` arguments that make this video, with the job folder's file names (inside `folder`
        when given, else relative to it)."""
        base = folder if folder is not None else Path()
        face, speech = self.input_names()
        return ["--checkpoint", str(checkpoint), "--identity", str(base / face), "--audio", str(base / speech),
                "--emotion", self.emotion, "--intensity", self.intensity, *self.options.flags(),
                *(["--sampler", self.sampler] if self.sampler is not None else []),
                *(["--steps", str(self.steps)] if self.steps is not None else []),
                *(["--cfg-audio", f"{self.cfg_audio:g}"] if self.cfg_audio is not None else []),
                *(["--cfg-exp", f"{self.cfg_exp:g}"] if self.cfg_exp is not None else []),
                "--seed", str(self.seed), *(["--sr", self.sr] if self.sr != "none" else []),
                "--out", str(base / OUTPUT)]

    def command(self, checkpoint: Path) -> str:
        """The shell command, to run in the job folder (the unzipped download)."""
        return shlex.join(["emodiff", "sample", *self.sample_argv(checkpoint)])


def read_jobs(path: str | Path, seed: int = 0) -> list[Job]:
    """The jobs of a .jsonl file, one JSON object with the `JOB_KEYS` (and optionally seed, else `seed`) a line."""
    path = Path(path)
    if not path.is_file():
        raise EmodiffError(f"Jobs file {path} does not exist.")
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            jobs.append(Job(**{key: str(entry[key]) for key in JOB_KEYS}, seed=int(entry.get("seed", seed))))
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


def prepare_video(pipeline: EmoDiffPipeline, job: Job,
                  settings: SampleSettings) -> tuple[VideoConditions, np.ndarray, str | None]:
    """The conditions of one job, its speech (16 kHz mono) and the `identity_warning` for its face (or None).

    A render of the synthetic world (`render_origin`) is taken as the aligned crop it is; other images are aligned."""
    audio = load_audio(job.audio)
    image = read_image(job.identity)
    is_render = render_origin(job.identity) is not None
    video = pipeline.conditions(image, audio, job.emotion, job.intensity, options=settings.options,
                                seed=job.seed, aligned=is_render)
    return video, audio, identity_warning(settings.checkpoint, job.identity, is_render)


def sample_batch(pipeline: EmoDiffPipeline, jobs: list[Job], videos: list[VideoConditions], audios: list[np.ndarray],
                 settings: SampleSettings) -> Iterator[int]:
    """Sample `videos` as one batch, streaming each frame to its writers and yielding its index once written.

    A failure, or a caller that stops iterating (the generator is closed), removes every unfinished mp4."""
    fps = pipeline.settings["fps"]
    stacks = [ExitStack() for _ in jobs]
    writers, previews = [], []
    for stack, job, audio in zip(stacks, jobs, audios):
        paths = output_paths(job.out)
        writers.append(stack.enter_context(VideoWriter(paths["video"], fps, audio=audio, comment=describe(
            pipeline.super_resolution, pipeline.settings["resolution"]))))
        previews.append(stack.enter_context(VideoWriter(paths["preview"], fps, audio=audio)) if settings.preview else None)
    open_stacks = set(range(len(jobs)))
    identities: dict[int, torch.Tensor] = {}  # identity crops at the output size, for the previews
    try:
        frames = pipeline.sample(videos, steps=settings.steps, sampler=settings.sampler, cfg_audio=settings.cfg_audio,
                                 cfg_expression=settings.cfg_exp, seeds=[job.seed for job in jobs],
                                 progress=settings.progress)
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


def load_pipeline(checkpoint: str | Path, sr: str | None = "none", sr_weights: str | None = None) -> EmoDiffPipeline:
    """The pipeline at `checkpoint` with the super-resolution `sr` (`load_super_resolution`; none by default, as
    `emodiff sample`); `sr` None keeps the pipeline's own (the demo)."""
    pipeline = EmoDiffPipeline.from_pretrained(checkpoint)
    if sr is not None:
        pipeline.super_resolution = load_super_resolution(pipeline, sr, sr_weights)
    return pipeline


def sample_videos(jobs: list[Job], settings: SampleSettings, batch_size: int = 4,
                  inference: InferenceOptions = InferenceOptions()) -> int:
    """Sample every job, `batch_size` videos together, the jobs split across the processes of `accelerate launch`;
    a job whose inputs are bad is one sentence on stderr and the others go on (a single job raises). Returns how
    many jobs failed in this process."""
    from accelerate import PartialState

    settings = replace(settings, checkpoint=str(pipeline_folder(settings.checkpoint)))  # a Hub id: its snapshot
    for job in jobs:
        output_paths(job.out)
    if batch_size < 1:
        raise EmodiffError(f"--batch-size must be at least 1, not {batch_size}.")
    state = PartialState()
    pipeline = load_pipeline(settings.checkpoint, settings.sr, settings.sr_weights)
    pipeline = pipeline.to(state.device).accelerate_inference(inference)
    failures = 0
    with state.split_between_processes(jobs) as my_jobs:
        ready: list[tuple[Job, VideoConditions, np.ndarray]] = []
        for job in my_jobs:
            try:
                video, audio, warning = prepare_video(pipeline, job, settings)
            except EmodiffError as err:
                if len(jobs) == 1:
                    raise
                failures += 1
                print(f"emodiff: error: {job.out}: {err}", file=sys.stderr)
                continue
            if warning:
                print(f"emodiff: warning: {warning}", file=sys.stderr)
            ready.append((job, video, audio))
        for start in range(0, len(ready), batch_size):
            batch_jobs, videos, audios = zip(*ready[start:start + batch_size])
            for _ in sample_batch(pipeline, list(batch_jobs), list(videos), list(audios), settings):
                pass
    return failures
