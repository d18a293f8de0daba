"""Train and evaluate the whole system on the synthetic world, end to end, and write a report (docs/design.md §11).

`synthetic_run` trains the stages (each skipped when its result is already in the run folder), assembles the
pipeline and scores held-out identities speaking held-out speech with the readout: linearity (Spearman ρ, FLIE of
EMOdiffhead eq. 20), EmoAcc, lip sync, identity PSNR / SSIM, drift and the intensity predictor; every number also
on the true renders. `emodiff synthetic-run --help` (emodiff/cli/synthetic_run.py) lists the measures in full.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from scipy.stats import pearsonr, spearmanr

from emodiff.assemble import assemble
from emodiff.control import parse_intensity
from emodiff.data.audio_features import extract_audio_features
from emodiff.data.datasets import frames_to_tensor, to_uint8
from emodiff.data.labels import EMOTIONS, NEUTRAL
from emodiff.data.store import ClipStore
from emodiff.files import atomic_path, write_json_atomic, write_text_atomic
from emodiff.data.synthetic import EMOTION_DIRECTIONS, EXPRESSION_PARAMS, MOUTH_OPEN, SyntheticWorld, make_store
from emodiff.errors import EmodiffError
from emodiff.metrics.linearity import flie
from emodiff.metrics.quality import psnr, ssim
from emodiff.models.readout import ExpressionReadout
from emodiff.pipeline import EmoDiffPipeline, VideoConditions
from emodiff.train import denoiser, expression_gan, intensity, readout
from emodiff.train.common import CONFIG_DIR, apply_overrides, load_config, merge_overrides

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_CONFIG = CONFIG_DIR / "synthetic_run.yaml"
GOALS = {"spearman": 0.9, "spearman_gap": 0.05, "emotion_accuracy": 0.85, "mouth_pearson": 0.7, "psnr": 26.0,
         "ssim": 0.85, "drift_db": 1.0, "k0_gap": 0.1, "flie_ratio": 2.0}
_TEST_STREAM = 7  # the world's random stream of held-out speech
EMOTIONAL = [e for e in range(len(EMOTIONS)) if e != NEUTRAL]
N_PARAMS = len(EXPRESSION_PARAMS)


def run_config(path: str | Path, profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The run config with the profile's settings merged over it, then the `key=value` overrides."""
    config = load_config(path)
    if profile is not None:
        if profile not in config.get("profiles", {}):
            raise EmodiffError(f"Profile '{profile}' is not in {path}; choose one of: {', '.join(config.profiles)}.")
        config = OmegaConf.merge(config, config.profiles[profile])
    config = apply_overrides(config, overrides)
    config.profile = profile or "full"
    return config


# ------------------------------------------------------------------------------------------------- training
def stage_config(config: DictConfig, stage: str, store: Path, output_dir: Path) -> DictConfig:
    """A stage's own YAML with the run's overrides, store and output folder."""
    spec = config.stages[stage]
    merged = merge_overrides(load_config(CONFIG_DIR / spec.config), spec.get("overrides", {}))
    merged.output_dir, merged.seed = str(output_dir), config.seed
    if "data" in merged:
        merged.data.store = str(store)
    return merged


def train_all(config: DictConfig, out: Path) -> ClipStore:
    """Render the store and train the four stages into OUT, skipping what is finished."""
    world = config.world
    store = make_store(out / "store", world.identities, world.clips, world.frames, world.size, seed=world.seed)
    stages = (("denoiser", denoiser, "unet"), ("expression", expression_gan, "generator"),
              ("intensity", intensity, "model"), ("readout", readout, "model"))
    for stage, module, result in stages:
        folder = out / stage
        if (folder / result).exists():
            print(f"{stage}: finished run in {folder}")
            continue
        stage_cfg = stage_config(config, stage, store.root, folder)
        if stage == "readout":
            stage_cfg.world.seed = world.seed
        module.train(stage_cfg, resume="latest")
    return store


# ----------------------------------------------------------------------------------------------- evaluation
@dataclass
class Speech:
    """Held-out speech: 16 kHz audio, its features (T, F), true mouth opening (T,) and true intensity k (T,)."""

    audio: np.ndarray
    features: np.ndarray
    mouth: np.ndarray
    intensity: np.ndarray


