"""Generate talking-head videos from an identity image, speech, an emotion and an intensity schedule.

One video:   emodiff sample --checkpoint DIR --identity face.png --audio speech.wav --emotion happy
                            --intensity "0:0.2,1.5:0.9" --out out.mp4 [--steps 25] [--sampler ddim] ...
Many videos: emodiff sample --checkpoint DIR --jobs jobs.jsonl   (also under `accelerate launch -m emodiff sample`,
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
import os

from emodiff.cli.schedule import add_schedule_arguments, schedule_options
from emodiff.data.labels import EMOTIONS
from emodiff.errors import EmodiffError
from emodiff.inference import PRECISIONS, InferenceOptions
from emodiff.models.rrdbnet import RELEASED_WEIGHTS
from emodiff.models.unet import ATTENTION_BACKENDS
from emodiff.diffusion.schedulers import SAMPLERS
from emodiff.sample import JOB_KEYS, SR_SCALES, Job, SampleSettings, read_jobs, sample_videos


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The `InferenceOptions` flags of `emodiff sample` and `emodiff demo`."""
    parser.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                        help="autocast precision of the networks (bf16 on CPU or CUDA, fp16 on CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights (faster convolutions on GPUs)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the denoiser (CUDA graphs on CUDA; the first frames pay the compilation)")
    parser.add_argument("--attention", choices=list(ATTENTION_BACKENDS),
                        help="attention backend (default: the one the model was trained with)")


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The `InferenceOptions` of the flags of `add_inference_arguments`."""
    return InferenceOptions(args.precision, args.channels_last, args.compile, args.attention)


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
    parser.add_argument("--sampler", choices=list(SAMPLERS),
                        help="default: the pipeline's own scheduler (its scheduler/ component)")
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


def jobs_of(args: argparse.Namespace) -> list[Job]:
    """The jobs of `--jobs FILE`, or the single job given by the flags."""
    if args.jobs is not None:
        return read_jobs(args.jobs, args.seed)
    missing = [f"--{key}" for key in JOB_KEYS if getattr(args, key) is None]
    if missing:
        raise EmodiffError(f"Give {', '.join(missing)} (or --jobs FILE).")
    return [Job(args.identity, args.audio, args.emotion, args.intensity, args.out, args.seed)]


def run(args: argparse.Namespace) -> int:
    settings = SampleSettings(args.checkpoint, schedule_options(args), args.steps, args.sampler, args.cfg_audio,
                              args.cfg_exp, args.preview, not args.no_progress, args.sr, args.sr_weights)
    failures = sample_videos(jobs_of(args), settings, args.batch_size, inference_options(args))
    return 1 if failures else 0
