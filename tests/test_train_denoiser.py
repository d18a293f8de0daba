"""Denoiser training: it learns, resumes exactly after SIGKILL, runs on 2 processes, fails cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from emodiff.assemble import pipeline_from_training
from emodiff.cli import main as cli_main
from emodiff.data.datasets import FrameDataset
from emodiff.data.store import ClipStore
from emodiff.diffusion.gaussian import GaussianDiffusion, make_betas
from emodiff.diffusion.sampling import denoise
from emodiff.diffusion.schedulers import make_scheduler
from emodiff.models.reference_net import ReferenceNet
from emodiff.models.unet import DenoisingUNet
from emodiff.pipeline import VideoConditions
from emodiff.train.common import load_config
from emodiff.train.denoiser import compute_losses

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "denoiser_tiny.yaml"
SIZE = 16


def write_disc_store(root: Path, n_frames: int = 24) -> ClipStore:
    """Two identities (background + disc colour) whose disc moves up and down with the 'audio'."""
    store = ClipStore.create(root)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    rng = np.random.default_rng(0)
    for ident, (bg, fg) in enumerate([((40, 60, 160), (250, 200, 60)), ((170, 50, 60), (60, 230, 220))]):
        loudness = 0.5 + 0.5 * np.sin(np.arange(n_frames) * 0.7 + ident)
        centre = 4 + 8 * loudness
        frames = np.empty((n_frames, SIZE, SIZE, 3), np.uint8)
        frames[:] = bg
        for i in range(n_frames):
            frames[i][(yy - centre[i]) ** 2 + (xx - SIZE / 2) ** 2 <= 9] = fg
        landmarks = np.zeros((n_frames, 68, 2), np.float32)
        landmarks[:, :, 0] = SIZE / 2
        landmarks[:, 48:68, 1] = centre[:, None]  # the "mouth" is the disc
        landmarks[:, 36:48, 1] = 2
        audio = np.stack([loudness, loudness**2, 1 - loudness, np.ones_like(loudness)], 1)
        store.write_clip(f"id{ident}", {"frames": frames, "audio_feats": audio, "landmarks": landmarks,
                                        "expression": np.tile(rng.normal(size=6), (n_frames, 1)),
                                        "intensity": loudness},
                         {"identity": f"id{ident}", "emotion": "neutral", "level": 1, "fps": 25},
                         audio=np.zeros(n_frames * 640, np.float32))
        store.append_manifest({"id": f"id{ident}", "status": "ok"})
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("disc_store")
    write_disc_store(root)
    return root


def train_cli(store: Path, out: Path, steps: int, *overrides: str, resume: str | None = None) -> int:
    argv = ["train", "denoiser", "--config", str(TINY), "--store", str(store), "--output-dir", str(out),
            "--max-steps", str(steps)]
    if resume:
        argv += ["--resume", resume]
    return cli_main(argv + ["--set", *overrides])


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [−1, 1]."""
    mse = ((a - b) / 2).square().flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


@torch.no_grad()
def sampled_psnr(unet: DenoisingUNet, reference_net: ReferenceNet, store: Path) -> float:
    dataset = FrameDataset(store, resolution=SIZE)
    items = [dataset[i] for i in range(0, len(dataset), 3)]
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    generator = torch.Generator().manual_seed(0)
    conditions = {key: batch[key] for key in ("identity", "motion", "audio", "expression")}
    frames = denoise(unet.eval(), make_scheduler("ddim", make_betas("linear", 1000)),
                     torch.randn(batch["identity"].shape, generator=generator), conditions,
                     reference_net.eval()(batch["identity"]), 20, generator=generator)
    return psnr(frames, batch["target"])


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory) -> Path:
    """The tiny denoiser trained 300 steps on the disc world."""
    out = tmp_path_factory.mktemp("disc_run") / "run"
    assert train_cli(store, out, 300, "train.log_every=1", "train.checkpoint_every=300",
                     "train.validate_every=300") == 0
    return out