def held_out_speech(world: SyntheticWorld, n_frames: int, index: int, level: int | None) -> Speech:
    """Speech from the world's test stream (never in the store); calm (k = 0) when `level` is None."""
    rng = np.random.default_rng([world.seed, _TEST_STREAM, index])
    k = np.zeros(n_frames, np.float32) if level is None else world.intensity_curve(level, n_frames, rng)
    audio, mouth = world.speech(n_frames, k, rng)
    return Speech(audio, extract_audio_features(audio, world.fps, "mel"), mouth, k)


@dataclass
class Video:
    """One sampled video and its truth: frames (T, S, S, 3) uint8 and the true render of what was asked."""

    identity: int
    emotion: int
    k: float | None  # None: the intensity predicted from the audio
    speech: int
    condition: np.ndarray  # (T, N_PARAMS) e_o
    frames: np.ndarray
    truth: np.ndarray


def sample_videos(pipeline: EmoDiffPipeline, world: SyntheticWorld, identities: list[int], speeches: list[Speech],
                  intensities: list[float], steps: int, sampler: str, seed: int, cfg_audio: float,
                  cfg_expression: float, audio_intensity: bool) -> list[Video]:
    """Every (identity, speech, emotion, k) of the sweep, plus the audio-predicted intensity if `audio_intensity`,
    sampled as one batch (classifier-free guidance scales as in `EmoDiffPipeline.sample`; 1 = none)."""
    resolution = pipeline.settings["resolution"]
    jobs, conditions = [], []
    if world.size != resolution:
        raise EmodiffError(f"The world renders {world.size} px but the pipeline samples {resolution} px.")
    for identity in identities:
        image = frames_to_tensor(world.render(world.identity(identity), np.zeros((1, N_PARAMS)))[0])
        for s, speech in enumerate(speeches):
            n_frames = len(speech.features)
            for emotion in EMOTIONAL:
                weights = np.zeros((n_frames, len(EMOTIONS)), np.float32)
                weights[:, emotion] = 1.0
                for k in [*intensities, *([None] if audio_intensity else [])]:
                    schedule = (parse_intensity("audio", n_frames, world.fps, audio_features=speech.features,
                                                predictor=pipeline.intensity_predictor) if k is None
                                else np.full(n_frames, k, np.float32))
                    expression = pipeline.expression_sequence(weights, schedule, seed + s)
                    jobs.append((identity, emotion, k, s, expression[:, :N_PARAMS]))
                    conditions.append(VideoConditions(
                        identity=image, audio=torch.as_tensor(speech.features, dtype=torch.float32),
                        expression=torch.as_tensor(expression, dtype=torch.float32),
                        intensity=torch.as_tensor(schedule, dtype=torch.float32),
                        emotion_weights=torch.as_tensor(weights)))
    frames: list[list[np.ndarray]] = [[] for _ in jobs]
    for _, batch in pipeline.sample(conditions, steps=steps, sampler=sampler, cfg_audio=cfg_audio,
                                    cfg_expression=cfg_expression, seeds=range(len(jobs))):
        for v, frame in batch.items():
            frames[v].append(to_uint8(frame))
    videos = []
    for (identity, emotion, k, s, condition), video in zip(jobs, frames):
        asked = condition.copy()
        asked[:, MOUTH_OPEN] = speeches[s].mouth
        videos.append(Video(identity, emotion, k, s, condition, np.stack(video),
                            world.render(world.identity(identity), asked)))
    return videos



