"""The metric table of `emodiff evaluate` (emodiff/cli/evaluate.py): a row per run, the reference first.

Each metric is a function of one run's inputs (`RunInputs`) that gives its values, or the reason it was skipped
(weights or inputs missing), with the videos it could not score and what the plots need (`Scored`);
`evaluate_runs` builds the table from the functions of METRIC_FUNCTIONS.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from emodiff.control.intensity import IntensityMeasure
from emodiff.data.audio_features import check_speech
from emodiff.data.labels import EMOTIONS
from emodiff.errors import EmodiffError
from emodiff.metrics import framewise, frechet, landmarks, linearity, quality
from emodiff.metrics.emotion import emotion_accuracy, frame_logits
from emodiff.metrics.lpips import LPIPS
from emodiff.metrics.sync import FPS as SYNC_FPS
from emodiff.metrics.sync import SyncScores, sync_scores
from emodiff.metrics.videos import REFERENCE_RUN, Video
from emodiff.models.emotion_classifier import EmotionClassifier
from emodiff.models.syncnet import SyncNet

CPBD_FRAME_STRIDE = 5
T = TypeVar("T")
# (key, column title, better direction) in report order.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("psnr", "PSNR", "↑"), ("ssim", "SSIM", "↑"), ("lpips", "LPIPS", "↓"), ("fid", "FID", "↓"),
    ("fvd", "FVD", "↓"), ("cpbd", "CPBD", "↑"), ("csim", "CSIM", "↑"), ("lse_c", "LSE-C", "↑"),
    ("lse_d", "LSE-D", "↓"), ("m_lmd", "M-LMD", "↓"), ("f_lmd", "F-LMD", "↓"), ("mouth_r", "mouth r", "↑"),
    ("psnr_drift", "PSNR drift", "↑"), ("emo_acc", "EmoAcc", "↑"),
    ("emo_acc_vote", "EmoAcc (vote)", "↑"), ("flie", "FLIE", "↓"), ("lie", "LIE", "↓"),
    ("intensity_l2", "Intensity-L2", "↓"), ("beat_align", "Beat Align", "↑"), ("diversity", "Diversity", "↑"),
)
NO_SHARED_NAME = "no video name is shared with the reference folder"
NO_EXPRESSION = "no expression vectors (<name>.expression.npy)"


@dataclass
class Weights:
    """Networks found on disk; None = the metrics that need it are skipped."""

    lpips: LPIPS | None = None
    inception: torch.nn.Module | None = None
    i3d: torch.nn.Module | None = None
    syncnet: SyncNet | None = None
    emotion_classifier: EmotionClassifier | None = None
    face_embedder: torch.nn.Module | None = None


@dataclass
class RunInputs:
    """What a metric function reads: one run's videos, the reference videos, the networks and the intensity measure
    fitted on the reference."""

    videos: dict[str, Video]
    reference: dict[str, Video]
    weights: Weights
    intensity_measure: IntensityMeasure

    @property
    def pairs(self) -> list[tuple[str, Video, Video]]:
        """(name, reference video, run video) for every name both have, sorted by name."""
        return [(n, self.reference[n], self.videos[n]) for n in sorted(self.videos) if n in self.reference]

    @property
    def with_expression(self) -> dict[str, Video]:
        """The run's videos that have expression vectors."""
        return {n: v for n, v in self.videos.items() if v.expression is not None}


@dataclass
class Scored:
    """A metric function's result: its values by column key, or why it was skipped; the videos it could not score
    (name → why; its value averages the others) and extras for the plots."""

    values: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None
    not_computed: dict[str, str] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- helpers

def fit_intensity_measure(reference: dict[str, Video]) -> IntensityMeasure:
    """Intensity-L2's fixed measure, fitted on the reference videos only: their neutral ones (emotion
    "neutral" or target intensity 0 throughout) give each identity's e_n, those with an emotion and a target
    intensity give the emotion's direction."""
    with_vectors = [v for v in reference.values() if v.expression is not None]
    neutral = [(v.identity_key, v.expression) for v in with_vectors
               if v.emotion == "neutral" or (v.intensity is not None and not v.intensity.any())]
    emotional = [(v.emotion, v.identity_key, v.expression, v.intensity) for v in with_vectors
                 if v.emotion not in (None, "neutral") and v.intensity is not None]
    return IntensityMeasure.fit(neutral, emotional)


