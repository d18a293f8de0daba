"""`EmoDiffPipeline`: identity image + speech + emotion + intensity schedule → talking-head frames (paper §3.4).

Inference as in EMOdiffhead §3.4 / docs/design.md §5.4: the identity image is aligned with the prepare code, the
ReferenceNet features of the identity are computed **once** per video, and the frames are generated
autoregressively — frame i is denoised from x_T with the motion frames x^(i−2), x^(i−1) set to the two previous
outputs (the identity image before the first frame), the audio window a^(i−n..i+n) and the expression window
e_o^(i−n..i+n), where e_o = e_n + k·(e_y − e_n) (eq. 14–15, corrected direction; `emodiff.control`). An
optional RRDBNet super-resolves each output frame. Classifier-free guidance for audio and expression runs in
the same batch as the conditional prediction, and several videos are sampled as one batch.

On disk the pipeline is a diffusers-style folder: `model_index.json` (pipeline settings and, per component,
`[module, class]`) and one subfolder per component written by its own `save_pretrained`; the scheduler is one of
them (`scheduler/scheduler_config.json`), the pipeline's default sampler with the trained β_t.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from huggingface_hub.utils import validate_repo_id
from tqdm.auto import tqdm

from emodiff import __version__
from emodiff.control import ScheduleOptions, expression_condition, frame_schedule
from emodiff.data.datasets import frames_to_tensor, window_indices
from emodiff.data.labels import NEUTRAL
from emodiff.diffusion.gaussian import GaussianDiffusion, config_betas, motion_frames
from emodiff.diffusion.sampling import GuidanceRow, UNGUIDED, denoise
from emodiff.diffusion.schedulers import SCHEDULER_CLASSES, make_scheduler, sampler_name, scheduler_betas
from emodiff.errors import EmodiffError
from emodiff.files import write_text_atomic
from emodiff.inference import InferenceOptions, autocast, prepare_modules
from emodiff.models.expression_reference import ExpressionReference

COMPONENTS = ("unet", "reference_net", "expression_reference", "scheduler", "expression_generator",
              "intensity_predictor", "super_resolution")
OPTIONAL_COMPONENTS = ("expression_generator", "intensity_predictor", "super_resolution")
SETTINGS = ("resolution", "window", "fps", "audio_features", "audio_model", "motion_noise", "steps", "guidance")
DEFAULT_STEPS = 25  # DDIM steps per frame of a pipeline that names none (a distilled one names its own)
_LOADABLE_PACKAGE = "emodiff."  # model_index.json may only name classes of this package
# classes that moved: the (module, class) a pipeline folder written before the move names -> where it lives now
MOVED_CLASSES = {("emodiff.pipeline", "ExpressionReference"): ("emodiff.models.expression_reference",
                                                               "ExpressionReference")}


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE read when called (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _is_hub_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def pipeline_folder(name_or_path: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                    local_files_only: bool | None = None) -> Path:
    """The local folder of a pipeline: `name_or_path` itself when it exists or cannot be a Hub id, otherwise the
    snapshot of the Hugging Face Hub repo `name_or_path` ("org/name"), taken from the Hub cache or downloaded into
    it by `snapshot_download` (docs/design.md §5.4). `local_files_only` None follows HF_HUB_OFFLINE."""
    path = Path(name_or_path)
    repo_id = str(name_or_path)
    if path.exists() or not _is_hub_id(repo_id):
        return path
    offline = _hub_offline() if local_files_only is None else local_files_only
    where = repo_id + (f" at revision {revision}" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
                                      library_name="emodiff", library_version=__version__))
    except LocalEntryNotFoundError as err:
        reason = ("Hub downloads are off (HF_HUB_OFFLINE or local_files_only)" if offline
                  else "the Hugging Face Hub could not be reached")
        options = (f" --revision {revision}" if revision else "") + (f" --cache-dir {cache_dir}" if cache_dir else "")
        raise EmodiffError(f"{where} is neither a local folder nor a pipeline in the Hugging Face cache, and {reason}: "
                           f"download it on a connected machine (`hf download {repo_id}{options}`) or pass the local "
                           "folder of a pipeline.") from err
    except (GatedRepoError, RepositoryNotFoundError) as err:
        raise EmodiffError(f"{repo_id} is neither a local folder nor a Hugging Face Hub repo you can read (a private "
                           "or gated repo needs `hf auth login` or HF_TOKEN).") from err
    except RevisionNotFoundError as err:
        raise EmodiffError(f"The Hugging Face Hub repo {repo_id} has no revision {revision}.") from err
    except OSError as err:
        raise EmodiffError(f"Cannot download {where} from the Hugging Face Hub: {first_line(err)}") from err


def load_scheduler(directory: Path, index: dict, unet: ModelMixin) -> SchedulerMixin:
    """The pipeline folder's scheduler component; a folder written before schedulers were saved has the training's
    `diffusion` section (beta_schedule, num_train_timesteps) in model_index.json instead, and sampled with DDIM."""
    module_name, class_name = index.get("scheduler") or [None, None]
    if module_name is None:
        if "diffusion" not in index:
            raise EmodiffError(f"The pipeline at {directory} has neither a scheduler nor the diffusion settings.")
        return make_scheduler("ddim", config_betas(index["diffusion"]), unet.config.get("prediction_type", "epsilon"))
    classes = {cls.__name__: cls for cls in SCHEDULER_CLASSES.values()}
    if module_name != "diffusers" or class_name not in classes:
        raise EmodiffError(f"{directory / 'model_index.json'} names {module_name}.{class_name} for the scheduler; "
                           f"only {', '.join(sorted(classes))} of diffusers load.")
    try:
        return classes[class_name].from_pretrained(directory / "scheduler")
    except (OSError, ValueError) as err:
        raise EmodiffError(f"Cannot load the scheduler of the pipeline at {directory}: {first_line(err)}") from err


@dataclass
class VideoConditions:
    """Everything the denoiser needs for one video of T frames (the outputs of `EmoDiffPipeline.conditions`)."""

    identity: torch.Tensor    # (3, R, R) aligned identity crop in [-1, 1]
    audio: torch.Tensor       # (T, F) frame-aligned audio features
    expression: torch.Tensor  # (T, D) e_o per frame
    intensity: torch.Tensor   # (T,) k per frame
    emotion_weights: torch.Tensor  # (T, len(EMOTIONS)) emotion mix per frame (a timeline cross-fades)

    @property
    def n_frames(self) -> int:
        return len(self.audio)


class EmoDiffPipeline:
    """Composes audio features, expression targets/generator, intensity schedule or predictor, ReferenceNet,
    denoiser, scheduler and optional super-resolution into frame-by-frame sampling (paper §3.4)."""

    def __init__(self, unet: ModelMixin, reference_net: ModelMixin, expression_reference: ExpressionReference,
                 expression_generator: ModelMixin | None = None, intensity_predictor: ModelMixin | None = None,
                 super_resolution: ModelMixin | None = None, *, scheduler: SchedulerMixin, resolution: int,
                 window: int = 2,
                 fps: float = 25.0, audio_features: str = "mel", audio_model: str | None = None,
                 motion_noise: int = 0, steps: int | None = None, guidance: Sequence[float] | None = None) -> None:
        """`scheduler` is the pipeline's default sampler, with the β_t the denoiser was trained on
        (`make_scheduler`); a call that names another kind gets one made from the same β_t.
        `motion_noise` is the level s (a diffusion step) the motion frames are noised to before each frame
        (the denoiser's `train.motion_noise_sampling`; 0 = clean motion frames, the paper). `steps` is the number of
        sampling steps per frame the pipeline is made for (a distilled student's; None = DEFAULT_STEPS), `guidance` the
        (s_audio, s_expression) it samples with when a call names none (None = 1, 1: no guidance; a distilled student
        has its own baked in). These and the scheduler are the one place that sampling defaults live: demo, sample,
        app and the experiments read them."""
        if motion_noise and getattr(unet, "motion_noise_embedding", None) is None:
            raise EmodiffError("motion_noise needs a denoiser trained with motion-frame noise (train.motion_noise_max > 0).")
        self.unet = unet
        self.reference_net = reference_net
        self.expression_reference = expression_reference
        self.expression_generator = expression_generator
        self.intensity_predictor = intensity_predictor
        self.super_resolution = super_resolution
        self.scheduler = scheduler
        sampler_name(scheduler)  # one of emodiff's samplers
        self.settings = {"resolution": resolution, "window": window, "fps": fps, "audio_features": audio_features,
                         "audio_model": audio_model, "motion_noise": int(motion_noise), "steps": steps,
                         "guidance": None if guidance is None else [float(g) for g in guidance]}
        self.inference = InferenceOptions()

    # ----------------------------------------------------------------------------------------- storage
    def components(self) -> dict[str, object | None]:
        return {name: getattr(self, name) for name in COMPONENTS}

    def save_pretrained(self, directory: str | Path, push_to_hub: bool = False, repo_id: str | None = None,
                        private: bool | None = None, commit_message: str | None = None) -> None:
        """Write `model_index.json` and one `save_pretrained` subfolder per present component; with `push_to_hub`,
        then upload the folder to the Hugging Face Hub repo `repo_id` (default: the folder's name), created when
        missing (docs/design.md §5.4)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        index: dict[str, object] = {"_class_name": type(self).__name__, "_emodiff_version": __version__, **self.settings}
        for name, component in self.components().items():
            if component is None:
                index[name] = [None, None]
                continue
            component.save_pretrained(directory / name)
            module_name = "diffusers" if name == "scheduler" else type(component).__module__
            index[name] = [module_name, type(component).__name__]
        write_text_atomic(directory / "model_index.json", json.dumps(index, indent=2))
        if push_to_hub:
            repo_id = repo_id or directory.name
            try:
                api = HfApi()
                repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
                api.upload_folder(repo_id=repo_id, folder_path=directory,
                                  commit_message=commit_message or "Upload emodiff pipeline")
            except OSError as err:
                raise EmodiffError(f"{directory} was saved but not pushed to the Hugging Face Hub repo {repo_id}: "
                                   f"{first_line(err)}") from err

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool | None = None) -> "EmoDiffPipeline":
        """Load a folder written by `save_pretrained`, or a Hugging Face Hub id ("org/name") of one through the Hub
        cache (`pipeline_folder`); a missing or broken pipeline is one clear sentence."""
        directory = pipeline_folder(name_or_path, revision, cache_dir, local_files_only)
        index_path = directory / "model_index.json"
        if not index_path.is_file():
            raise EmodiffError(f"No emodiff pipeline at {directory}: model_index.json is missing.")
        try:
            index = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EmodiffError(f"{index_path} is not valid JSON ({err}).") from err
        components = {}
        for name in COMPONENTS:
            module_name, class_name = index.get(name) or [None, None]
            if name == "scheduler":
                continue
            if module_name is None:
                if name not in OPTIONAL_COMPONENTS:
                    raise EmodiffError(f"The pipeline at {directory} has no {name}, which sampling needs.")
                components[name] = None
                continue
            module_name, class_name = MOVED_CLASSES.get((module_name, class_name), (module_name, class_name))
            if not module_name.startswith(_LOADABLE_PACKAGE):
                raise EmodiffError(f"{index_path} names {module_name}.{class_name} for {name}; only emodiff classes load.")
            try:
                component_cls = getattr(importlib.import_module(module_name), class_name)
                components[name] = component_cls.from_pretrained(directory / name)
            except (OSError, ValueError, KeyError, AttributeError, RuntimeError, ImportError, TypeError) as err:
                raise EmodiffError(f"Cannot load the {name} of the pipeline at {directory}: {first_line(err)}") from err
        settings = {key: index[key] for key in SETTINGS if key in index}
        if "resolution" not in settings:
            raise EmodiffError(f"{index_path} lacks the resolution setting of the pipeline.")
        pipeline = cls(**components, scheduler=load_scheduler(directory, index, components["unet"]), **settings)
        for module in pipeline.modules():
            module.eval()
        return pipeline

    def modules(self) -> list[torch.nn.Module]:
        return [c for c in self.components().values() if isinstance(c, torch.nn.Module)]

    def to(self, device: torch.device | str) -> "EmoDiffPipeline":
        for module in self.modules():
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def accelerate_inference(self, options: InferenceOptions) -> "EmoDiffPipeline":
        """Run the networks with `options` from now on (`emodiff.inference`: autocast precision, channels_last,
        torch.compile of the denoiser, attention backend); call it after `to(device)`."""
        prepare_modules(self.unet, [m for m in self.modules() if m is not self.unet], self.device, options)
        self.inference = options
        return self

    # ------------------------------------------------------------------------------------ conditions
    @torch.no_grad()
    def expression_sequence(self, emotion_weights: np.ndarray, intensity: np.ndarray, seed: int = 0) -> np.ndarray:
        """e_o (T, D) per frame: e_n + k·(e_y − e_n) (eq. 14–15), e_y mixed over the emotion weights (T, E).

        With an expression generator G (paper §3.3), e_n and each present emotion's e_y are sequences that G
        synthesises from one shared noise z (so they differ only by the emotion); otherwise they are the stored
        neutral expression and per-emotion targets.
        """
        n_frames = len(emotion_weights)
        reference = self.expression_reference
        reference.check_emotions(emotion_weights)
        neutral = reference.neutral.cpu().numpy()
        targets = reference.targets.cpu().numpy()[:, None].repeat(n_frames, 1)  # (E, T, D)
        generator_model = self.expression_generator
        if generator_model is not None:
            emotions = [NEUTRAL, *(int(e) for e in np.flatnonzero(emotion_weights.any(0)) if e != NEUTRAL)]
            z = generator_model.sample_noise(1, n_frames, torch.Generator().manual_seed(seed))
            sequences = generator_model(torch.tensor(emotions, device=generator_model.device),
                                        z.expand(len(emotions), -1, -1)).float().cpu().numpy()
            neutral = sequences[0]
            targets[emotions] = sequences
        return expression_condition(neutral, targets, emotion_weights, intensity)

    def conditions(self, identity_image: np.ndarray, audio: np.ndarray, emotion: str, intensity: str | float,
                   *, options: ScheduleOptions = ScheduleOptions(), seed: int = 0, aligned: bool = False) -> VideoConditions:
        """Align the identity image, extract the audio features and build the per-frame expression condition.

        `emotion` is a name or a timeline (`"happy@0,surprised@2"`), `intensity` a `parse_intensity` SPEC, applied
        with `options` (`frame_schedule`). The video has one frame per audio-feature row, T = round(duration × fps).
        `aligned=True` takes the identity image as an aligned face crop already (a store frame, a synthetic render)
        and only resizes it.
        """
        from emodiff.data.audio_features import check_speech, extract_audio_features

        fps, resolution = self.settings["fps"], self.settings["resolution"]
        check_speech(audio)
        features = extract_audio_features(audio, fps, kind=self.settings["audio_features"],
                                          model=self.settings["audio_model"])
        k, weights = frame_schedule(emotion, intensity, len(features), fps, options, features, self.intensity_predictor)
        if aligned:
            crop = identity_image
        else:
            from emodiff.data.align import align_image  # imports mediapipe: only when an image is aligned

            crop = align_image(identity_image, resolution)
        return VideoConditions(
            identity=frames_to_tensor(crop, resolution),
            audio=torch.as_tensor(np.asarray(features, dtype=np.float32)),
            expression=torch.as_tensor(self.expression_sequence(weights, k, seed), dtype=torch.float32),
            intensity=torch.as_tensor(k, dtype=torch.float32),
            emotion_weights=torch.as_tensor(weights),
        )

    # -------------------------------------------------------------------------------------- sampling
    @property
    def default_steps(self) -> int:
        """Sampling steps per frame when a call names none: the pipeline's `steps` setting, else DEFAULT_STEPS."""
        return self.settings["steps"] or DEFAULT_STEPS

    @property
    def guidance_baked(self) -> tuple[float, float] | None:
        """(s_audio, s_expression) distilled into the UNet (`emodiff train distill`), else None."""
        scales = self.unet.config.get("guidance_scales")
        return None if scales is None else (float(scales[0]), float(scales[1]))

    @property
    def sampler(self) -> str:
        """The kind of the pipeline's own scheduler (SAMPLERS), which a call that names none samples with."""
        return sampler_name(self.scheduler)

    def make_sampler(self, sampler: str | None, steps: int) -> SchedulerMixin:
        """A fresh scheduler of the requested kind (None: the pipeline's own, with its saved options) with the trained
        β schedule (validates `steps`)."""
        if steps < 1:
            raise EmodiffError(f"The number of sampling steps must be at least 1, not {steps}.")
        if sampler is None or sampler == self.sampler:
            return type(self.scheduler).from_config(self.scheduler.config)
        return make_scheduler(sampler, scheduler_betas(self.scheduler), self.unet.config.get("prediction_type", "epsilon"))

    def guidance_scales(self, cfg_audio: float | None, cfg_expression: float | None) -> tuple[float, float]:
        """The (s_audio, s_expression) a call samples with: None means the UNet's baked scales for a distilled
        student and the pipeline's `guidance` setting otherwise (1, no guidance, when it has none); a student
        refuses scales other than its own."""
        baked = self.guidance_baked
        default = baked or self.settings["guidance"] or (1.0, 1.0)
        asked = tuple(float(default[i]) if value is None else float(value) for i, value in enumerate((cfg_audio, cfg_expression)))
        if baked is not None and not np.allclose(asked, baked):
            raise EmodiffError(f"This pipeline's denoiser was distilled with guidance audio {baked[0]:g} / expression "
                               f"{baked[1]:g} baked in, so it cannot sample with audio {asked[0]:g} / expression "
                               f"{asked[1]:g}; leave the guidance scales unset or use the teacher's pipeline.")
        return asked

    def guidance_rows(self, cfg_audio: float | None, cfg_expression: float | None) -> list[GuidanceRow]:
        """The (audio kept, expression kept) rows one denoising step evaluates as one batch: (a,e), then (a,∅) for
        either guidance, then (∅,∅) for audio guidance; a distilled student (guidance baked in) needs only (a,e)."""
        s_a, s_e = self.guidance_scales(cfg_audio, cfg_expression)
        if self.guidance_baked is not None:
            return list(UNGUIDED)
        return [*UNGUIDED] + [(True, False)] * (s_a != 1.0 or s_e != 1.0) + [(False, False)] * (s_a != 1.0)

    def forwards_per_frame(self, steps: int, cfg_audio: float | None = None, cfg_expression: float | None = None) -> int:
        """UNet evaluations (batch rows) per generated frame: steps × guidance rows."""
        return steps * len(self.guidance_rows(cfg_audio, cfg_expression))

    def describe_sampling(self, sampler: str | None = None, steps: int | None = None, cfg_audio: float | None = None,
                          cfg_expression: float | None = None) -> str:
        """One line for users: the sampler, its steps, the guidance and the UNet forwards per frame it costs."""
        steps = self.default_steps if steps is None else steps
        s_a, s_e = self.guidance_scales(cfg_audio, cfg_expression)
        kind = "distilled student" if self.guidance_baked else "teacher"
        return (f"{kind}, {sampler or self.sampler} × {steps} steps, guidance audio {s_a:g} / expression {s_e:g}: "
                f"{self.forwards_per_frame(steps, cfg_audio, cfg_expression)} UNet forwards per frame")

    def denoise(self, x: torch.Tensor, conditions: dict[str, torch.Tensor], reference_features: Sequence[torch.Tensor],
                scheduler: SchedulerMixin, steps: int, cfg_audio: float | None = None, cfg_expression: float | None = None,
                generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """x_T (B,3,H,W) → x_0 in [−1, 1] for one batch of frames (eq. 3): `emodiff.diffusion.sampling.denoise` with
        this pipeline's guidance rows and scales, in its inference precision."""
        with autocast(x.device, self.inference.precision):
            return denoise(self.unet, scheduler, x, conditions, reference_features, steps,
                           self.guidance_rows(cfg_audio, cfg_expression), self.guidance_scales(cfg_audio, cfg_expression),
                           generator)

    @torch.no_grad()
    def sample(self, videos: Sequence[VideoConditions], steps: int | None = None, sampler: str | None = None,
               cfg_audio: float | None = None, cfg_expression: float | None = None, seeds: Sequence[int] | None = None,
               progress: bool = True, real_frames: Sequence[torch.Tensor] | None = None,
               ) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        """Generate the videos frame by frame as one batch; yields (i, {video number: frame (3, H, W) in [-1, 1]}).

        `steps` None is the pipeline's `default_steps`, `sampler` None its own scheduler's kind; guidance scales None are a distilled student's baked ones
        and no guidance (1) otherwise.

        Only the two previous outputs per video are kept, so memory does not grow with the length.
        Each video draws its noise from its own generator seeded by `seeds[v]`, so a video is the same
        whether it is sampled alone or in a batch. Videos that end drop out of the batch. Besides the
        windows, the UNet gets each frame's dominant emotion and k, which the intensity-control encoder
        variants (renorm, concat, scaling; framewise paper Table 3) use instead of the expression window.
        With the `motion_noise` setting s > 0 the motion frames are noised to level s first (q_sample), as in
        training, so the grain of generated frames does not build up over the video.
        `real_frames` (one (T, 3, H, W) tensor in [-1, 1] per video) makes the motion frames the real previous frames
        instead of the generated ones, as in training (teacher forcing): it tells the denoiser's own error from the
        error the autoregressive rollout adds.
        """
        device, dtype = self.device, self.unet.dtype
        steps = self.default_steps if steps is None else steps
        scheduler = self.make_sampler(sampler, steps)
        motion_noise = self.settings["motion_noise"]
        diffusion = GaussianDiffusion(scheduler_betas(self.scheduler))
        seeds = list(seeds) if seeds is not None else [0] * len(videos)
        generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        self.guidance_rows(cfg_audio, cfg_expression)  # refuse scales a distilled student cannot use before any work
        n = self.settings["window"]
        identity = torch.stack([v.identity for v in videos]).to(device, dtype)
        with autocast(device, self.inference.precision):
            reference_features = self.reference_net(identity)  # once per video, reused for every frame and step
        previous = [identity, identity]  # x^(i-2), x^(i-1): the identity image before the first frame
        lengths = [v.n_frames for v in videos]
        for i in tqdm(range(max(lengths)), desc="sampling frames", unit="frame", disable=not progress):
            active = [v for v in range(len(videos)) if i < lengths[v]]
            index = torch.tensor(active, device=device)
            windows = [window_indices(i, n, lengths[v]) for v in active]
            frame_generators = [generators[v] for v in active]
            motion = torch.cat([previous[0][index], previous[1][index]], 1)
            level = torch.full((len(active),), motion_noise, device=device)
            if motion_noise:
                noise = torch.stack([torch.randn(motion.shape[1:], generator=g, device=device) for g in frame_generators])
                motion = motion_frames(diffusion, motion, identity[index], levels=level, noise=noise.to(dtype))
            conditions = {
                "identity": identity[index],
                "motion": motion,
                "motion_noise": level,
                "audio": torch.stack([videos[v].audio[w] for v, w in zip(active, windows)]).to(device, dtype),
                "expression": torch.stack([videos[v].expression[w] for v, w in zip(active, windows)]).to(device, dtype),
                "emotion": torch.stack([videos[v].emotion_weights[i].argmax() for v in active]).to(device),
                "intensity": torch.stack([videos[v].intensity[i] for v in active]).to(device, dtype),
            }
            x = torch.stack([torch.randn(identity.shape[1:], generator=g, device=device) for g in frame_generators])
            frames = self.denoise(x, conditions, [f[index] for f in reference_features], scheduler, steps, cfg_audio,
                                  cfg_expression, generator=frame_generators)
            new = torch.zeros_like(identity)
            if real_frames is None:
                new[index] = frames.to(dtype)
            else:
                new[index] = torch.stack([real_frames[v][i] for v in active]).to(device, dtype)
            previous = [previous[1], new]
            if self.super_resolution is not None:
                frames = self.super_resolution.upscale(frames)
            yield i, {v: frames[j] for j, v in enumerate(active)}