def video_cache(path: Path, videos: list[Video] | None = None) -> list[Video] | None:
    """Save the sampled videos to `path` (.npz, atomically), or load them when `videos` is None and it exists."""
    fields = ("identity", "emotion", "k", "speech")
    if videos is None:
        if not path.is_file():
            return None
        data = np.load(path)
        jobs = json.loads(str(data["jobs"]))
        return [Video(**job, condition=data[f"condition{i}"], frames=data[f"frames{i}"], truth=data[f"truth{i}"])
                for i, job in enumerate(jobs)]
    arrays = {"jobs": np.array(json.dumps([{f: getattr(v, f) for f in fields} for v in videos]))}
    for i, v in enumerate(videos):
        arrays.update({f"condition{i}": v.condition, f"frames{i}": v.frames, f"truth{i}": v.truth})
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    return videos


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r, 0 when either side is constant."""
    return float(pearsonr(a, b)[0]) if np.std(a) > 1e-8 and np.std(b) > 1e-8 else 0.0


def score(videos: list[Video], reads: list[tuple[np.ndarray, np.ndarray]], speeches: list[Speech],
          intensities: list[float]) -> dict:
    """The metrics of the module docstring for one set of frames (generated or true) read by the readout."""
    sweep = [(v, r) for v, r in zip(videos, reads) if v.k is not None]
    per_emotion = {}
    for emotion in EMOTIONAL:
        direction = EMOTION_DIRECTIONS[emotion]
        mine = [(v, r) for v, r in sweep if v.emotion == emotion]
        ks = np.array([v.k for v, _ in mine])
        projection = np.array([(r[0] @ direction).mean() for _, r in mine])
        groups = {(v.identity, v.speech) for v, _ in mine}
        flie_read, flie_condition = [], []
        for group in sorted(groups):
            ordered = sorted((v.k, v, r) for v, r in mine if (v.identity, v.speech) == group)
            flie_read.append(flie([r[0][:, 1:] for _, _, r in ordered]))
            flie_condition.append(flie([v.condition[:, 1:] for _, v, _ in ordered]))
        per_emotion[EMOTIONS[emotion]] = {
            "spearman": float(spearmanr(ks, projection)[0]) if projection.std() > 0 else 0.0,
            "projection_by_k": [float(projection[ks == k].mean()) for k in intensities],
            "flie_readout": float(np.mean(flie_read)), "flie_condition": float(np.mean(flie_condition)),
        }
    strongest = [(v, r) for v, r in sweep if v.k == max(intensities)]
    correct = [int(r[1].mean(0).argmax() == v.emotion) for v, r in strongest]
    mouth = [_pearson(r[0][:, MOUTH_OPEN], speeches[v.speech].mouth) for v, r in zip(videos, reads)]
    return {
        "per_emotion": per_emotion,
        "spearman_mean": float(np.mean([e["spearman"] for e in per_emotion.values()])),
        "flie_readout_mean": float(np.mean([e["flie_readout"] for e in per_emotion.values()])),
        "flie_condition_mean": float(np.mean([e["flie_condition"] for e in per_emotion.values()])),
        "emotion_accuracy": float(np.mean(correct)),
        "mouth_pearson": float(np.mean(mouth)),
    }


def evaluate(config: DictConfig, out: Path) -> dict:
    """Sample the held-out sweep (cached in OUT/samples.npz) and score it; writes OUT/metrics.json."""
    ev, w = config.evaluation, config.world
    world = SyntheticWorld(w.seed, w.size)
    pipeline = EmoDiffPipeline.from_pretrained(out / "pipeline")
    if ev.motion_noise is not None:  # compare sampling-time motion-frame noise levels on one trained pipeline
        pipeline.settings["motion_noise"] = int(ev.motion_noise)
    reader = ExpressionReadout.from_pretrained(out / "readout" / "model").eval()
    identities = list(range(w.identities, w.identities + w.held_out))
    speeches = [held_out_speech(world, ev.frames, i, level=(2, 3, 1)[i % 3]) for i in range(ev.audio_clips)]
    intensities = [float(k) for k in ev.intensities]
    drift = drift_check(pipeline, world, identities, int(ev.drift_frames), int(ev.drift_window), float(ev.drift_k),
                        ev.steps, ev.sampler, ev.seed, ev.cfg_audio, ev.cfg_expression, out)
    videos = video_cache(out / "samples.npz")
    if videos is None:
        torch.manual_seed(ev.seed)
        videos = video_cache(out / "samples.npz", sample_videos(pipeline, world, identities, speeches, intensities,
                                                                 ev.steps, ev.sampler, ev.seed, ev.cfg_audio,
                                                                 ev.cfg_expression, audio_intensity=True))
    generated = [reader.read(v.frames) for v in videos]
    truth = [reader.read(v.truth) for v in videos]
    identity_images = {i: world.render(world.identity(i), np.zeros((1, N_PARAMS))) for i in identities}
    # the intensity predictor on held-out speech of every level (calm speech has k = 0)
    tests = [held_out_speech(world, 4 * w.frames, 1000 + i, level=(None, 1, 2, 3)[i % 4]) for i in range(ev.intensity_clips)]
    predicted = [parse_intensity("audio", len(t.features), world.fps, audio_features=t.features,
                                 predictor=pipeline.intensity_predictor) for t in tests]
    metrics = {
        "generated": score(videos, generated, speeches, intensities),
        "truth": score(videos, truth, speeches, intensities),
        "drift": drift,
        "identity": {
            "psnr": float(np.mean([psnr(v.truth, v.frames) for v in videos])),
            "ssim": float(np.mean([ssim(v.truth, v.frames) for v in videos])),
            "psnr_identity_image": float(np.mean([psnr(v.truth, np.broadcast_to(identity_images[v.identity], v.truth.shape))
                                                  for v in videos])),
            "ssim_identity_image": float(np.mean([ssim(v.truth, np.broadcast_to(identity_images[v.identity], v.truth.shape))
                                                  for v in videos])),
        },
        "intensity_predictor": {
            "pearson": _pearson(np.concatenate(predicted), np.concatenate([t.intensity for t in tests])),
            "clip_mean_pearson": _pearson(np.array([p.mean() for p in predicted]), np.array([t.intensity.mean() for t in tests])),
        },
        "audio_intensity_videos": [{"emotion": EMOTIONS[v.emotion], "identity": v.identity,
                                    "mean_predicted_projection": float((r[0] @ EMOTION_DIRECTIONS[v.emotion]).mean())}
                                   for v, r in zip(videos, generated) if v.k is None],
        "readout": json.loads((out / "readout" / "model" / "metrics.json").read_text()),
        "goals": GOALS,
        "counts": {"videos": len(videos), "frames_per_video": int(ev.frames), "training_steps": int(
                       config.stages.denoiser.overrides.train.max_steps), "held_out_identities": identities,
                   "speech_clips": int(ev.audio_clips), "steps": int(ev.steps), "sampler": ev.sampler,
                   "cfg_audio": float(ev.cfg_audio), "cfg_expression": float(ev.cfg_expression),
                   "motion_noise": pipeline.settings["motion_noise"],
                   "forwards_per_frame": pipeline.forwards_per_frame(ev.steps, ev.cfg_audio, ev.cfg_expression)},
    }
    write_json_atomic(out / "metrics.json", metrics)
    _plots(out, videos, generated, truth, speeches, intensities, tests, predicted, drift)
    return metrics



def drift_check(pipeline: EmoDiffPipeline, world: SyntheticWorld, identities: list[int], frames: int, window: int,
                k: float, steps: int | None, sampler: str | None, seed: int, cfg_audio: float | None,
                cfg_expression: float | None, out: Path) -> dict:
    """Drift over a long video: every emotion at intensity k for each identity, speaking one held-out clip of `frames`
    frames (cached in OUT/samples_drift_<frames>.npz); the per-frame PSNR against the true render (mean over the
    videos) and its first − last `window` frames' means (dB)."""
    if not 1 <= window <= frames // 2:
        raise EmodiffError(f"evaluation.drift_window is {window}; it must be between 1 and half of "
                           f"evaluation.drift_frames ({frames}).")
    cache = out / f"samples_drift_{frames}.npz"
    videos = video_cache(cache)
    if videos is None:
        speech = held_out_speech(world, frames, 100, level=2)
        videos = video_cache(cache, sample_videos(pipeline, world, identities, [speech], [k], steps, sampler, seed,
                                                  cfg_audio, cfg_expression, audio_intensity=False))
    curve = np.mean([[psnr(t, f) for t, f in zip(v.truth, v.frames)] for v in videos], axis=0)
    return {"psnr_by_frame": curve.tolist(), "psnr_first": float(curve[:window].mean()),
            "psnr_last": float(curve[-window:].mean()), "drift_db": float(curve[:window].mean() - curve[-window:].mean()),
            "videos": len(videos), "frames": frames, "window": window, "k": k}