def describe_intensity_measure(measure: IntensityMeasure) -> str:
    """One line for the report's settings: what Intensity-L2's measure was fitted on."""
    if not measure.emotions:
        return "none (no reference video with an emotion, a target intensity and expression vectors)"
    identities = {identity for _, identity in measure.directions if identity is not None}
    neutral = [identity for identity in measure.neutral if identity is not None]
    return (f"k̂ = ⟨e − e_n, d_y⟩/‖d_y‖², fitted on the reference videos: d_y of {', '.join(measure.emotions)} "
            f"(per identity for {len(identities)}, pooled for the others), e_n of {len(neutral)} identities (the "
            f"others: {'the mean neutral reference' if None in measure.neutral else 'the origin'})")


def _per_video(videos: dict[str, Video], compute: Callable[[Video], T]) -> tuple[dict[str, T], dict[str, str]]:
    """name → compute(video) for every video, and name → why for the videos where it raises EmodiffError."""
    results, not_computed = {}, {}
    for name, video in videos.items():
        try:
            results[name] = compute(video)
        except EmodiffError as err:
            not_computed[name] = str(err)
    return results, not_computed


def video_speech(video: Video) -> np.ndarray:
    """The video's audio; a missing, silent or too short one is refused with the reason."""
    if video.audio is None:
        raise EmodiffError("The video has no audio track.")
    check_speech(video.audio, "The video's audio")
    return video.audio


def video_beat_align(video: Video) -> float:
    """Beat Align of one video: its audio beats against its expression vectors' motion beats."""
    audio_beats = framewise.audio_onset_beats(video_speech(video), video.fps)
    return framewise.beat_align(audio_beats, framewise.motion_beats(video.expression))


def _intensity_sweeps(videos: dict[str, Video], need_expression: bool) -> list[list[Video]]:
    """Per series, its constant-intensity videos sorted by k (three or more distinct k)."""
    groups: dict[str, list[Video]] = defaultdict(list)
    for v in videos.values():
        if v.series is not None and v.constant_intensity is not None and (v.expression is not None or not need_expression):
            groups[v.series].append(v)
    sweeps = [sorted(g, key=lambda v: v.constant_intensity) for g in groups.values()]
    return [s for s in sweeps if len({v.constant_intensity for v in s}) >= 3]


