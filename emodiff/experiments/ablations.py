"""The papers' ablation tables, trained and scored on the synthetic world (docs/design.md §11).

`ablate` reuses a finished synthetic run and trains only what a table varies: table2 the ReferenceNet (EMOdiffhead
Table 2), table3 the denoiser's intensity control (interpolation, eq. 14–15, vs renorm, concat, scaling; framewise
intensity paper, Table 3), table4 the expression GAN's discriminators (EMOdiffhead Table 4 and Fig. 7).
`emodiff ablate --help` (emodiff/cli/ablate.py) describes the budgets, metrics and outputs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from omegaconf import DictConfig
from safetensors.torch import load_file

from emodiff.assemble import assemble
from emodiff.control.intensity import IntensityMeasure
from emodiff.data.labels import EMOTIONS, NEUTRAL
from emodiff.data.store import ClipStore
from emodiff.files import atomic_path, write_json_atomic, write_text_atomic
from emodiff.data.synthetic import EMOTION_DIRECTIONS, MOUTH_OPEN, SyntheticWorld
from emodiff.errors import EmodiffError
from emodiff.metrics.framewise import audio_onset_beats, beat_align, intensity_l2, motion_beats
from emodiff.metrics.linearity import flie, lie
from emodiff.metrics.lpips import LPIPS
from emodiff.metrics.quality import psnr, ssim, video_cpbd
from emodiff.models.expression_gan import ExpressionGenerator
from emodiff.models.readout import ExpressionReadout
from emodiff.pipeline import EmoDiffPipeline
from emodiff.experiments.synthetic_run import EMOTIONAL, N_PARAMS, Video, video_cache, held_out_speech, sample_videos, stage_config
from emodiff.experiments.synthetic_run import score as score_sweep
from emodiff.train import denoiser, expression_gan
from emodiff.train.common import apply_overrides, load_config


@dataclass(frozen=True)
class Budget:
    """Training steps per variant and the size of the evaluation."""

    denoiser_steps: int
    denoiser_batch: int
    gan_steps: int
    frames: int  # frames per sampled video and per generated expression sequence
    intensities: tuple[float, ...]  # the k sweep of tables 2–3
    levels: int  # intensity levels of Table 4's FLIE / LIE (the paper's 15)
    sequences: int  # generated sequences per emotion in Table 4 (the embedding, EmoAcc)
    fine_tune: bool = False  # denoisers start from the run's denoiser with a fresh expression encoder


FRESH_ENCODER = ["expression_embedding"]  # what every fine-tuned denoiser variant learns anew


BUDGETS = {"quick": Budget(denoiser_steps=500, denoiser_batch=8, gan_steps=600, frames=24, intensities=(0.0, 0.5, 1.0),
                           levels=15, sequences=16),
           "finetune": Budget(denoiser_steps=2000, denoiser_batch=16, gan_steps=600, frames=24,
                              intensities=(0.0, 0.5, 1.0), levels=15, sequences=16, fine_tune=True),
           "smoke": Budget(denoiser_steps=2, denoiser_batch=2, gan_steps=2, frames=6, intensities=(0.0, 0.5, 1.0),
                           levels=3, sequences=2)}


@dataclass(frozen=True)
class Variant:
    """One row: its label, run folder and config overrides of the stage it varies."""

    label: str
    folder: str
    overrides: tuple[str, ...]


INTERPOLATION = Variant("interpolation (eq. 14–15), with ReferenceNet", "denoiser-interpolation",
                        ("unet.expression_encoder=interpolation",))
TABLES: dict[str, tuple[Variant, ...]] = {
    "table2": (INTERPOLATION, Variant("w/o ReferenceNet", "denoiser-no-reference",
                                      ("unet.expression_encoder=interpolation", "unet.reference_levels=[]"))),
    "table3": (INTERPOLATION, *(Variant(name, f"denoiser-{name}", (f"unet.expression_encoder={name}",))
                                for name in ("renorm", "concat", "scaling"))),
    "table4": (Variant("(a) TCN D_g + D_l (paper)", "expression-tcn-local", ()),
               Variant("(b) TCN D_g, w/o D_l", "expression-tcn", ("model.use_local_discriminator=false",)),
               Variant("(c) conv D_g + D_l", "expression-conv-local", ("model.global_discriminator.temporal=conv",)),
               Variant("(d) conv D_g, w/o D_l", "expression-conv", ("model.global_discriminator.temporal=conv",
                                                                    "model.use_local_discriminator=false"))),
}


def train_variant(base: DictConfig, stage: str, store: Path, folder: Path, overrides: list[str]) -> float:
    """Train one variant of `stage` ("denoiser" or "expression") into `folder` unless it is finished there;
    returns the wall time of the training in seconds (0 when it was finished already)."""
    result = folder / ("unet" if stage == "denoiser" else "generator")
    if result.exists():
        print(f"{folder.name}: finished run")
        return 0.0
    config = apply_overrides(stage_config(base, stage, store, folder), overrides)
    start = time.monotonic()
    (denoiser if stage == "denoiser" else expression_gan).train(config, resume="latest")
    return time.monotonic() - start


@dataclass
class Context:
    """A finished synthetic run to reuse: its config, store, readout and world."""

    run: Path
    config: DictConfig
    store: Path
    reader: ExpressionReadout
    world: SyntheticWorld

    @classmethod
    def open(cls, run: Path) -> "Context":
        needed = [run / "synthetic_run.yaml", run / "store" / "manifest.jsonl", run / "readout" / "model",
                  run / "expression" / "generator", run / "intensity" / "model"]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise EmodiffError(f"{run} is not a finished `emodiff synthetic-run` folder: {', '.join(missing)} missing.")
        config = load_config(run / "synthetic_run.yaml")
        return cls(run, config, run / "store", ExpressionReadout.from_pretrained(run / "readout" / "model").eval(),
                   SyntheticWorld(config.world.seed, config.world.size))

    @property
    def held_out(self) -> list[int]:
        w = self.config.world
        return list(range(w.identities, w.identities + w.held_out))


# ------------------------------------------------------------------------------------- tables 2 and 3 (denoiser)
def true_measure() -> IntensityMeasure:
    """The world's own k: e_n the origin, e_y the emotion's direction (what the store's clips render at k = 1)."""
    return IntensityMeasure.from_strongest_level(np.zeros(N_PARAMS), {EMOTIONS[e]: EMOTION_DIRECTIONS[e] for e in EMOTIONAL})


def score_denoiser(videos: list[Video], reads: list[tuple[np.ndarray, np.ndarray]], speeches, intensities: list[float],
                   fps: int) -> dict:
    """Tables 2–3's numbers of one set of frames (generated or the true renders) and their readouts."""
    sweep = score_sweep(videos, reads, speeches, intensities)
    measure = true_measure()
    beats = [audio_onset_beats(s.audio, fps) for s in speeches]
    return {
        "emotion_accuracy": sweep["emotion_accuracy"], "flie": sweep["flie_readout_mean"],
        "spearman": sweep["spearman_mean"], "mouth_pearson": sweep["mouth_pearson"],
        "intensity_l2": float(np.mean([intensity_l2(np.full(len(r[0]), v.k), measure.read(r[0], EMOTIONS[v.emotion]))
                                       for v, r in zip(videos, reads)])),
        "beat_align": float(np.mean([beat_align(beats[v.speech], motion_beats(r[0])) for v, r in zip(videos, reads)])),
        "psnr": float(np.mean([psnr(v.truth, v.frames) for v in videos])),
        "ssim": float(np.mean([ssim(v.truth, v.frames) for v in videos])),
        "cpbd": float(np.mean([video_cpbd(v.frames) for v in videos])),
    }


def evaluate_denoiser(ctx: Context, folder: Path, budget: Budget) -> dict:
    """Assemble the variant's pipeline (the run's generator and intensity VAE), sample the held-out sweep (cached
    in FOLDER/samples.npz) and score the generated frames and the true renders."""
    ev = ctx.config.evaluation
    pipeline_dir = folder / "pipeline"
    if not (pipeline_dir / "model_index.json").is_file():
        assemble(folder, ClipStore.open(ctx.store), pipeline_dir, ctx.run / "expression", ctx.run / "intensity")
    speeches = [held_out_speech(ctx.world, budget.frames, i, level=(2, 3, 1)[i % 3]) for i in range(ev.audio_clips)]
    intensities = [float(k) for k in ev.intensities]
    videos = video_cache(folder / "samples.npz")
    if videos is None:
        pipeline = EmoDiffPipeline.from_pretrained(pipeline_dir)
        torch.manual_seed(ev.seed)
        videos = video_cache(folder / "samples.npz", sample_videos(
            pipeline, ctx.world, ctx.held_out, speeches, intensities, ev.steps, ev.sampler, ev.seed, ev.cfg_audio,
            ev.cfg_expression, audio_intensity=False))
    fps = ctx.world.fps
    generated = score_denoiser(videos, [ctx.reader.read(v.frames) for v in videos], speeches, intensities, fps)
    truth = score_denoiser(videos, [ctx.reader.read(v.truth) for v in videos], speeches, intensities, fps)
    truth["psnr"], truth["ssim"] = float("inf"), 1.0
    truth["cpbd"] = float(np.mean([video_cpbd(v.truth) for v in videos]))
    n_params = sum(p.numel() for name in ("unet", "reference_net")
                   for p in load_file(folder / name / SAFETENSORS_WEIGHTS_NAME).values())
    return {"generated": generated, "truth": truth, "videos": len(videos), "parameters": n_params}


# ----------------------------------------------------------------------------------------- table 4 (the GAN)
def real_sequences(store: Path, n_frames: int) -> dict[int, np.ndarray]:
    """Windows (N, n_frames, N_PARAMS) of the store's strongest-level clips per emotion (neutral: every level),
    stride n_frames // 2: the sequences the GAN learns from."""
    clips = ClipStore.open(store)
    windows: dict[int, list[np.ndarray]] = {}
    for clip_id in clips.clip_ids():
        clip = clips.clip(clip_id)
        emotion = EMOTIONS.index(clip.emotion)
        if emotion != NEUTRAL and clip.level != 3:
            continue
        expression = np.load(clip.path / "expression.npy")[:, :N_PARAMS]
        for start in range(0, len(expression) - n_frames + 1, max(1, n_frames // 2)):
            windows.setdefault(emotion, []).append(expression[start:start + n_frames])
    return {e: np.stack(w) for e, w in windows.items()}


def generated_sequences(generator: ExpressionGenerator, n: int, n_frames: int, seed: int) -> np.ndarray:
    """(n, E, n_frames, N_PARAMS): for each noise z, G's sequence of every emotion (one shared z per row, as the
    pipeline does for e_n and e_y)."""
    rng = torch.Generator().manual_seed(seed)
    emotions = torch.arange(len(EMOTIONS))
    rows = []
    with torch.no_grad():
        for _ in range(n):
            z = generator.sample_noise(1, n_frames, rng).expand(len(EMOTIONS), -1, -1)
            rows.append(generator(emotions, z).float().numpy()[..., :N_PARAMS])
    return np.stack(rows)


def evaluate_generator(ctx: Context, folder: Path, budget: Budget, lpips: LPIPS | None) -> tuple[dict, np.ndarray]:
    """EmoAcc, FLIE and LIE of the world's true renders of G's conditions for the held-out identities speaking
    held-out speech: EmoAcc from e_y (the readout's emotion head, video level), FLIE (of the readout) and LIE (of
    the frames) over `budget.levels` values of k, e_n + k·(e_y − e_n). Also returns G's sequences for the plot."""
    generator = ExpressionGenerator.from_pretrained(folder / "generator").eval()
    sequences = generated_sequences(generator, budget.sequences, budget.frames, ctx.config.evaluation.seed)
    speech = held_out_speech(ctx.world, budget.frames, 0, level=2)
    levels = np.linspace(0.0, 1.0, budget.levels)
    correct, flie_values, lie_values = [], [], []
    for i, identity in enumerate(ctx.held_out):
        person = ctx.world.identity(identity)
        neutral = sequences[i % len(sequences), NEUTRAL]
        for emotion in EMOTIONAL:
            target = sequences[i % len(sequences), emotion]
            frames = []
            for k in levels:
                shown = neutral + k * (target - neutral)
                shown[:, MOUTH_OPEN] = speech.mouth
                frames.append(ctx.world.render(person, shown))
            reads = [ctx.reader.read(f) for f in frames]
            correct.append(int(reads[-1][1].mean(0).argmax() == emotion))
            flie_values.append(flie([r[0][:, 1:] for r in reads]))
            if lpips is not None:
                lie_values.append(lie(lpips, frames))
    return {"emotion_accuracy": float(np.mean(correct)), "flie": float(np.mean(flie_values)),
            "lie": float(np.mean(lie_values)) if lie_values else None}, sequences


def embedding_plot(real: dict[int, np.ndarray], generated: dict[str, np.ndarray], path: Path) -> dict[str, float]:
    """Fig. 7: real and generated sequences (flattened) projected on the first two principal components of the
    real ones, one panel per setup; returns per setup the mean distance, in the full sequence space, between
    each emotion's mean generated and mean real sequence, divided by the mean distance between the real means."""
    import matplotlib
    from matplotlib.figure import Figure

    emotions = sorted(real)
    flat = {e: real[e].reshape(len(real[e]), -1) for e in emotions}
    pooled = np.concatenate(list(flat.values()))
    centre = pooled.mean(0)
    axes2d = np.linalg.svd(pooled - centre, full_matrices=False)[2][:2]
    real_means = np.stack([flat[e].mean(0) for e in emotions])
    spread = np.mean([np.linalg.norm(a - b) for i, a in enumerate(real_means) for b in real_means[i + 1:]])
    figure = Figure(figsize=(4 * len(generated), 4))
    panels = figure.subplots(1, len(generated), sharex=True, sharey=True)
    gaps = {}
    colours = matplotlib.colormaps["tab10"]
    for panel, (label, sequences) in zip(np.atleast_1d(panels), generated.items()):
        gap = []
        for c, e in enumerate(emotions):
            fake = sequences[:, e].reshape(len(sequences), -1)
            gap.append(np.linalg.norm(fake.mean(0) - real_means[c]))
            r2, f2 = (flat[e] - centre) @ axes2d.T, (fake - centre) @ axes2d.T
            panel.scatter(r2[:, 0], r2[:, 1], s=8, color=colours(c), alpha=0.35, label=EMOTIONS[e])
            panel.scatter(f2[:, 0], f2[:, 1], s=22, color=colours(c), marker="x")
        gaps[label] = float(np.mean(gap) / spread)
        panel.set_title(label, fontsize=9)
    np.atleast_1d(panels)[0].legend(fontsize=7, loc="best")
    figure.suptitle("real (dots) vs generated (crosses) expression sequences, PCA of the real ones", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90)
    return gaps


# ------------------------------------------------------------------------------------------------- the tables
def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else "∞" if x == float("inf") else f"{x:.{digits}f}"


def _setting(ctx: Context, budget: Budget, stage: str, name: str, rows: dict) -> list[str]:
    c = ctx.config
    spec = c.stages[stage].overrides
    steps = budget.denoiser_steps if stage == "denoiser" else budget.gan_steps
    walls = ", ".join(f"{label} {row['train_seconds'] / 60:.1f} min" for label, row in rows.items() if row["train_seconds"])
    start = "from scratch"
    if budget.fine_tune:
        base = load_config(ctx.run / "denoiser" / "config.yaml").train
        start = (f"from the run's own denoiser (`{ctx.run}/denoiser`, interpolation, {base.max_steps} steps at batch "
                 f"{base.batch_size}) with a freshly initialised expression encoder (`{FRESH_ENCODER[0]}`), so that "
                 "every intensity control is learnt anew on the same trained backbone,")
    return [f"Budget `{name}`: every variant trained {start} for {steps} steps (batch {spec.train.batch_size}) on "
            f"the store of `{ctx.run}` ({c.world.identities} identities × {c.world.clips} clips × {c.world.frames} "
            f"frames at {c.world.size} px, world seed {c.world.seed}); wall time of the training on 2 shared CPU "
            f"cores: {walls or 'reused runs'}."]


def _table2_3(ctx: Context, table: str, budget: Budget, name: str, rows: dict) -> list[str]:
    ev = ctx.config.evaluation
    first = next(iter(rows.values()))
    lines = _setting(ctx, budget, "denoiser", name, rows) + [
        "", f"Evaluation: held-out identities {ctx.held_out} (never in the store) × {ev.audio_clips} held-out speech "
        f"clip(s) of {budget.frames} frames × 7 emotions × k ∈ {{{', '.join(f'{k:g}' for k in ev.intensities)}}} = "
        f"{first['videos']} videos per variant, {ev.sampler} × {ev.steps} steps, guidance audio {ev.cfg_audio:g} / "
        f"expression {ev.cfg_expression:g}, e_n and e_y from the run's expression generator; frames read by the run's "
        "readout. The last row is the world's true render of the same requests (the ceiling the readout allows).", ""]
    if table == "table3":
        lines += ["| intensity control | EmoAcc ↑ | FLIE ↓ | Intensity-L2 ↓ | Beat Align ↑ | mouth r ↑ | ρ(k) ↑ |",
                  "|---|---|---|---|---|---|---|"]
        keys = ("emotion_accuracy", "flie", "intensity_l2", "beat_align", "mouth_pearson", "spearman")
    else:
        lines += ["| denoiser | PSNR ↑ | SSIM ↑ | CPBD ↑ | parameters |", "|---|---|---|---|---|"]
        keys = ("psnr", "ssim", "cpbd")
    for label, row in [*rows.items(), ("true render", {"generated": first["truth"], "parameters": None})]:
        cells = [_fmt(row["generated"][k]) for k in keys]
        if table == "table2":
            cells.append("–" if row["parameters"] is None else f"{row['parameters']:,}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if table == "table3":
        lines += ["", "EmoAcc: the readout's emotion head, video level, at k = 1. FLIE: EMOdiffhead eq. 20 of the "
                  "readout's 7 emotional parameters over the k sweep, mean over emotions and identities. Intensity-L2: "
                  "mean squared error between the asked k and k̂ read from the readout by the world's fixed "
                  "`IntensityMeasure` (e_n the origin, e_y the emotion's direction). Beat Align: "
                  "`emodiff.metrics.framewise` (audio onset beats vs minima of the readout's motion speed smoothed with "
                  "σ = 5 frames). mouth r: Pearson r of the readout's mouth opening with the speech's true one. ρ(k): "
                  "Spearman ρ between k and the readout projected on the emotion's direction."]
    else:
        lines += ["", "PSNR / SSIM: against the world's true render of the same identity, expression and mouth (no "
                  "readout); CPBD: `emodiff.metrics.quality.video_cpbd` (sharpness; at 32 px few blocks hold edges). "
                  "Parameters: UNet + ReferenceNet."]
    return lines


def _table4(ctx: Context, budget: Budget, name: str, rows: dict, gaps: dict, has_lpips: bool) -> list[str]:
    lines = _setting(ctx, budget, "expression", name, rows) + [
        "", f"Evaluation: for each setup, G's sequences of {budget.frames} frames (one shared z for e_n and e_y) are "
        f"rendered by the world itself for held-out identities {ctx.held_out} with held-out speech's mouth, at "
        f"{budget.levels} levels k ∈ [0, 1] of e_n + k·(e_y − e_n), and read by the run's readout: the backbone is "
        "exact, so the numbers measure G alone.", "",
        "| discriminators | EmoAcc ↑ | FLIE ↓ | LIE ↓ | embedding gap ↓ |", "|---|---|---|---|---|"]
    for label, row in rows.items():
        lines.append(f"| {label} | {_fmt(row['emotion_accuracy'])} | {_fmt(row['flie'])} | {_fmt(row['lie'])} | "
                     f"{_fmt(gaps[label])} |")
    lines += ["", "EmoAcc at k = 1 (video level); FLIE: eq. 20 of the readout over the levels; LIE: LPIPS-based, "
              + ("with the given LPIPS weights" if has_lpips else "n/a: it needs LPIPS weights (`--lpips TRUNK LINEAR`), "
                 "which are not shipped") + ". Embedding gap: per emotion, the distance between the mean generated and "
              "the mean real sequence (the store's strongest-level windows), ÷ the mean distance between emotions' real "
              "means; mean over emotions.", "", "![embedding](table4_embedding.png)", "",
              f"Fig. 7 analogue: {budget.sequences} generated sequences per emotion (crosses) and the real windows "
              "(dots) on the first two principal components of the real ones (PCA instead of the paper's UMAP)."]
    return lines


TITLES = {"table2": "Table 2 (EMOdiffhead): w/o ReferenceNet",
          "table3": "Table 3 (framewise intensity paper): intensity control on one backbone",
          "table4": "Table 4 and Fig. 7 (EMOdiffhead): discriminator setups of the expression GAN"}


def ablate(table: str, run: Path, out: Path, report: Path, budget_name: str = "quick",
           overrides: list[str] | tuple[str, ...] = (), lpips: LPIPS | None = None) -> Path:
    """Train the table's variants (skipping finished ones in OUT), score them and write REPORT/TABLE.md and
    OUT/TABLE.json; returns the markdown's path."""
    if table not in TABLES:
        raise EmodiffError(f"Unknown table '{table}'; choose one of: {', '.join(TABLES)}.")
    if budget_name not in BUDGETS:
        raise EmodiffError(f"Unknown budget '{budget_name}'; choose one of: {', '.join(BUDGETS)}.")
    budget = BUDGETS[budget_name]
    if budget.fine_tune and table != "table3":
        raise EmodiffError(f"Budget '{budget_name}' fine-tunes denoisers on the run's backbone, so it is for table3 "
                           "only (table2 removes part of that backbone; table4 trains no denoiser).")
    ctx = Context.open(Path(run))
    ctx.config = apply_overrides(ctx.config, overrides)
    stage = "expression" if table == "table4" else "denoiser"
    steps = budget.gan_steps if table == "table4" else budget.denoiser_steps
    ctx.config.stages[stage].overrides.train.max_steps = steps
    ctx.config.stages[stage].overrides.train.checkpoint_every = max(1, steps // 4)
    ctx.config.stages.denoiser.overrides.train.batch_size = budget.denoiser_batch
    if budget.fine_tune:
        if not (ctx.run / "denoiser" / "unet").is_dir():
            raise EmodiffError(f"Budget '{budget_name}' fine-tunes {ctx.run / 'denoiser'}, which is not a finished "
                               "denoiser run.")
        ctx.config.stages.denoiser.overrides.init = {"weights": str(ctx.run / "denoiser"), "fresh": FRESH_ENCODER}
    ctx.config.evaluation.intensities = list(budget.intensities)
    out.mkdir(parents=True, exist_ok=True)
    report.mkdir(parents=True, exist_ok=True)
    marker = out / "budget.json"  # finished variants are reused, so one OUT holds one budget's runs
    held = json.loads(marker.read_text())["budget"] if marker.is_file() else budget_name
    if held != budget_name:
        raise EmodiffError(f"{out} holds the '{held}' budget's runs; give budget '{budget_name}' another --out.")
    write_json_atomic(marker, {"budget": budget_name})
    for variant in TABLES[table]:  # every variant's training first, then the evaluations
        wall = train_variant(ctx.config, stage, ctx.store, out / variant.folder, list(variant.overrides))
        if wall:
            write_json_atomic(out / variant.folder / "train_seconds.json", {"seconds": wall})
    rows, sequences = {}, {}
    for variant in TABLES[table]:
        folder = out / variant.folder
        timing = folder / "train_seconds.json"
        seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else 0.0
        if table == "table4":
            row, sequences[variant.label] = evaluate_generator(ctx, folder, budget, lpips)
        else:
            row = evaluate_denoiser(ctx, folder, budget)
        rows[variant.label] = {**row, "train_seconds": seconds, "overrides": list(variant.overrides)}
    lines = [f"# {TITLES[table]}", "", f"`emodiff ablate {table} --base {ctx.run} --budget {budget_name}`", ""]
    if table == "table4":
        gaps = embedding_plot(real_sequences(ctx.store, budget.frames), sequences, report / "table4_embedding.png")
        lines += _table4(ctx, budget, budget_name, rows, gaps, lpips is not None)
        for label, gap in gaps.items():
            rows[label]["embedding_gap"] = gap
    else:
        lines += _table2_3(ctx, table, budget, budget_name, rows)
    write_json_atomic(out / f"{table}.json", {"budget": budget_name, "rows": rows})
    path = report / f"{table}.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
