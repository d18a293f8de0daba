"""Build a sampling pipeline folder from training runs (`emodiff assemble`, described in emodiff/cli/assemble.py).

The store the denoiser was trained on gives the neutral and per-emotion target expressions (e_n, e_y of
eq. 14–15), the fps and the audio feature kind; the folder is written to a temporary folder renamed when complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

from diffusers.models.modeling_utils import ModelMixin
from omegaconf import OmegaConf

from emodiff.data.store import ClipStore
from emodiff.data.synthetic import WORLD_FILE
from emodiff.diffusion.gaussian import config_betas
from emodiff.diffusion.schedulers import make_scheduler
from emodiff.errors import EmodiffError
from emodiff.models.expression_gan import ExpressionGenerator
from emodiff.models.expression_reference import ExpressionReference
from emodiff.models.intensity_vae import IntensityVAE
from emodiff.models.reference_net import ReferenceNet
from emodiff.models.rrdbnet import RRDBNet
from emodiff.models.unet import DenoisingUNet
from emodiff.models.weights import load_component
from emodiff.pipeline import EmoDiffPipeline


def _load_run_model(run: Path, subfolder: str, model_cls: type[ModelMixin], command: str) -> ModelMixin:
    """The model `run/subfolder` saved by `emodiff train <command>`; a missing or broken one is one sentence."""
    return load_component(Path(run) / subfolder, model_cls,
                          f"{run} is not a finished `emodiff train {command}` folder ({subfolder}/ is missing).")


def pipeline_from_training(denoiser_dir: str | Path, store: ClipStore, expression_generator: ModelMixin | None = None,
                           intensity_predictor: ModelMixin | None = None, sampler: str = "ddim") -> EmoDiffPipeline:
    """A pipeline from an `emodiff train denoiser` folder (config.yaml, unet/, reference_net/) and the store it was
    trained on, which gives e_n and e_y, the fps and the audio feature kind; `sampler` is the kind of its scheduler,
    made with the training's β_t."""
    denoiser_dir = Path(denoiser_dir)
    if not (denoiser_dir / "config.yaml").is_file() or not (denoiser_dir / "unet").is_dir():
        raise EmodiffError(f"{denoiser_dir} is not a finished denoiser training folder (config.yaml, unet/).")
    config = OmegaConf.load(denoiser_dir / "config.yaml")
    meta = store.clip(store.clip_ids()[0]).meta
    audio = meta.get("audio_features") or {}
    unet = DenoisingUNet.from_pretrained(denoiser_dir / "unet").eval()
    return EmoDiffPipeline(unet, ReferenceNet.from_pretrained(denoiser_dir / "reference_net").eval(),
                           ExpressionReference.from_store(store), expression_generator, intensity_predictor,
                           scheduler=make_scheduler(sampler, config_betas(config.diffusion), unet.config.prediction_type),
                           resolution=config.data.resolution,
                           window=config.data.window, fps=meta.get("fps", 25.0), audio_features=audio.get("kind", "mel"),
                           audio_model=audio.get("model"), motion_noise=config.train.get("motion_noise_sampling", 0))


def assemble(denoiser: Path, store: ClipStore | Path, out: Path, expression: Path | None = None,
             intensity: Path | None = None, super_resolution: Path | None = None, steps: int | None = None,
             guidance: Sequence[float] | None = None, sampler: str = "ddim") -> EmoDiffPipeline:
    """`pipeline_from_training` with the optional generator, intensity and super-resolution runs, saved
    atomically to `out`; `steps` and `guidance` (s_audio, s_expression) are the sampling settings it records as its
    own defaults (None: 25 steps, no guidance), `sampler` the kind of its scheduler."""
    store = store if isinstance(store, ClipStore) else ClipStore.open(store)
    if not store.clip_ids():
        raise EmodiffError(f"The store {store.root} has no clips to take the expression targets from.")
    generator = _load_run_model(expression, "generator", ExpressionGenerator, "expression") if expression else None
    predictor = _load_run_model(intensity, "model", IntensityVAE, "intensity") if intensity else None
    pipeline = pipeline_from_training(denoiser, store, generator, predictor, sampler)
    pipeline.settings.update(steps=steps, guidance=None if guidance is None else [float(g) for g in guidance])
    if super_resolution:
        pipeline.super_resolution = _load_run_model(super_resolution, "super_resolution", RRDBNet, "super-resolution")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipeline.save_pretrained(tmp)
        world = store.stats_dir / WORLD_FILE
        if world.is_file():
            shutil.copyfile(world, tmp / WORLD_FILE)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pipeline