def _common_frames(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sequences cut to the shorter length (frame i of one faces frame i of the other)."""
    n = min(len(a), len(b))
    return a[:n], b[:n]


def _pair_mean(run: RunInputs, key: str, score: Callable[[np.ndarray, np.ndarray, Video], float]) -> Scored:
    """`key` = the mean of score(reference frames, run frames, run video) over the videos the reference shares."""
    if not run.pairs:
        return Scored(skipped=NO_SHARED_NAME)
    return Scored({key: float(np.mean([score(*_common_frames(r.frames, g.frames), g) for _, r, g in run.pairs]))})


# ---------------------------------------------------------------------------------------------- metrics

def psnr(run: RunInputs) -> Scored:
    """PSNR against the reference video of the same name, frame by frame."""
    return _pair_mean(run, "psnr", lambda a, b, _: quality.psnr(a, b))


def ssim(run: RunInputs) -> Scored:
    """SSIM against the reference video of the same name, frame by frame."""
    return _pair_mean(run, "ssim", lambda a, b, _: quality.ssim(a, b))


def psnr_drift(run: RunInputs) -> Scored:
    """PSNR of a video's last second minus its first (dB), against the reference of the same name."""
    return _pair_mean(run, "psnr_drift", lambda a, b, g: quality.psnr_drift(a, b, max(1, round(g.fps))))


def lpips(run: RunInputs) -> Scored:
    """LPIPS against the reference of the same name, the mean over all frames."""
    if not run.pairs:
        return Scored(skipped=NO_SHARED_NAME)
    if run.weights.lpips is None:
        return Scored(skipped="no LPIPS weights (--lpips-backbone and --lpips-linear)")
    return Scored({"lpips": float(np.concatenate([run.weights.lpips.frames_distance(*_common_frames(r.frames, g.frames))
                                                  for _, r, g in run.pairs]).mean())})


def landmark_distances(run: RunInputs) -> Scored:
    """M-LMD, F-LMD and mouth r from the landmarks of the run's and the reference's videos of the same name; a pair
    where one video had no face found is not scored."""
    pairs = run.pairs
    if not pairs:
        return Scored(skipped=NO_SHARED_NAME)
    with_lms = [_common_frames(r.landmarks, g.landmarks) for _, r, g in pairs
                if r.landmarks is not None and g.landmarks is not None]
    no_face = {n: g.landmarks_error or r.landmarks_error for n, r, g in pairs if g.landmarks_error or r.landmarks_error}
    if not with_lms:
        return Scored(skipped="no face was found in the videos' frames" if no_face else
                      "no landmarks for both the reference and the run (--landmarks none, no <name>.landmarks.npy)",
                      not_computed=no_face)
    return Scored({"m_lmd": float(np.mean([landmarks.m_lmd(a, b) for a, b in with_lms])),
                   "f_lmd": float(np.mean([landmarks.f_lmd(a, b) for a, b in with_lms])),
                   "mouth_r": float(np.mean([landmarks.mouth_correlation(a, b) for a, b in with_lms]))},
                  not_computed=no_face)


def csim(run: RunInputs) -> Scored:
    """CSIM: the face embedding of each video's frames against its reference's first frame."""
    if not run.pairs:
        return Scored(skipped=NO_SHARED_NAME)
    if run.weights.face_embedder is None:
        return Scored(skipped="no face-embedding network (--face-embedder)")
    return Scored({"csim": float(np.mean([quality.identity_similarity(run.weights.face_embedder, r.frames[0], g.frames)
                                          for _, r, g in run.pairs]))})


def fid(run: RunInputs) -> Scored:
    """FID of all the run's frames against all the reference's."""
    if run.weights.inception is None:
        return Scored(skipped="no Inception feature network (--inception)")
    real, fake = (np.concatenate([v.frames for v in videos.values()]) for videos in (run.reference, run.videos))
    return Scored({"fid": frechet.fid(run.weights.inception, real, fake)})


def fvd(run: RunInputs) -> Scored:
    """FVD of the run's videos against the reference's."""
    if run.weights.i3d is None:
        return Scored(skipped="no I3D feature network (--i3d)")
    real, fake = ([v.frames for v in videos.values()] for videos in (run.reference, run.videos))
    if min(len(v) for v in real + fake) < frechet.FVD_CLIP_FRAMES:
        return Scored(skipped=f"a video is shorter than {frechet.FVD_CLIP_FRAMES} frames")
    return Scored({"fvd": frechet.fvd(run.weights.i3d, real, fake)})


def cpbd(run: RunInputs) -> Scored:
    """CPBD sharpness, the mean over every CPBD_FRAME_STRIDE-th frame of the run's videos."""
    return Scored({"cpbd": float(np.mean([quality.cpbd(f) for v in run.videos.values()
                                          for f in v.frames[::CPBD_FRAME_STRIDE]]))})


def lip_sync(run: RunInputs) -> Scored:
    """LSE-C and LSE-D of SyncNet over the videos at its frame rate with speech."""
    if run.weights.syncnet is None:
        return Scored(skipped="no SyncNet weights (--syncnet)")

    def scores(video: Video) -> SyncScores:
        if round(video.fps) != SYNC_FPS:
            raise EmodiffError(f"SyncNet needs {SYNC_FPS} fps video (evaluate --fps {SYNC_FPS}).")
        return sync_scores(run.weights.syncnet, video.frames, video_speech(video), video.fps)

    computed, not_computed = _per_video(run.videos, scores)
    if not computed:
        return Scored(skipped=f"no {SYNC_FPS} fps video with speech", not_computed=not_computed)
    return Scored({"lse_c": float(np.mean([s.lse_c for s in computed.values()])),
                   "lse_d": float(np.mean([s.lse_d for s in computed.values()]))}, not_computed=not_computed)


def emotion_accuracies(run: RunInputs) -> Scored:
    """EmoAcc of the emotion classifier on the videos with an emotion label: by mean logits and by vote."""
    if run.weights.emotion_classifier is None:
        return Scored(skipped="no emotion classifier (--emotion-classifier)")
    labelled = [v for v in run.videos.values() if v.emotion is not None]
    if not labelled:
        return Scored(skipped="no video has an emotion label")
    result = emotion_accuracy([frame_logits(run.weights.emotion_classifier, v.frames) for v in labelled],
                              [EMOTIONS.index(v.emotion) for v in labelled])
    return Scored({"emo_acc": result["emo_acc"], "emo_acc_vote": result["emo_acc_vote"]},
                  extras={"per_class": result["per_class"]})


def flie(run: RunInputs) -> Scored:
    """FLIE (eq. 20) of the expression vectors over each series' constant-intensity videos."""
    sweeps = _intensity_sweeps(run.videos, need_expression=True)
    if not sweeps:
        return Scored(skipped="no series with expression vectors at three or more constant intensities")
    return Scored({"flie": float(np.mean([linearity.flie([v.expression for v in s]) for s in sweeps]))},
                  extras={"flie_curves": [{"k": [v.constant_intensity for v in s],
                                           "mean_expression": [v.expression.mean(axis=0).tolist() for v in s]}
                                          for s in sweeps]})


def lie(run: RunInputs) -> Scored:
    """LIE: the LPIPS steps between each series' constant-intensity videos."""
    if run.weights.lpips is None:
        return Scored(skipped="no LPIPS weights")
    sweeps = _intensity_sweeps(run.videos, need_expression=False)
    if not sweeps:
        return Scored(skipped="no series of videos at three or more constant intensities")
    return Scored({"lie": float(np.mean([linearity.lie(run.weights.lpips, [v.frames for v in s]) for s in sweeps]))})


def diversity(run: RunInputs) -> Scored:
    """Diversity of the run's expression vectors."""
    videos = run.with_expression
    if not videos:
        return Scored(skipped=NO_EXPRESSION)
    return Scored({"diversity": framewise.diversity([v.expression for v in videos.values()])})


def beat_align(run: RunInputs) -> Scored:
    """Beat Align of the videos with expression vectors and speech, the mean over the videos."""
    videos = run.with_expression
    if not videos:
        return Scored(skipped=NO_EXPRESSION)
    computed, not_computed = _per_video(videos, video_beat_align)
    if not computed:
        return Scored(skipped="no video has expression vectors and speech", not_computed=not_computed)
    return Scored({"beat_align": float(np.mean(list(computed.values())))}, not_computed=not_computed)


def intensity_l2(run: RunInputs) -> Scored:
    """Intensity-L2: the target k of each video with an emotion against k̂ read by the reference's intensity
    measure (the inverse of eq. 14)."""
    videos = run.with_expression
    if not videos:
        return Scored(skipped=NO_EXPRESSION)
    if not run.intensity_measure.emotions:
        return Scored(skipped="no reference video with an emotion, a target intensity and expression vectors to fit "
                              "the intensity measure on")
    targets = {n: v for n, v in videos.items() if v.intensity is not None and v.emotion != "neutral"}
    measured, not_computed = _per_video(
        targets, lambda v: run.intensity_measure.read(v.expression, v.emotion, v.identity_key))
    if not measured:
        return Scored(skipped="no video with an emotion, a target intensity and expression vectors",
                      not_computed=not_computed)
    return Scored({"intensity_l2": float(np.mean([framewise.intensity_l2(targets[n].intensity, k)
                                                  for n, k in measured.items()]))},
                  not_computed=not_computed,
                  extras={"intensity_curves": {n: {"target": targets[n].intensity.tolist(), "measured": k.tolist()}
                                               for n, k in measured.items()}})


# (column keys, metric function), in the order the functions run
METRIC_FUNCTIONS: tuple[tuple[tuple[str, ...], Callable[[RunInputs], Scored]], ...] = (
    (("psnr",), psnr), (("ssim",), ssim), (("psnr_drift",), psnr_drift), (("lpips",), lpips),
    (("m_lmd", "f_lmd", "mouth_r"), landmark_distances), (("csim",), csim), (("fid",), fid), (("fvd",), fvd),
    (("cpbd",), cpbd), (("lse_c", "lse_d"), lip_sync), (("emo_acc", "emo_acc_vote"), emotion_accuracies),
    (("flie",), flie), (("lie",), lie), (("diversity",), diversity), (("beat_align",), beat_align),
    (("intensity_l2",), intensity_l2),
)


def evaluate_runs(reference: dict[str, Video], runs: dict[str, dict[str, Video]], weights: Weights,
                  settings: dict | None = None) -> dict:
    """The table: the metrics of the reference (as a run: the ground-truth row) and of every run. A run's
    extras["not_computed"][metric][video] says why a metric left out one video (its value averages the others);
    "skipped" gives, for each metric no run has, the first reason a run gave."""
    measure = fit_intensity_measure(reference)
    report: dict = {"settings": {**(settings or {}), "intensity measure": describe_intensity_measure(measure)},
                    "metrics": {}, "extras": {}, "skipped": {}}
    skipped: dict[str, str] = {}
    for name, videos in tqdm([(REFERENCE_RUN, reference), *runs.items()], desc="evaluate runs"):
        run = RunInputs(videos, reference, weights, measure)
        values, extras, not_computed = {}, {}, {}
        for keys, metric in METRIC_FUNCTIONS if videos else ():
            scored = metric(run)
            values.update(scored.values)
            extras.update(scored.extras)
            for key in keys:
                if scored.skipped:
                    skipped.setdefault(key, scored.skipped)
                if scored.not_computed:
                    not_computed[key] = scored.not_computed
        if not_computed:
            extras["not_computed"] = not_computed
        report["metrics"][name], report["extras"][name] = values, extras
    report["skipped"] = {k: r for k, r in skipped.items() if not any(k in m for m in report["metrics"].values())}
    return report
