"""The training infrastructure every stage shares (denoiser, expression GAN, intensity VAE, emotion classifier).

- `load_config`, `training_config`: a YAML config of `CONFIG_DIR` (or any path) plus `key=value` overrides
  (OmegaConf; `merge_overrides` refuses unknown keys), and the store, output folder and step count a run names
  (`emodiff train <stage>`'s --set, --store, --output-dir, --max-steps; emodiff/cli/train).
- `TrainingRun`: the accelerator (seeded per process), checkpoints `checkpoints/checkpoint-<step>`
  (accelerate `save_state` into a temporary folder renamed when complete, the last K kept, a stage's
  own state as safetensors + JSON), exact resume with `--resume latest` or a checkpoint path (a folder
  that already holds checkpoints is never trained over without it), TensorBoard + train_log.jsonl
  logs, the progress bar and the final atomic `save_pretrained`.
- `batches`: an endless, resumable stream of batches: the order of every epoch is fixed by
  (seed, epoch), so a run resumed at batch s sees exactly the batches an unbroken run would.
- `check_finite`, `optimizer_step`, `warmup`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from emodiff.data.datasets import SequenceDataset
from emodiff.data.store import Clip, ClipStore
from emodiff.errors import EmodiffError
from emodiff.files import atomic_path



def _config_dir() -> Path:
    """The stage configs: emodiff/_configs where the package is installed from a wheel (pyproject.toml maps the
    repository's configs/ there), else configs/ at the top of the source checkout (also under an editable install)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_configs"
    return installed if installed.is_dir() else package.parent / "configs"


CONFIG_DIR = _config_dir()
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def _override_sections(config: DictConfig) -> list[DictConfig]:
    """The mappings named `overrides` anywhere in `config` (a synthetic run's per-stage overrides of a stage config)."""
    found = []
    for key, value in config.items():
        if isinstance(value, DictConfig):
            found.extend([value] if key == "overrides" else _override_sections(value))
    return found


def merge_overrides(base: DictConfig, overrides: DictConfig | dict[str, Any]) -> DictConfig:
    """`overrides` merged onto a copy of `base`; a key that `base` lacks is refused in one sentence naming the valid
    keys of its section (a misspelt key would otherwise be silently added). Sections named `overrides` hold
    overrides of another config and take any key (that config refuses the unknown ones when they are applied)."""
    strict = copy.deepcopy(base)
    OmegaConf.set_struct(strict, True)
    for section in _override_sections(strict):  # overrides of another config, checked where they are applied
        OmegaConf.set_struct(section, False)
    try:
        merged = OmegaConf.merge(strict, overrides)
    except ConfigKeyError as err:
        section = err.full_key.rpartition(".")[0]
        node = OmegaConf.select(base, section) if section else base
        where = f"in {section}" if section else "at the top level"
        raise EmodiffError(f"Unknown config key '{err.full_key}'; valid keys {where}: {', '.join(map(str, node))}.") \
            from None
    OmegaConf.set_struct(merged, False)
    return merged


def apply_overrides(config: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """`config` with `key=value` overrides of its keys applied (`merge_overrides`: an unknown key is refused); a
    malformed override is one sentence."""
    for override in overrides:
        try:
            OmegaConf.from_dotlist([override])
        except Exception as err:  # omegaconf raises several error types for one bad override
            reason = str(err).strip().splitlines()[0].rstrip(".")
            raise EmodiffError(f"Bad config override '{override}' (KEY=VALUE with a YAML value): {reason}.") from None
    return merge_overrides(config, OmegaConf.from_dotlist(list(overrides)))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The YAML config at `path` with `key=value` overrides of its keys applied (`apply_overrides`). A top-level
    `base: FILE` (relative to the config's folder) makes the config a set of overrides of that one."""
    if not Path(path).is_file():
        raise EmodiffError(f"Config file {path} does not exist.")
    config = OmegaConf.load(path)
    if "base" in config:
        config = merge_overrides(load_config(Path(path).parent / config.pop("base")), config)
    return apply_overrides(config, overrides)


def training_config(path: str | Path, overrides: Sequence[str] = (), store: str | Path | None = None,
                    output_dir: str | Path | None = None, max_steps: int | None = None,
                    require_store: bool = True) -> DictConfig:
    """`load_config` of `path` and `overrides`, then `store` (data.store), `output_dir` and `max_steps`
    (train.max_steps) applied where given; a missing store is an error when `require_store`."""
    config = load_config(path, overrides)
    if store is not None:
        config.data.store = str(store)
    if output_dir is not None:
        config.output_dir = str(output_dir)
    if max_steps is not None:
        config.train.max_steps = max_steps
    if require_store and not config.data.get("store"):
        raise EmodiffError("No clip store given; pass --store or set data.store in the config.")
    return config


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are not listed)."""
    found = checkpoint_dir.iterdir() if checkpoint_dir.is_dir() else []
    complete = [p for p in found if CHECKPOINT.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(complete, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def find_checkpoint(checkpoint_dir: Path, stage: str, resume: str | None) -> Path | None:
    """The checkpoint `--resume` asks for: "latest" = the newest in `checkpoint_dir` (None when there is
    none yet), or a checkpoint folder of `stage`. Without `--resume` existing checkpoints are refused."""
    found = list_checkpoints(checkpoint_dir)
    if resume is None:
        if found:
            raise EmodiffError(f"{checkpoint_dir.parent} already holds a {stage} run (newest checkpoint "
                               f"{found[-1].name}); pass --resume latest to continue it, or choose another --output-dir.")
        return None
    if resume == "latest":
        return found[-1] if found else None
    state = Path(resume) / STATE_FILE
    if not state.is_file() or json.loads(state.read_text()).get("stage") != stage:
        raise EmodiffError(f"{resume} is not a {stage} checkpoint (no {STATE_FILE} of a {stage} run).")
    return Path(resume)


class Resumed(NamedTuple):
    """What a run starts from: the step done, and the stage's own state and tensors of the checkpoint."""

    step: int
    state: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]


def flat_hparams(config: DictConfig) -> dict[str, Any]:
    """Scalar config entries keyed by dotted name (TensorBoard hparams accept only scalars)."""
    flat = {}
    for section, values in OmegaConf.to_container(config).items():
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
            flat[f"{section}.{key}".rstrip(".")] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


PRECISIONS = ("no", "fp16", "bf16")


def mixed_precision(value: object) -> str:
    """train.mixed_precision as accelerate names it; YAML reads an unquoted `no` (`--set train.mixed_precision=no`)
    as false, which means "no" too. Anything else is one sentence."""
    name = "no" if value is False else value
    if name not in PRECISIONS:
        raise EmodiffError(f"train.mixed_precision is {value!r}; choose one of: {', '.join(PRECISIONS)}.")
    return str(name)


class TrainingRun:
    """One stage's run in `config.output_dir`: accelerator, checkpoints and resume, logs, progress bar
    and final weights. Uses config keys seed, output_dir and train.{max_steps, mixed_precision,
    checkpoint_every, keep_checkpoints, log_every}."""

    def __init__(self, config: DictConfig, stage: str, resume: str | None = None,
                 gradient_accumulation_steps: int = 1):
        self.config, self.stage, self.train = config, stage, config.train
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.resume_from = find_checkpoint(self.checkpoint_dir, stage, resume)
        # Synchronise every `gradient_accumulation_steps` batches, not at epoch ends, so that a step
        # is always the same number of batches (exact resume).
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision(self.train.mixed_precision),
            gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=gradient_accumulation_steps,
                                                                    sync_with_dataloader=False),
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
        )
        set_seed(config.seed, device_specific=True)  # the RNG states then travel in the checkpoints
        if self.accelerator.is_main_process:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.checkpoint_dir.glob(".checkpoint-*.tmp"):  # left by a run killed while saving
                shutil.rmtree(stale)
            with atomic_path(self.output_dir / "config.yaml") as tmp:
                OmegaConf.save(config, tmp)
        if resume == "latest" and self.resume_from is None:
            self.accelerator.print(f"no checkpoint in {self.checkpoint_dir} yet; starting from step 0")
        self.accelerator.wait_for_everyone()
        self.accelerator.init_trackers(stage, config=flat_hparams(config))
        self.bar: tqdm | None = None

    def resume(self) -> Resumed:
        """Load the checkpoint `--resume` chose (call after `accelerator.prepare`): models, optimisers and
        RNG states, plus the stage's own state and tensors. Step 0 when the run starts fresh."""
        if self.resume_from is None:
            return Resumed(0, {}, {})
        self.accelerator.load_state(str(self.resume_from))
        state = json.loads((self.resume_from / STATE_FILE).read_text())
        tensors = {name: load_file(str(self.resume_from / f"{name}.safetensors")) for name in state.pop("tensors")}
        step = int(state.pop("step"))
        state.pop("stage")
        self.accelerator.print(f"resumed from {self.resume_from} at step {step}")
        return Resumed(step, state, tensors)

    def steps(self, start: int) -> Iterator[int]:
        """The steps start+1 … train.max_steps (counted from 1) under a progress bar."""
        self.bar = tqdm(range(start + 1, self.train.max_steps + 1), initial=start, total=self.train.max_steps,
                        desc=self.stage, disable=not self.accelerator.is_local_main_process, dynamic_ncols=True)
        return iter(self.bar)

    def log(self, step: int, values: dict[str, torch.Tensor | float], show: Sequence[str] = ()) -> None:
        """Every train.log_every steps and at the last: `values` (tensors averaged over processes) to
        TensorBoard and train_log.jsonl, and those named in `show` on the progress bar."""
        if step % self.train.log_every and step != self.train.max_steps:
            return
        logs = {k: v if isinstance(v, float) else self.accelerator.reduce(v.detach(), "mean").item()
                for k, v in values.items()}
        self.accelerator.log(logs, step=step)
        if self.accelerator.is_main_process:
            with open(self.output_dir / "train_log.jsonl", "a") as log:
                log.write(json.dumps({"step": step, **logs}) + "\n")
        if self.bar is not None:
            self.bar.set_postfix({k: f"{logs[k]:.4g}" for k in show})

    def checkpoint_due(self, step: int) -> bool:
        return step % self.train.checkpoint_every == 0 or step == self.train.max_steps

    def save_checkpoint(self, step: int, state: dict[str, Any] | None = None,
                        tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
        """accelerate `save_state` (models, optimisers, RNG states of every process), `tensors` as
        <name>.safetensors and `state` in trainer_state.json, written to a temporary folder renamed to
        checkpoints/checkpoint-<step> when complete; only the newest train.keep_checkpoints are kept."""
        final = self.checkpoint_dir / f"checkpoint-{step}"
        tmp = self.checkpoint_dir / f".checkpoint-{step}.tmp"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp), safe_serialization=True)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tensors = tensors or {}
            for name, named in tensors.items():
                save_file({k: v.detach().cpu().contiguous() for k, v in named.items()}, str(tmp / f"{name}.safetensors"))
            (tmp / STATE_FILE).write_text(json.dumps({"stage": self.stage, "step": step, "tensors": list(tensors),
                                                      **(state or {})}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in list_checkpoints(self.checkpoint_dir)[:-self.train.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def finish(self, models: dict[str, torch.nn.Module]) -> dict[str, Path]:
        """`save_pretrained` of each unwrapped model into a temporary folder renamed to <output_dir>/<name>."""
        if self.bar is not None:
            self.bar.close()
        self.accelerator.wait_for_everyone()
        paths = {name: self.output_dir / name for name in models}
        if self.accelerator.is_main_process:
            for name, model in models.items():
                tmp = self.output_dir / f".{name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                self.accelerator.unwrap_model(model).save_pretrained(tmp)
                shutil.rmtree(paths[name], ignore_errors=True)
                os.replace(tmp, paths[name])
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return paths


class EpochShuffle(Sampler[int]):
    """A permutation of range(n) fixed by (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def batches(accelerator: Accelerator, dataset: Dataset, batch_size: int, seed: int, start: int,
            num_workers: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches after the first `start` (per process; the last partial batch of an epoch is dropped)."""
    # The loader's own generator: starting an epoch then draws no number from the global RNG, whose
    # state (restored on resume) must depend on the step only.
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, sampler=EpochShuffle(len(dataset), seed),
                                            drop_last=True, num_workers=num_workers,
                                            generator=torch.Generator().manual_seed(seed)))
    per_epoch = len(loader)
    if per_epoch == 0:
        raise EmodiffError(f"The dataset has {len(dataset)} samples, fewer than one batch of {batch_size} per process.")
    epoch, skip = divmod(start, per_epoch)
    while True:
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch_loader.set_epoch(epoch)
        yield from epoch_loader
        epoch, skip = epoch + 1, 0


def check_finite(accelerator: Accelerator, values: dict[str, torch.Tensor], step: int) -> None:
    """Stop before the update of step `step` when a value is NaN or infinite on any process, so the
    checkpoints on disk stay intact."""
    gathered = accelerator.gather(torch.stack([v.detach().float().reshape(()) for v in values.values()])[None])
    for name, column in zip(values, gathered.T):
        bad = column[~torch.isfinite(column)]
        if len(bad):
            raise EmodiffError(f"Training stopped: the {name} became {bad[0].item()} at step {step}; the checkpoints "
                               "are intact (check the data or lower the learning rate, then --resume latest).")


def optimizer_step(accelerator: Accelerator, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   parameters: list[torch.nn.Parameter], max_grad_norm: float, step: int) -> None:
    """Backward of `loss` (accumulated under `accelerator.accumulate`); on a synchronising batch,
    gradient-norm clipping with the NaN/inf guard and the optimiser step; then zeroed gradients."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        norm = accelerator.clip_grad_norm_(parameters, max_grad_norm)
        # fp16's loss scaler skips overflowing steps by itself; elsewhere a non-finite norm is fatal.
        if accelerator.mixed_precision != "fp16":
            check_finite(accelerator, {"gradient norm": norm}, step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def save_image_rows(path: Path, rows: Sequence[torch.Tensor]) -> None:
    """A PNG of image rows: each (N, 3, H, W) in [-1, 1] side by side, the rows stacked (validation strips)."""
    from matplotlib import image as mpimg

    from emodiff.data.datasets import to_uint8

    path.parent.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(path, to_uint8(torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)))


def warmup(step: int, warmup_steps: int) -> float:
    """Linear warm-up factor of step `step` (counted from 1): step / warmup_steps, at most 1."""
    return min(1.0, step / max(1, warmup_steps))


def sequence_dataset(config: DictConfig, require_audio: bool = False,
                     keep: Callable[[Clip], bool] | None = None) -> SequenceDataset:
    """`SequenceDataset` windows of `config.data` (window, stride) over the store, with a clear error when empty."""
    store = ClipStore.open(config.data.store)
    try:
        return SequenceDataset(store, length=config.data.window, stride=config.data.stride,
                               require_audio=require_audio, keep=keep)
    except ValueError as err:
        raise EmodiffError(f"Nothing to train on: {err}.") from None