@pytest.mark.slow
def test_denoiser_learns_the_disc_world(store, trained):
    """A smoke-level learning test (300 steps: the loss falls, samples beat an untrained UNet). That the denoiser
    follows its conditions rather than copying x^(i-1) is tested on a longer-trained one in test_end_to_end."""
    out = trained
    simple = [entry["loss/simple"] for entry in read_log(out)]
    early, late = np.mean(simple[:20]), np.mean(simple[-50:])
    trained = sampled_psnr(DenoisingUNet.from_pretrained(out / "unet"),
                           ReferenceNet.from_pretrained(out / "reference_net"), store)
    torch.manual_seed(0)
    fresh = DenoisingUNet.from_config(DenoisingUNet.load_config(out / "unet"))
    untrained = sampled_psnr(fresh, ReferenceNet.matching(fresh), store)
    print(f"\nL_simple first 20 steps {early:.3f} → last 50 steps {late:.3f}; "
          f"sampled-frame PSNR trained {trained:.2f} dB vs untrained {untrained:.2f} dB")
    assert late < 0.5 * early
    assert trained > untrained + 4.0
    assert (out / "validation" / "step_00000300.png").is_file()
    assert (out / "logs").is_dir() and any((out / "logs").rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(store, tmp_path, capsys):
    steps, half = 16, 8
    settings = ["train.checkpoint_every=8", "train.validate_every=1000", "train.keep_checkpoints=5"]
    straight = tmp_path / "straight"
    assert train_cli(store, straight, steps, *settings) == 0

    killed = tmp_path / "killed"
    # The same number of threads as the in-process runs: float sums differ with the thread count.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "emodiff", "train", "denoiser", "--config", str(TINY), "--store", str(store),
           "--output-dir", str(killed), "--max-steps", str(steps), "--set", *settings]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / f"checkpoint-{half}"
    deadline = time.monotonic() + 300
    while not checkpoint.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.is_dir() and not (killed / "unet").exists(), "the run was not killed half-way"

    # Without --resume the folder of the killed run is refused and left as it was.
    before = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert train_cli(store, killed, steps, *settings) == 1
    assert "pass --resume latest to continue it" in capsys.readouterr().err
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == before

    assert train_cli(store, killed, steps, *settings, resume="latest") == 0
    a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(killed / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    for name in ("model.safetensors", "ema.safetensors"):  # raw and EMA weights at the last checkpoint
        a = load_file(straight / "checkpoints" / f"checkpoint-{steps}" / name)
        b = load_file(killed / "checkpoints" / f"checkpoint-{steps}" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    logged = {e["step"]: e["loss/loss"] for e in read_log(killed)}
    assert logged[steps] == {e["step"]: e["loss/loss"] for e in read_log(straight)}[steps]


def test_two_processes_train_and_checkpoint(store, tmp_path):
    """`accelerate launch --num_processes 2` on CPU (gloo): one checkpoint with both ranks' RNG states."""
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "emodiff", "train", "denoiser", "--config", str(TINY), "--store", str(store), "--output-dir", str(out),
           "--max-steps", "4", "--set", "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=4"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = out / "checkpoints" / "checkpoint-4"
    assert {p.name for p in checkpoint.iterdir()} >= {"model.safetensors", "model_1.safetensors", "optimizer.bin",
                                                       "ema.safetensors", "random_states_0.pkl", "random_states_1.pkl"}
    assert [e["step"] for e in read_log(out)] == [1, 2, 3, 4]  # logged once, by the main process
    assert (out / "unet" / "config.json").is_file() and (out / "reference_net" / "config.json").is_file()


def test_nan_loss_stops_with_the_step_and_keeps_checkpoints_intact(store, tmp_path, capsys):
    out = tmp_path / "nan"
    code = train_cli(store, out, 20, "train.learning_rate=1e30", "train.warmup_steps=0", "train.checkpoint_every=1",
                     "train.validate_every=1000")
    assert code == 1
    err = capsys.readouterr().err
    assert re.search(r"became (nan|inf|-inf) at step \d+;", err) and "Traceback" not in err
    failed_step = int(err.split("at step ")[1].split(";")[0])
    names = {p.name for p in (out / "checkpoints").iterdir()}
    assert names == {f"checkpoint-{s}" for s in range(max(1, failed_step - 2), failed_step)}
    for folder in (out / "checkpoints").iterdir():
        weights = load_file(folder / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "unet").exists()


def test_bad_inputs_are_one_clear_sentence(store, tmp_path, capsys):
    assert train_cli(tmp_path / "nowhere", tmp_path / "o1", 1) == 1
    assert "is not a clip store" in capsys.readouterr().err
    argv = ["train", "denoiser", "--config", str(tmp_path / "missing.yaml"), "--store", str(store),
            "--output-dir", str(tmp_path / "o2")]
    assert cli_main(argv) == 1
    assert "does not exist" in capsys.readouterr().err
    assert train_cli(store, tmp_path / "o3", 1, "train.batch_size=1000") == 1
    assert "fewer than one batch" in capsys.readouterr().err
    assert train_cli(store, tmp_path / "o4", 1, resume=str(tmp_path)) == 1
    assert "not a denoiser checkpoint" in capsys.readouterr().err
    assert train_cli(store, tmp_path / "o5", 1, "train.mixed_precision=fp32") == 1
    assert "train.mixed_precision is 'fp32'; choose one of: no, fp16, bf16." in capsys.readouterr().err
    # YAML reads an unquoted `no` as false, which is what the user meant
    assert train_cli(store, tmp_path / "o6", 1, "train.mixed_precision=no", "train.checkpoint_every=1") == 0


def test_without_reference_net_trains_and_samples(store, tmp_path):
    """`unet.reference_levels=[]` is EMOdiffhead's "w/o ReferenceNet" (Table 2): no attention sites, a ReferenceNet
    without layers, the identity only in the input concatenation; it trains, saves, assembles and samples."""
    from emodiff.models.unet import ReferenceAttention
    from emodiff.pipeline import EmoDiffPipeline

    out = tmp_path / "no_reference"
    assert train_cli(store, out, 60, "unet.reference_levels=[]", "train.log_every=1", "train.checkpoint_every=60",
                     "train.validate_every=60") == 0
    simple = [entry["loss/simple"] for entry in read_log(out)]
    assert np.mean(simple[-10:]) < 0.5 * np.mean(simple[:10])
    pipeline = pipeline_from_training(out, ClipStore.open(store))
    assert not any(isinstance(m, ReferenceAttention) for m in pipeline.unet.modules())
    assert not list(pipeline.reference_net.parameters()) and pipeline.reference_net(torch.zeros(1, 3, SIZE, SIZE)) == []
    pipeline.save_pretrained(tmp_path / "pipeline")
    pipeline = EmoDiffPipeline.from_pretrained(tmp_path / "pipeline")
    audio = torch.from_numpy(np.array(ClipStore.open(store).clip("id0").audio_feats[:3], dtype=np.float32))
    video = VideoConditions(identity=FrameDataset(store, resolution=SIZE)[0]["identity"], audio=audio,
                            expression=torch.zeros(3, 6), intensity=torch.zeros(3), emotion_weights=torch.eye(8)[[0, 0, 0]])
    frames = [frame for _, batch in pipeline.sample([video], steps=2, progress=False) for frame in batch.values()]
    assert len(frames) == 3 and all(f.shape == (3, SIZE, SIZE) and torch.isfinite(f).all() for f in frames)


def test_renorm_encoder_adds_the_norm_loss(store, tmp_path):
    """With `unet.expression_encoder=renorm` the logged loss includes λ_norm·L_norm, and L_norm pulls the
    neutral latent (every clip of the disc store is neutral) towards the origin."""
    out = tmp_path / "renorm"
    assert train_cli(store, out, 30, "unet.expression_encoder=renorm", "train.log_every=1", "train.checkpoint_every=30",
                     "train.validate_every=1000") == 0
    log = read_log(out)
    d = load_config(TINY).diffusion
    assert d.lambda_norm == 0.1  # the framewise intensity paper's λ_norm
    weights = {"vlb": d.lambda_vlb, "lip": d.lambda_lip, "eye": d.lambda_eye, "norm": d.lambda_norm}
    for entry in log:
        expected = entry["loss/simple"] + sum(w * entry[f"loss/{k}"] for k, w in weights.items())
        assert entry["loss/loss"] == pytest.approx(expected, rel=1e-5)
    norms = [entry["loss/norm"] for entry in log]
    print(f"\nrenorm L_norm step 1 {norms[0]:.3f} → step 30 {norms[-1]:.3f}")
    assert norms[-1] < 0.5 * norms[0]


def test_motion_drop_feeds_the_identity_frame_as_both_motion_frames(store):
    """train.motion_drop = 1 gives the UNet exactly the inputs of the first sampled frame: x^(i−2) = x^(i−1) = x_id."""
    config = load_config(TINY)
    dataset = FrameDataset(store, resolution=SIZE)
    batch = {k: torch.stack([dataset[i][k] for i in (3, 7, 30)]) for k in dataset[0]}
    dropped = {**batch, "motion": batch["identity"].repeat(1, 2, 1, 1)}
    unet = DenoisingUNet(sample_size=SIZE, window=config.data.window, audio_dim=4, expression_dim=6,
                         **OmegaConf.to_container(config.unet))
    torch.manual_seed(0)
    with torch.no_grad():  # every weight random: a fresh UNet outputs zeros whatever its inputs
        for p in unet.parameters():
            p.normal_(0.0, 0.05)
    reference_net = ReferenceNet.matching(unet)
    diffusion = GaussianDiffusion.from_config(config.diffusion)

    def loss(motion_drop: float, inputs: dict[str, torch.Tensor]) -> float:
        config.train.motion_drop = motion_drop
        torch.manual_seed(1)
        return compute_losses(inputs, unet, reference_net, diffusion, config)["simple"].item()

    assert loss(1.0, batch) == loss(0.0, dropped)
    assert loss(0.0, batch) != loss(0.0, dropped)



@pytest.mark.slow
def test_fine_tuning_starts_from_the_trained_weights_with_the_fresh_modules_new(store, trained, tmp_path, capsys):
    """init.weights copies a trained denoiser into the new run (learning rate 0: nothing moves after), except the
    init.fresh prefixes, which keep a new initialisation; an architecture that does not match is one sentence."""
    out = tmp_path / "tuned"
    assert train_cli(store, out, 2, f"init.weights={trained}", "init.fresh=[expression_embedding]",
                     "train.learning_rate=0", "train.validate_every=1000") == 0
    source = load_file(trained / "unet" / "diffusion_pytorch_model.safetensors")
    tuned = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    fresh = [k for k in tuned if k.startswith("expression_embedding.") and k.endswith("weight")]
    kept = [k for k in tuned if not k.startswith("expression_embedding.")]
    assert fresh and len(kept) > 50
    assert all(torch.equal(tuned[k], source[k]) for k in kept)
    assert not any(torch.equal(tuned[k], source[k]) for k in fresh)
    reference = load_file(out / "reference_net" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(v, load_file(trained / "reference_net" / "diffusion_pytorch_model.safetensors")[k])
               for k, v in reference.items())

    assert train_cli(store, tmp_path / "wider", 2, f"init.weights={trained}", "unet.base_channels=8") != 0
    err = capsys.readouterr().err
    assert "init.weights:" in err and "init.fresh" in err and "Traceback" not in err
