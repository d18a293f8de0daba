"""End to end in the synthetic world (docs/design.md §11): a denoiser trained briefly on CPU obeys k and the audio.

A small 16² synthetic store (4 identities: a neutral clip at level 1, as in MEAD, and three happy clips each),
the expression generator trained on it with `emodiff.train.expression_gan.train` (level 3 and the neutral
clips), the tiny denoiser config trained with `emodiff.train.denoiser.train`, the real `EmoDiffPipeline` with
that generator, and a readout trained on renders with `emodiff.train.readout.train`. Everything is measured
through the pipeline as users run it, its expression condition e_n + k·(e_y − e_n) made of G's sequences (eq. 14–15):
(a) the pipeline's e_n, G(neutral, z), must be the world's neutral (the origin): before neutral clips of every
level joined G's training, its neutral row was never trained. Frames sampled for a training identity speaking fresh
speech at k = 0, 0.5, 1 must show (b) the readout's happy projection rising with k and (c) the readout's mouth
opening following the speech's true mouth opening (Pearson over frames), and (d) with k drawn afresh every frame,
the happy projection following k rather than k one frame late, which is all that copying x^(i-1) could show.

In the happy clips k is drawn afresh every frame, so the motion frames do not show the target's intensity;
the tiny config takes the identity frame from the person's neutral clip and drops the motion frames half the
time (`data.identity_source`, `train.motion_drop`), so the expression and the mouth must come from the
conditions, as at sampling time. Without those two settings and the encoders' input standardisation, the
condition encoders collapsed to constants and both readouts were flat (happy projection 0.0829, 0.0826, 0.0826;
the mouth "correlation" 0.43 for seed 0 but 0.10 for seed 1 was chance, the audio embedding being constant).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from emodiff.assemble import pipeline_from_training
from emodiff.data.labels import emotion_index
from emodiff.data.store import ClipStore
from emodiff.data.synthetic import EMOTION_DIRECTIONS, EXPRESSION_DIM, EXPRESSION_PARAMS, MOUTH_OPEN, SyntheticWorld, make_store
from emodiff.models.expression_gan import ExpressionGenerator
from emodiff.models.readout import ExpressionReadout
from emodiff.pipeline import EmoDiffPipeline
from emodiff.data.datasets import to_uint8
from emodiff.train.common import CONFIG_DIR, load_config
from emodiff.train.denoiser import train as train_denoiser
from emodiff.train.expression_gan import train as train_expression_gan
from emodiff.train.readout import DEFAULT_CONFIG as READOUT_CONFIG
from emodiff.train.readout import train as train_readout

pytestmark = pytest.mark.slow  # trains G, the denoiser (3000 steps) and a readout

SIZE, FPS, N_FRAMES = 16, 25, 50
SEED = 0
DENOISER_STEPS, READOUT_STEPS, SAMPLING_STEPS, GENERATOR_STEPS = 3000, 800, 10, 300
LEARNING_RATE, WARMUP_STEPS = 1e-3, 50
LEVELS_OF_K = (0.0, 0.5, 1.0)
EMOTION = "happy"
# Measured through the expression generator with the tiny config's motion-frame noise and Min-SNR-γ (seed 0, 3000
# steps at lr 1e-3, torch on one thread as in the suite; about 5 minutes alone on one core; deterministic for a seed on
# one machine): happy projection 0.0129, 0.0821, 0.2047 at k = 0, 0.5, 1 (steps 0.069 and 0.123; with the world's
# true e_n and e_y in place of G's sequences 0.0129, 0.1041, 0.2195; renders of the truth read 0.06, 0.25, 0.43);
# mouth r 0.814, 0.830, 0.828; |G(neutral)| 0.104; k jumping every frame r 0.642, one frame late 0.087.
# Margins: 0.019 (step), 0.042 (rise), 0.41 (mouth r), 0.096 (neutral), 0.14 (jump r), 0.16 (over copying).
# (Without the two settings of the module docstring the same test gave 0.0219, 0.1574, 0.3384 and mouth r 0.59–0.69.)
PROJECTION_STEP = 0.05   # each step of k (0 → 0.5 → 1) raises the happy projection by more than this
PROJECTION_RISE = 0.15   # and k = 0 → 1 by more than this
MOUTH_R = 0.4            # Pearson r of the mouth readout with the speech's mouth at every k (chance: |r| < 0.28)
JUMP_R = 0.5             # Pearson r of the happy projection with k when k jumps every frame
JUMP_R_OVER_COPY = 0.4   # and its margin over the same frames one frame late (copying x^(i-1))
NEUTRAL_NORM = 0.2       # |G(neutral)| in the 8 expression parameters, frame mean (the neutral clips' own frames
                         # 0.08, happy level 1 0.31, level 3 0.78)


def jump_intensities(store: ClipStore, world: SyntheticWorld, rng: np.random.Generator) -> None:
    """Re-render each emotional clip of `store` with k drawn uniformly in [0, 1] for every frame (same speech)."""
    for clip_id in store.clip_ids():
        clip = store.clip(clip_id)
        if clip.emotion == "neutral":
            continue
        k = rng.uniform(0.0, 1.0, clip.n_frames).astype(np.float32)
        emotional = k[:, None] * world.emotion_direction(clip.emotion)
        shown = emotional.copy()
        shown[:, MOUTH_OPEN] = np.load(clip.path / "mouth_open.npy")
        identity = world.identity(clip.meta["synthetic"]["identity_index"])
        expression = np.zeros((clip.n_frames, EXPRESSION_DIM), np.float32)
        expression[:, :len(EXPRESSION_PARAMS)] = emotional
        store.update_clip(clip_id, {"frames": world.render(identity, shown), "landmarks": world.landmarks(identity, shown),
                                    "expression": expression, "intensity": k}, {})


def train_generator(store: ClipStore, output_dir: Path, seed: int) -> ExpressionGenerator:
    """The expression generator of the shipped config (strongest level and the neutral clips), made small."""
    config = OmegaConf.load(CONFIG_DIR / "expression_gan.yaml")
    config.merge_with({"seed": seed, "output_dir": str(output_dir), "data": {"store": str(store.root), "window": 32},
                       "model": {"generator": {"hidden": 64}, "global_discriminator": {"hidden": 64, "n_blocks": 3},
                                 "local_discriminator": {"hidden": 64}},
                       "train": {"max_steps": GENERATOR_STEPS, "checkpoint_every": GENERATOR_STEPS, "batch_size": 8,
                                 "generator_lr": 2e-3, "discriminator_lr": 1e-3}})
    return ExpressionGenerator.from_pretrained(train_expression_gan(config)).eval()


def train_world(root: Path, seed: int, denoiser_overrides: tuple[str, ...] = ()) -> tuple[EmoDiffPipeline, ExpressionReadout, SyntheticWorld]:
    """Store, expression generator, denoiser (tiny config, `key=value` overrides on top), pipeline and readout of one
    synthetic world."""
    store = make_store(root / "store", n_identities=4, clips_per_identity=4, n_frames=N_FRAMES, size=SIZE, fps=FPS,
                       emotions=("neutral", EMOTION), levels=(1, 2, 3), seed=seed)
    world = SyntheticWorld(seed, SIZE, FPS)
    generator = train_generator(store, root / "expression", seed)  # on the MEAD-like levels, before the jumps
    jump_intensities(store, world, np.random.default_rng(seed))
    config = load_config(CONFIG_DIR / "denoiser_tiny.yaml")
    config.merge_with({"seed": seed, "output_dir": str(root / "denoiser"), "data": {"store": str(store.root)},
                       "train": {"max_steps": DENOISER_STEPS, "learning_rate": LEARNING_RATE, "warmup_steps": WARMUP_STEPS,
                                 "validate_every": DENOISER_STEPS,
                                 "checkpoint_every": DENOISER_STEPS}})
    config.merge_with(OmegaConf.from_dotlist(list(denoiser_overrides)))
    pipeline = pipeline_from_training(train_denoiser(config), store, expression_generator=generator)
    readout_config = OmegaConf.load(READOUT_CONFIG)
    readout_config.merge_with({
        "seed": seed, "output_dir": str(root / "readout"), "world": {"seed": seed},
        "model": {"resolution": SIZE, "channels": [16, 32, 64], "hidden": 128},
        "train": {"max_steps": READOUT_STEPS, "batch_size": 32, "identities_per_batch": 8, "num_workers": 0,
                  "eval_samples": 256}})
    return pipeline, ExpressionReadout.from_pretrained(train_readout(readout_config)), world


def measure(pipeline: EmoDiffPipeline, readout: ExpressionReadout, world: SyntheticWorld, seed: int) -> dict:
    """The norm of the generator's neutral e_n (the k = 0 condition) in the expression parameters; the readout of
    frames sampled at each k for identity 0 speaking fresh speech: mean happy projection per k and the Pearson
    correlation of the mouth readout with the speech's true mouth opening; and the happy projection per frame of a
    video whose k jumps every frame, correlated with k and with k one frame late."""
    audio, mouth = world.speech(N_FRAMES, 0.5, np.random.default_rng([seed, 1]))
    identity = world.render(world.identity(0), np.zeros((1, len(EXPRESSION_PARAMS))))[0]
    videos = [pipeline.conditions(identity, audio, EMOTION, k, aligned=True, seed=seed) for k in LEVELS_OF_K]
    neutral_norm = float(np.linalg.norm(videos[0].expression[:, :len(EXPRESSION_PARAMS)].numpy(), axis=1).mean())
    # one more video whose k jumps to a fresh value every frame, so that x^(i-1) says nothing about frame i's k
    jumps = np.random.default_rng([seed, 2]).uniform(0.0, 1.0, N_FRAMES).astype(np.float32)
    weights = videos[0].emotion_weights.numpy()
    videos.append(dataclasses.replace(videos[0], intensity=torch.from_numpy(jumps), expression=torch.as_tensor(
        pipeline.expression_sequence(weights, jumps, seed=seed), dtype=torch.float32)))
    frames: list[list[np.ndarray]] = [[] for _ in videos]
    for _, batch in pipeline.sample(videos, steps=SAMPLING_STEPS, seeds=[seed] * len(videos), progress=False):
        for v, frame in batch.items():
            frames[v].append(to_uint8(frame))
    direction = EMOTION_DIRECTIONS[emotion_index(EMOTION)]
    projection, mouth_r = [], []
    for video in frames[:len(LEVELS_OF_K)]:
        expression, _ = readout.read(np.stack(video))
        projection.append(float((expression @ direction).mean()))
        mouth_r.append(float(np.corrcoef(expression[:, MOUTH_OPEN], mouth)[0, 1]))
    jumping = readout.read(np.stack(frames[-1]))[0] @ direction  # per frame
    return {"projection": projection, "mouth_r": mouth_r, "neutral_norm": neutral_norm,
            "jump_r": float(np.corrcoef(jumping, jumps)[0, 1]),
            # the same frames one step late, i.e. what a denoiser that copies x^(i-1) would show at frame i
            "jump_r_copy": float(np.corrcoef(jumping[:-1], jumps[1:])[0, 1])}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    pipeline, readout, world = train_world(tmp_path_factory.mktemp("world"), SEED)
    result = measure(pipeline, readout, world, SEED)
    print(f"\nhappy projection at k = {LEVELS_OF_K}: {np.round(result['projection'], 4).tolist()}; "
          f"mouth r: {np.round(result['mouth_r'], 3).tolist()}; |G(neutral)| {result['neutral_norm']:.3f}; "
          f"k jumping every frame: r {result['jump_r']:.3f}, one frame late (copying x^(i-1)) {result['jump_r_copy']:.3f}")
    return result


def test_generator_neutral_is_neutral(measured):
    assert measured["neutral_norm"] < NEUTRAL_NORM


def test_expression_readout_rises_with_k(measured):
    projection = measured["projection"]
    assert projection[1] - projection[0] > PROJECTION_STEP and projection[2] - projection[1] > PROJECTION_STEP
    assert projection[2] - projection[0] > PROJECTION_RISE


def test_mouth_follows_the_audio(measured):
    assert min(measured["mouth_r"]) > MOUTH_R


def test_frames_follow_k_jumping_every_frame_which_copying_cannot(measured):
    """k is drawn afresh every frame, so the previous frame carries no information about this frame's k: a denoiser
    that copies x^(i-1) (or lags it) shows the happy projection of k one frame late, uncorrelated with k."""
    assert measured["jump_r"] > JUMP_R
    assert measured["jump_r"] - measured["jump_r_copy"] > JUMP_R_OVER_COPY