def drift_figure(drift: dict) -> Figure:
    """drift.png: the per-frame PSNR of `drift_check`, dashed at the means of its first and last window."""
    from matplotlib.figure import Figure

    curve, window = np.asarray(drift["psnr_by_frame"]), drift["window"]
    fig = Figure(figsize=(6, 2.4))
    ax = fig.subplots()
    ax.plot(np.arange(1, len(curve) + 1), curve, "-")
    for span in (slice(0, window), slice(-window, None)):
        frames = np.arange(1, len(curve) + 1)[span]
        ax.hlines(curve[span].mean(), frames[0], frames[-1], colors="k", linestyles="--")
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR vs true render (dB)")
    ax.set_title(f"drift {drift['drift_db']:.2f} dB over {drift['frames']} frames (first − last {window})", fontsize=9)
    return fig


def _plots(out: Path, videos: list[Video], generated: list, truth: list, speeches: list[Speech],
           intensities: list[float], tests: list[Speech], predicted: list[np.ndarray], drift: dict) -> None:
    """linearity.png, mouth.png, intensity.png, drift.png and contact_sheet.png in OUT (docs/design.md §8: Figure API)."""
    from matplotlib.figure import Figure
    from matplotlib.image import imsave

    def save(fig: Figure, name: str) -> None:
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=80)

    fig = Figure(figsize=(2.2 * len(EMOTIONAL), 2.4))
    axes = fig.subplots(1, len(EMOTIONAL), sharey=True)
    for ax, emotion in zip(axes, EMOTIONAL):
        for reads, style, label in ((generated, "o-", "generated"), (truth, "s--", "true render")):
            projection = [np.mean([(r[0] @ EMOTION_DIRECTIONS[emotion]).mean() for v, r in zip(videos, reads)
                                   if v.emotion == emotion and v.k == k]) for k in intensities]
            ax.plot(intensities, projection, style, label=label, ms=3)
        ax.plot(intensities, intensities, ":", color="grey", label="k")
        ax.set_title(EMOTIONS[emotion], fontsize=9)
        ax.set_xlabel("k")
    axes[0].set_ylabel("readout · d_emotion")
    axes[0].legend(fontsize=6)
    save(fig, "linearity.png")

    shown = next(i for i, v in enumerate(videos) if v.k == max(intensities))
    fig = Figure(figsize=(6, 2.4))
    ax = fig.subplots()
    ax.plot(speeches[videos[shown].speech].mouth, "k-", label="true mouth (speech)")
    ax.plot(generated[shown][0][:, MOUTH_OPEN], "o-", ms=3, label="readout of generated")
    ax.plot(truth[shown][0][:, MOUTH_OPEN], "s--", ms=3, label="readout of true render")
    ax.set_xlabel("frame")
    ax.set_ylabel("mouth open")
    ax.legend(fontsize=7)
    save(fig, "mouth.png")

    fig = Figure(figsize=(3 * min(4, len(tests)), 2.2))
    axes = fig.subplots(1, min(4, len(tests)), sharey=True, squeeze=False)
    for ax, test, k in zip(axes[0], tests, predicted):
        ax.plot(test.intensity, "k-", label="true k")
        ax.plot(k, "-", label="predicted from audio")
        ax.set_xlabel("frame")
    axes[0][0].set_ylabel("k")
    axes[0][0].legend(fontsize=7)
    save(fig, "intensity.png")

    save(drift_figure(drift), "drift.png")

    # rows: emotions of the first held-out identity and speech; columns: the k sweep, audio-predicted k, true render
    first = videos[0].identity
    middle = len(videos[0].frames) // 2
    rows = []
    for emotion in EMOTIONAL:
        mine = {v.k: v for v in videos if v.identity == first and v.speech == 0 and v.emotion == emotion}
        cells = [mine[k].frames[middle] for k in intensities] + [mine[None].frames[middle],
                                                                 mine[max(intensities)].truth[middle]]
        rows.append(np.concatenate([np.pad(c, ((1, 1), (1, 1), (0, 0)), constant_values=255) for c in cells], 1))
    sheet = np.concatenate(rows, 0)
    imsave(out / "contact_sheet.png", sheet.repeat(3, 0).repeat(3, 1))


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def goal_rows(metrics: dict) -> list[tuple[str, str, float, bool, float, str]]:
    """(metric, goal, generated value, met, missed by, true-render value) for each goal of GOALS."""
    gen, true, ident, drift = metrics["generated"], metrics["truth"], metrics["identity"], metrics["drift"]
    emotions = list(gen["per_emotion"])
    rho_gap = max(true["per_emotion"][e]["spearman"] - gen["per_emotion"][e]["spearman"] for e in emotions)
    k0_gap = max(abs(gen["per_emotion"][e]["projection_by_k"][0] - true["per_emotion"][e]["projection_by_k"][0])
                 for e in emotions)
    flie_ratio = gen["flie_readout_mean"] / max(true["flie_readout_mean"], 1e-12)

    def at_least(value: float, goal: float) -> tuple[bool, float]:
        return value >= goal, max(0.0, goal - value)

    def at_most(value: float, goal: float) -> tuple[bool, float]:
        return value <= goal, max(0.0, value - goal)

    return [
        ("Spearman ρ(k, readout · d), mean over emotions", f"≥ {GOALS['spearman']}", gen["spearman_mean"],
         *at_least(gen["spearman_mean"], GOALS["spearman"]), f"{true['spearman_mean']:.3f}"),
        ("ρ shortfall against the true render, worst emotion", f"≤ {GOALS['spearman_gap']}", rho_gap,
         *at_most(rho_gap, GOALS["spearman_gap"]), "0"),
        ("EmoAcc at k = 1 (readout emotion head)", f"≥ {GOALS['emotion_accuracy']}", gen["emotion_accuracy"],
         *at_least(gen["emotion_accuracy"], GOALS["emotion_accuracy"]), f"{true['emotion_accuracy']:.3f}"),
        ("Pearson r(readout mouth, true mouth of the speech)", f"≥ {GOALS['mouth_pearson']}", gen["mouth_pearson"],
         *at_least(gen["mouth_pearson"], GOALS["mouth_pearson"]), f"{true['mouth_pearson']:.3f}"),
        ("PSNR against the true render (dB)", f"≥ {GOALS['psnr']:g}", ident["psnr"], *at_least(ident["psnr"], GOALS["psnr"]), "∞"),
        ("SSIM against the true render", f"≥ {GOALS['ssim']}", ident["ssim"], *at_least(ident["ssim"], GOALS["ssim"]), "1"),
        (f"drift: PSNR of frames 1–{drift['window']} − last {drift['window']} of {drift['frames']} (dB)",
         f"≤ {GOALS['drift_db']:g}", drift["drift_db"], *at_most(drift["drift_db"], GOALS["drift_db"]), "0"),
        ("distance of the k = 0 projection from the true render's, worst emotion", f"≤ {GOALS['k0_gap']}", k0_gap,
         *at_most(k0_gap, GOALS["k0_gap"]), "0"),
        ("FLIE of the readout ÷ the true renders'", f"≤ {GOALS['flie_ratio']:g}", flie_ratio,
         *at_most(flie_ratio, GOALS["flie_ratio"]), "1"),
    ]


