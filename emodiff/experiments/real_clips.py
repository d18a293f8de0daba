"""Train on a folder of talking-head clips and score self-reenactment on their held-out seconds (`emodiff real-clips`,
described in emodiff/cli/real_clips.py).

`run_experiment` splits every clip with speech in time (the last `split.heldout_fraction` never trained on),
prepares both parts into clip stores, trains the denoiser and assembles the pipeline, generates every held-out
segment from its first frame and its own speech beside two baselines (`still`, `delayed`), and scores them with
`emodiff evaluate`'s code; every step is resumable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from emodiff.data.audio_features import check_speech, n_video_frames
from emodiff.data.datasets import frames_to_tensor, to_uint8
from emodiff.data.media import SAMPLE_RATE, VideoWriter, load_audio, probe, read_video
from emodiff.data.prepare import PrepareSettings, find_sources, prepare
from emodiff.data.store import ClipStore
from emodiff.files import atomic_path, copy_atomic, write_json_atomic, write_text_atomic
from emodiff.errors import EmodiffError
from emodiff.train.common import CONFIG_DIR, apply_overrides, load_config, merge_overrides

MODEL, REAL_MOTION = "model", "model_real_motion"  # generated runs, scored against "real"
BASELINES = ("still", "delayed")
REAL = "real"
TIMINGS_FILE = "timings.json"


def load_experiment_config(path: str | Path, overrides: list[str]) -> tuple[DictConfig, DictConfig]:
    """The experiment config with `overrides`, and the denoiser config it makes: `denoiser_config` (a stage config
    in configs/, or a path) merged with the experiment's `denoiser` entries. An override `denoiser.KEY=VALUE` may name
    any key of the stage config."""
    stage = [o.removeprefix("denoiser.") for o in overrides if o.startswith("denoiser.")]
    config = load_config(path, [o for o in overrides if not o.startswith("denoiser.")])
    base = Path(config.denoiser_config)
    denoiser = load_config(base if base.is_file() else CONFIG_DIR / base)
    return config, apply_overrides(merge_overrides(denoiser, config.get("denoiser") or {}), stage)


def split_clips(inputs: list[str | Path], out: Path, heldout_fraction: float, min_seconds: float,
                fps: float) -> dict[str, str]:
    """Cut every video under `inputs` into out/train/<clip>.mp4 (the first 1 − f of its frames) and
    out/heldout/<clip>.mp4 (the rest), each with its part of the speech. Returns {source: why it was left out}."""
    if not 0 < heldout_fraction < 1:
        raise EmodiffError(f"split.heldout_fraction must lie between 0 and 1, not {heldout_fraction}.")
    left_out: dict[str, str] = {}
    for source in tqdm(find_sources(inputs), desc="split clips", unit="clip"):
        train_path, heldout_path = (out / part / f"{source.clip_id}.mp4" for part in ("train", "heldout"))
        if train_path.is_file() and heldout_path.is_file():
            continue
        try:
            if not probe(source.path).has_audio:
                raise EmodiffError("it has no sound track")
            audio = load_audio(source.path)
            check_speech(audio, "its sound track")
            frames = list(read_video(source.path, fps))
        except EmodiffError as err:
            left_out[str(source.path)] = str(err).rstrip(".")
            continue
        cut = round(len(frames) * (1 - heldout_fraction))
        if min(cut, len(frames) - cut) < min_seconds * fps:
            left_out[str(source.path)] = (f"it lasts {len(frames) / fps:.1f} s, too short for parts of at least "
                                          f"{min_seconds:g} s")
            continue
        audio_cut = round(cut / fps * SAMPLE_RATE)
        for path, part, sound in ((train_path, frames[:cut], audio[:audio_cut]),
                                  (heldout_path, frames[cut:], audio[audio_cut:])):
            with VideoWriter(path, fps, sound) as writer:
                for frame in part:
                    writer.write(frame)
    return left_out


def delayed(frames: np.ndarray, shift: int) -> np.ndarray:
    """The frames `shift` frames late: the first frame repeats until the real ones start."""
    return np.concatenate([frames[:1].repeat(min(shift, len(frames)), 0), frames[:max(len(frames) - shift, 0)]])


def write_video(path: Path, frames: np.ndarray, fps: float, audio: np.ndarray) -> None:
    with VideoWriter(path, fps, audio) as writer:
        for frame in frames:
            writer.write(frame)


def self_reenactment(pipeline_dir: Path, store: ClipStore, out: Path, steps: int, sampler: str, seed: int,
                     delay_seconds: float, cfg_audio: float | None = None, real_motion: bool = False) -> list[str]:
    """Write out/<run>/<clip>.mp4 for every held-out clip: the real segment at the pipeline's resolution (`real`),
    the pipeline's frames from the segment's first frame and speech (`model`; neutral, k = 0; `cfg_audio` is the
    audio guidance scale, None: none), the first frame repeated (`still`) and the real segment `delay_seconds` late
    (`delayed`). With `real_motion`, also `model_real_motion`: the same sampling with the real previous frames as
    motion frames (teacher forcing, as in training), which tells the denoiser's own error from the rollout's.
    Videos that exist are kept. Returns the clip ids."""
    from emodiff.pipeline import EmoDiffPipeline

    clip_ids = store.clip_ids()
    pipeline = EmoDiffPipeline.from_pretrained(pipeline_dir)
    resolution, fps = pipeline.settings["resolution"], pipeline.settings["fps"]
    for run in (MODEL, *([REAL_MOTION] if real_motion else [])):
        clips = [store.clip(c) for c in clip_ids if not (out / run / f"{c}.mp4").is_file()]
        if not clips:
            continue
        audios = [clip.audio()[0] for clip in clips]
        videos = [pipeline.conditions(np.array(clip.frames[0]), audio, "neutral", 0.0, seed=seed, aligned=True)
                  for clip, audio in zip(clips, audios)]
        real = [frames_to_tensor(np.array(clip.frames), resolution) for clip in clips] if run == REAL_MOTION else None
        generated: list[list[np.ndarray]] = [[] for _ in clips]
        for _, frames in pipeline.sample(videos, steps=steps, sampler=sampler, cfg_audio=cfg_audio,
                                         seeds=[seed] * len(clips), real_frames=real):
            for v, frame in frames.items():
                generated[v].append(to_uint8(frame))
        for clip, audio, frames in zip(clips, audios, generated):
            write_video(out / run / f"{clip.clip_id}.mp4", np.stack(frames[:clip.n_frames]), fps, audio)
    for c in clip_ids:
        if all((out / run / f"{c}.mp4").is_file() for run in (REAL, *BASELINES)):
            continue
        clip = store.clip(c)
        audio = clip.audio()[0]
        n = min(n_video_frames(len(audio), fps), clip.n_frames)  # the length of the generated video
        real = to_uint8(frames_to_tensor(np.array(clip.frames[:n]), resolution))
        for run, video in ((REAL, real), ("still", real[:1].repeat(n, 0)),
                           ("delayed", delayed(real, round(delay_seconds * fps)))):
            write_video(out / run / f"{c}.mp4", video, fps, audio)
    return clip_ids


def side_by_side(videos: Path, clip_ids: list[str], path: Path, fps: float) -> None:
    """One mp4 of every clip in turn, real | generated, with its speech."""
    with VideoWriter(path, fps, np.concatenate([load_audio(videos / REAL / f"{c}.mp4") for c in clip_ids])) as writer:
        for c in clip_ids:
            real, model = (list(read_video(videos / run / f"{c}.mp4", fps)) for run in (REAL, "model"))
            for a, b in zip(real, model):
                writer.write(np.concatenate([a, b], axis=1))


def contact_sheet(videos: Path, clip_ids: list[str], path: Path, fps: float, columns: int = 6) -> None:
    """A PNG with, per clip, a row of real frames above the generated frames at the same times."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(columns * 1.2, len(clip_ids) * 2.5))
    axes = fig.subplots(2 * len(clip_ids), columns, squeeze=False)
    for row, c in enumerate(clip_ids):
        real, model = (np.stack(list(read_video(videos / run / f"{c}.mp4", fps))) for run in (REAL, "model"))
        picks = np.linspace(0, min(len(real), len(model)) - 1, columns).astype(int)
        for col, i in enumerate(picks):
            for k, (frames, name) in enumerate(((real, "real"), (model, "generated"))):
                ax = axes[2 * row + k, col]
                ax.imshow(frames[i])
                ax.set_xticks([]), ax.set_yticks([])
                if col == 0:
                    ax.set_ylabel(f"{c}\n{name}" if k == 0 else name, fontsize=6)
                if k == 0:
                    ax.set_title(f"{i / fps:.1f} s", fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


def summary_markdown(report: dict, config: DictConfig, denoiser: DictConfig, left_out: dict[str, str],
                     timings: dict[str, float], command: str) -> str:
    """real_clips.md: the table of the runs against the real segments, with the settings and the wall times."""
    columns = [("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("m_lmd", "M-LMD ↓"), ("f_lmd", "F-LMD ↓"),
               ("mouth_r", "mouth r ↑"), ("psnr_drift", "drift (dB, last − first s)"), ("lse_c", "LSE-C ↑"),
               ("lse_d", "LSE-D ↓")]
    metrics = report["metrics"]
    shown = [(k, t) for k, t in columns if any(k in m for m in metrics.values())]
    lines = ["# Self-reenactment on held-out seconds of real clips", "",
             f"Command: `{command}`", "",
             f"Held out: the last {config.split.heldout_fraction:.0%} of every clip, never trained on. Each "
             "held-out segment is generated from its first frame and its own speech (neutral, k = 0) and compared with "
             f"the real frames at {denoiser.data.resolution} px (evaluated as {config.evaluate.size} px crops; "
             "`emodiff evaluate --aligned`). Baselines on the same segments: `still` = the identity frame repeated, "
             f"`delayed` = the real segment {config.delay_seconds:g} s late; `reference` = the real segment against "
             f"itself." + (f" `{REAL_MOTION}` = the model given the real previous frames as motion frames (teacher "
                           "forcing, as in training): its own error, without what the autoregressive rollout adds."
                           if REAL_MOTION in metrics else ""), "",
             "| run | " + " | ".join(t for _, t in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for run in [r for r in ("reference", MODEL, REAL_MOTION, *BASELINES) if r in metrics]:
        values = metrics[run]
        lines.append(f"| {run} | " + " | ".join(_cell(values.get(k)) for k, _ in shown) + " |")
    lines += ["", "Wall time (s, this machine; a step killed and resumed counts the sitting that finished it): "
              + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "",
              f"Denoiser: {denoiser.train.max_steps} steps at batch {denoiser.train.batch_size}, "
              f"{denoiser.data.resolution} px, prediction {denoiser.diffusion.get('prediction_type', 'epsilon')}, "
              f"expression smoothing {denoiser.data.get('expression_smoothing', 0)} frames, "
              f"base channels {denoiser.unet.base_channels}, motion-frame mouth box "
              f"{denoiser.unet.get('motion_mouth_box')}, motion drop {denoiser.train.motion_drop}; sampling "
              f"{config.sample.sampler} {config.sample.steps} steps, audio guidance {config.sample.get('cfg_audio') or 1}.",
              ""]
    if report.get("skipped"):
        lines += ["Not computed: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()), ""]
    if left_out:
        lines += ["Clips left out: " + "; ".join(f"{k}: {v}" for k, v in left_out.items()), ""]
    lines += ["Files: metrics.md (every metric), side_by_side.mp4 (real | generated), contact_sheet.png.", ""]
    return "\n".join(lines)


def _cell(value: float | str | None) -> str:
    """A table cell: – for a missing value, ∞ for an infinite one (metrics.json writes it as "inf")."""
    if value is None:
        return "–"
    value = float(value)
    return "∞" if np.isinf(value) else f"{value:.3f}"


class Timings:
    """Wall seconds per step of the sittings that worked on it, added up (RUN/timings.json); a step done whole again
    in every sitting (the evaluation) keeps its last time."""

    def __init__(self, path: Path):
        self.path = path
        self.values: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def add(self, step: str, seconds: float, redone: bool = False) -> None:
        self.values[step] = seconds if redone else self.values.get(step, 0.0) + seconds
        write_json_atomic(self.path, self.values)


def run_experiment(sources: list[str], out: Path, config_path: Path, overrides: list[str],
                   report_dir: Path | None = None, command: str = "emodiff real-clips") -> dict:
    """Steps 1–6 of the module docstring; returns the evaluation report."""
    from emodiff.assemble import assemble
    from emodiff.metrics.evaluate import WeightFiles, evaluate_folders
    from emodiff.train import denoiser as denoiser_stage

    config, denoiser = load_experiment_config(config_path, overrides)
    out.mkdir(parents=True, exist_ok=True)
    timings = Timings(out / TIMINGS_FILE)
    fps = float(config.fps)

    started = time.perf_counter()
    left_out = split_clips(sources, out / "split", config.split.heldout_fraction, config.split.min_seconds, fps)
    if not any((out / "split" / "train").glob("*.mp4")):
        reasons = "; ".join(f"{k}: {v}" for k, v in left_out.items())
        raise EmodiffError(f"No usable clip in {', '.join(sources)} (a clip needs speech and at least "
                           f"{config.split.min_seconds / (1 - config.split.heldout_fraction):.1f} s): {reasons}.")
    settings = PrepareSettings(size=config.prepare.size, fps=fps)
    for part in ("train", "heldout"):
        prepare([out / "split" / part], out / f"store_{part}", settings, workers=config.prepare.workers)
    train_store, heldout_store = ClipStore.open(out / "store_train"), ClipStore.open(out / "store_heldout")
    usable = sorted(set(train_store.clip_ids()) & set(heldout_store.clip_ids()))
    for store in (train_store, heldout_store):
        for entry in store.manifest().values():
            if entry.get("status") == "failed":
                left_out[entry["source"]] = entry.get("error", "prepare failed")
    if not usable:
        raise EmodiffError(f"No clip in {', '.join(sources)} has a face in both its parts: "
                           + "; ".join(f"{k}: {v}" for k, v in left_out.items()) + ".")
    timings.add("split and prepare", time.perf_counter() - started)

    denoiser_dir = out / "denoiser"
    if not (denoiser_dir / "unet").is_dir():
        started = time.perf_counter()
        denoiser.data.store = str(out / "store_train")
        denoiser.output_dir = str(denoiser_dir)
        denoiser_stage.train(denoiser, resume="latest")
        timings.add("train", time.perf_counter() - started)
    pipeline_dir = out / "pipeline"
    if not (pipeline_dir / "model_index.json").is_file():
        assemble(denoiser_dir, train_store, pipeline_dir, steps=config.sample.steps,
                 guidance=(config.sample.get("cfg_audio") or 1.0, 1.0), sampler=config.sample.sampler)

    started = time.perf_counter()
    videos = out / "videos"
    with torch.inference_mode():
        self_reenactment(pipeline_dir, heldout_store, videos, config.sample.steps, config.sample.sampler, config.seed,
                         config.delay_seconds, config.sample.get("cfg_audio"), config.sample.get("real_motion", False))
    timings.add("sample", time.perf_counter() - started)

    started = time.perf_counter()
    runs = (MODEL, *([REAL_MOTION] if config.sample.get("real_motion", False) else []), *BASELINES)
    report_out = out / "report"
    evaluate_folders(videos / REAL, {run: videos / run for run in runs}, report_out,
                     WeightFiles(**config.evaluate.weights), fps, config.evaluate.size, aligned=True,
                     expression="none")
    report = json.loads((report_out / "metrics.json").read_text())
    clip_ids = sorted(p.stem for p in (videos / "model").glob("*.mp4"))
    side_by_side(videos, clip_ids, report_out / "side_by_side.mp4", fps)
    contact_sheet(videos, clip_ids, report_out / "contact_sheet.png", fps)
    timings.add("evaluate", time.perf_counter() - started, redone=True)
    text = summary_markdown(report, config, denoiser, left_out, timings.values, command)
    write_text_atomic(report_out / "real_clips.md", text)
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        for name in ("real_clips.md", "metrics.md", "metrics.json", "side_by_side.mp4", "contact_sheet.png"):
            copy_atomic(report_out / name, report_dir / name)
    print(text)
    return report
