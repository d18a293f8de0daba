"""The demo (`emodiff demo`, described in emodiff/cli/demo.py): a held-out synthetic face speaks with a rising
intensity and an emotion change.

A face the demo pipeline never saw (an identity of the synthetic world, docs/design.md §11) speaks synthetic speech
while the emotion changes from happy to surprised and k follows key frames, through the ordinary sampling path
(`EmoDiffPipeline.conditions` + `sample`, eq. 14–15 for the expression condition). The synthetic world is a test
bed: the demo shows the mechanics of emotion and intensity control on cartoon faces.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from emodiff.control import parse_intensity, plot_schedule
from emodiff.data.labels import EMOTIONS
from emodiff.data.media import VideoWriter
from emodiff.data.store import write_wav
from emodiff.data.synthetic import SyntheticWorld, save_render, trained_world, unseen_identities
from emodiff.errors import EmodiffError
from emodiff.files import atomic_path
from emodiff.inference import InferenceOptions
from emodiff.metrics.super_resolution import describe, recorded
from emodiff.sample import SampleRequest, load_pipeline
from emodiff.data.datasets import to_uint8

SECONDS = 4.0
EMOTION = "happy@0,surprised@2"
INTENSITY = "0:0,1.6:1,2.2:0.3,4:1"  # ramp up while happy, drop at the change, ramp up again while surprised
VIEW_SIZE = 256  # frames are enlarged by pixel repetition to at least this size for watching
SHEET_FRAMES = 8


def bundled_checkpoint() -> Path:
    """emodiff/assets/demo inside the installed package."""
    return Path(str(resources.files("emodiff"))) / "assets" / "demo"


def demo_world(checkpoint: Path, resolution: int, fps: float) -> SyntheticWorld:
    """The synthetic world the pipeline was trained in (`synthetic_world.json`: seed, size), else the world of
    seed 0 at the pipeline's resolution."""
    description = trained_world(checkpoint) or {}
    return SyntheticWorld(int(description.get("seed", 0)), int(description.get("size", resolution)), int(round(fps)))


def enlarge(frame: np.ndarray) -> np.ndarray:
    """Repeat pixels so a small frame is at least VIEW_SIZE wide."""
    factor = max(1, -(-VIEW_SIZE // frame.shape[0]))
    return frame.repeat(factor, axis=0).repeat(factor, axis=1)


def sheet_frames(n_frames: int) -> list[int]:
    """The indices of the (up to) SHEET_FRAMES evenly spaced frames a contact sheet shows."""
    return sorted(set(np.linspace(0, n_frames - 1, SHEET_FRAMES).round().astype(int).tolist()))


def write_contact_sheet(path: Path, identity: np.ndarray, frames: dict[int, np.ndarray], intensity: np.ndarray,
                        emotion_weights: np.ndarray, fps: float) -> None:
    """The identity image, then the frames {index: image} of `sheet_frames` captioned with time, k and dominant
    emotion; written under a temporary name and renamed."""
    figure = Figure(figsize=(1.5 * (len(frames) + 1), 2.0))
    axes = figure.subplots(1, len(frames) + 1)
    axes[0].imshow(identity)
    axes[0].set_xlabel("identity", fontsize=8)
    for axis, i in zip(axes[1:], sorted(frames)):
        axis.imshow(frames[i])
        axis.set_xlabel(f"{i / fps:.1f} s\nk = {intensity[i]:.2f}\n{EMOTIONS[int(emotion_weights[i].argmax())]}",
                        fontsize=8)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100)


def run_demo(out: Path, checkpoint: Path | None = None, steps: int | None = None, seed: int = 0,
             cfg_exp: float | None = None, inference: InferenceOptions = InferenceOptions()) -> dict[str, Path]:
    """Write the demo into `out` with the pipeline at `checkpoint` (default: the bundled one), `steps` steps of its own
    sampler and expression guidance `cfg_exp` (default: the pipeline's own); returns the written files by name."""
    checkpoint = checkpoint if checkpoint is not None else bundled_checkpoint()
    if not (checkpoint / "model_index.json").is_file():
        raise EmodiffError(f"No demo pipeline at {checkpoint}; make one with scripts/train_synthetic.sh "
                           "(it trains in the synthetic world and writes emodiff/assets/demo), or pass --checkpoint DIR.")
    pipeline = load_pipeline(checkpoint, sr=None).accelerate_inference(inference)  # with its own super-resolution
    fps, resolution = pipeline.settings["fps"], pipeline.settings["resolution"]
    world = demo_world(checkpoint, resolution, fps)
    (identity_index,) = unseen_identities(trained_world(checkpoint) or {}, 1)
    identity = world.portrait(identity_index)
    n_frames = int(round(SECONDS * fps))
    rng = np.random.default_rng(seed)
    audio, _ = world.speech(n_frames, parse_intensity(INTENSITY, n_frames, fps), rng)
    video = pipeline.conditions(identity, audio, EMOTION, INTENSITY, seed=seed, aligned=True)
    paths = {"video": out / "demo.mp4", "schedule": out / "intensity.png",
             "sheet": out / "contact_sheet.png", "identity": out / "identity.png",
             "speech": out / "speech.wav"}
    out.mkdir(parents=True, exist_ok=True)
    save_render(paths["identity"], world, identity_index)
    write_wav(paths["speech"], audio)
    # the request `emodiff sample` and the app run (None: the pipeline's own sampler, steps and guidance)
    sr = "none" if pipeline.super_resolution is None else f"x{pipeline.super_resolution.config.scale}"
    request = SampleRequest(paths["identity"], paths["speech"], EMOTION, INTENSITY, steps=steps, cfg_exp=cfg_exp,
                            seed=seed, sr=sr)
    settings = request.settings(checkpoint)
    print(f"demo: {pipeline.describe_sampling(settings.sampler, settings.steps, settings.cfg_audio, settings.cfg_exp)}")
    picks, frames = sheet_frames(n_frames), {}
    with VideoWriter(paths["video"], fps, audio=audio,
                     comment=describe(pipeline.super_resolution, resolution)) as writer:
        for i, batch in pipeline.sample([video], steps=settings.steps, sampler=settings.sampler,
                                        cfg_audio=settings.cfg_audio, cfg_expression=settings.cfg_exp,
                                        seeds=[request.seed]):
            frame = enlarge(to_uint8(batch[0]))
            writer.write(frame)
            if i in picks:
                frames[i] = frame
    intensity, weights = video.intensity.numpy(), video.emotion_weights.numpy()
    plot_schedule(intensity, fps, paths["schedule"], weights, title=f"demo: {EMOTION}, intensity {INTENSITY}")
    write_contact_sheet(paths["sheet"], enlarge(identity), frames, intensity, weights, fps)
    print(f"demo: identity syn{identity_index:03d} of synthetic world seed {world.seed} (not seen in training), "
          f"emotion {EMOTION}, intensity {INTENSITY}")
    for name, path in paths.items():
        print(f"wrote {path}" + (f" ({n_frames} frames at {fps:g} fps, with its speech; super-resolution "
                                 f"{recorded(describe(pipeline.super_resolution, resolution))})"
                                 if name == "video" else ""))
    print(f"demo: the same request through `emodiff sample`, run in {out}: {request.command(checkpoint)}")
    return paths