def write_report(config: DictConfig, out: Path, metrics: dict) -> Path:
    """OUT/report.md: the setting, every number against its goal, per-emotion tables and the figures."""
    gen, true = metrics["generated"], metrics["truth"]
    ident, vae, counts, drift = metrics["identity"], metrics["intensity_predictor"], metrics["counts"], metrics["drift"]
    lines = [
        f"# Synthetic end-to-end run (profile `{config.profile}`)", "",
        f"World seed {config.world.seed}: {config.world.identities} training identities × {config.world.clips} clips × "
        f"{config.world.frames} frames at {config.world.size} px; held-out identities {counts['held_out_identities']} "
        f"(never in the store), {counts['speech_clips']} held-out speech clip(s) of {counts['frames_per_video']} frames; "
        f"{counts['videos']} videos sampled with {counts['sampler']} × {counts['steps']} steps, guidance scales audio "
        f"{counts['cfg_audio']:g} / expression {counts['cfg_expression']:g}, motion frames noised to level "
        f"{counts['motion_noise']}; drift from {drift['videos']} videos of "
        f"{drift['frames']} frames at k = {drift['k']:g}. Every number is also "
        "given for the world's true render of the same request (the ceiling the readout allows).", "",
        "## Goals", "", "| metric | goal | generated | met | missed by | true render |", "|---|---|---|---|---|---|",
    ]
    for name, goal, value, met, missed, ceiling in goal_rows(metrics):
        lines.append(f"| {name} | {goal} | {_fmt(value)} | {'yes' if met else 'no'} | {_fmt(missed)} | {ceiling} |")
    lines += [
        "", "## Other numbers", "",
        f"- FLIE (eq. 20, 7 emotional parameters, mean over emotions): readout of generated {_fmt(gen['flie_readout_mean'])}, "
        f"readout of true renders {_fmt(true['flie_readout_mean'])}, conditioning vectors {_fmt(gen['flie_condition_mean'])}.",
        f"- Identity preservation (no readout: PSNR / SSIM against the true render of the same identity, expression and "
        f"mouth): generated {ident['psnr']:.2f} dB / {_fmt(ident['ssim'])}; the neutral identity image itself "
        f"{ident['psnr_identity_image']:.2f} dB / {_fmt(ident['ssim_identity_image'])}.",
        f"- Intensity VAE on held-out speech (calm and levels 1–3): Pearson r(predicted, true k) per frame "
        f"{_fmt(vae['pearson'])}, of clip means {_fmt(vae['clip_mean_pearson'])}.",
        f"- Readout (held-out world seed): R² mouth_open {_fmt(metrics['readout']['r2']['mouth_open'])}, emotion "
        f"accuracy at k ≥ 0.5 {_fmt(metrics['readout']['emotion_accuracy_k_ge_0.5'])}.",
        "", "## Per emotion", "",
        "| emotion | ρ generated | ρ true | FLIE readout | FLIE readout, true | readout · d at k = " +
        ", ".join(f"{k:g}" for k in config.evaluation.intensities) + " | same, true render |", "|---|---|---|---|---|---|---|",
    ]
    for name, e in gen["per_emotion"].items():
        t = true["per_emotion"][name]
        lines.append(f"| {name} | {_fmt(e['spearman'])} | {_fmt(t['spearman'])} | {e['flie_readout']:.2f} | "
                     f"{t['flie_readout']:.2f} | " + ", ".join(f"{p:.2f}" for p in e["projection_by_k"]) + " | "
                     + ", ".join(f"{p:.2f}" for p in t["projection_by_k"]) + " |")
    lines += ["", "## Figures", "",
              "![linearity](linearity.png)", "", "Readout projected on each emotion's direction against k.", "",
              "![mouth](mouth.png)", "", "Mouth opening over time at k = 1: the speech's truth and the readouts.", "",
              "![intensity](intensity.png)", "", "Intensity predicted from held-out speech against the true k(t).", "",
              "![drift](drift.png)", "", f"PSNR against the true render per frame of the {drift['frames']}-frame videos "
              f"(mean over videos); dashed: the first and last {drift['window']} frames' means "
              f"({drift['psnr_first']:.2f} / {drift['psnr_last']:.2f} dB).", "",
              "![contact sheet](contact_sheet.png)", "",
              "Contact sheet: one held-out identity, middle frame; rows " + ", ".join(EMOTIONS[e] for e in EMOTIONAL) +
              "; columns k = " + ", ".join(f"{k:g}" for k in config.evaluation.intensities) +
              ", the audio-predicted k, and the true render at k = 1.", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def synthetic_run(out: str | Path, config_path: str | Path = DEFAULT_CONFIG, profile: str | None = None,
                  overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """The whole run in `out` with the config at `config_path` (its `profile` and `overrides` applied): train, assemble,
    evaluate; returns the path of report.md."""
    config = run_config(config_path, profile, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, out / "synthetic_run.yaml")
    store = train_all(config, out)
    if not (out / "pipeline" / "model_index.json").is_file():
        ev = config.evaluation  # the report's sampling becomes the pipeline's own default
        assemble(out / "denoiser", store, out / "pipeline", out / "expression", out / "intensity", steps=ev.steps,
                 guidance=(ev.cfg_audio, ev.cfg_expression))
    metrics = evaluate(config, out)
    return write_report(config, out, metrics)
