"""How much of the mouth can the speech tell on a finished `emodiff real-clips` run, and how much does its denoiser use?

    python scripts/real_clips_audio.py RUN [--denoiser DIR] [--frames 96] [--out FILE.md]

1. The ceiling of the audio condition on these clips: a ridge regression and a small MLP map the denoiser's audio
   window (the store's log-mel rows of frames i−n … i+n, as the UNet gets them) to the mouth opening of frame i
   (`emodiff.metrics.landmarks.mouth_opening` of the store's landmarks), fitted on RUN/store_train and scored on the
   held-out seconds of RUN/store_heldout by the mean per-clip correlation, the `mouth_r` of `emodiff evaluate`.
   A denoiser whose mouth comes from the same audio window should not be expected to beat it.
2. The denoiser's use of the audio: the mean squared error of its predicted x_0 inside the mouth box of the training
   loss (eq. 16's L_lip mask) for `--frames` random frames of each store at several noise levels t, with the frame's
   own audio window, the window of another frame, and the null audio embedding. A denoiser that uses the speech is
   worse with the wrong window; one that ignores it is not.
The tables are printed (and written to --out); docs/real_clips/diagnosis.md has those of the fixture clips.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emodiff.data.datasets import FrameDataset, window_indices  # noqa: E402
from emodiff.data.store import ClipStore  # noqa: E402
from emodiff.diffusion.gaussian import GaussianDiffusion, masked_mse, motion_frames  # noqa: E402
from emodiff.metrics.landmarks import mouth_opening  # noqa: E402
from emodiff.models.reference_net import ReferenceNet  # noqa: E402
from emodiff.models.unet import DenoisingUNet  # noqa: E402

LEVELS = (100, 300, 500, 700, 900)


def audio_windows(store: ClipStore, window: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per clip: the audio windows (T, (2n+1)·F) and the standardised mouth opening (T,) of every frame."""
    out = {}
    for clip_id in store.clip_ids():
        clip = store.clip(clip_id)
        audio = np.asarray(clip.audio_feats, dtype=np.float32)
        rows = [window_indices(i, window, len(audio)) for i in range(len(audio))]
        opening = mouth_opening(np.asarray(clip.landmarks))
        out[clip_id] = (audio[np.stack(rows)].reshape(len(audio), -1), (opening - opening.mean()) / (opening.std() + 1e-8))
    return out


def per_clip_r(predict, clips: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    return float(np.mean([np.corrcoef(predict(x), y)[0, 1] for x, y in clips.values()]))


def audio_ceiling(train: dict, heldout: dict, seed: int = 0) -> dict[str, tuple[float, float]]:
    """(training r, held-out r) of a ridge regression (the best of four penalties on the held-out seconds, an upper
    bound) and of a two-layer MLP, audio window → mouth opening."""
    x = np.concatenate([v[0] for v in train.values()])
    y = np.concatenate([v[1] for v in train.values()])
    mean, std = x.mean(0), x.std(0) + 1e-3
    scores = {}
    best = None
    xs = (x - mean) / std
    for penalty in (1e1, 1e2, 1e3, 1e4):
        w = np.linalg.solve(xs.T @ xs + penalty * np.eye(xs.shape[1]), xs.T @ y)
        fit = tuple(per_clip_r(lambda a, w=w: ((a - mean) / std) @ w, clips) for clips in (train, heldout))
        if best is None or fit[1] > best[1]:
            best = fit
    scores["ridge"] = best
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], 128), torch.nn.SiLU(),
                              torch.nn.Dropout(0.3), torch.nn.Linear(128, 64), torch.nn.SiLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.05)
    xt, yt = torch.tensor((x - mean) / std).float(), torch.tensor(y).float()
    for _ in range(30):
        net.train()
        for batch in torch.randperm(len(xt)).split(64):
            loss = ((net(xt[batch]).squeeze(1) - yt[batch]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        predict = lambda a: net(torch.tensor((a - mean) / std).float()).squeeze(1).numpy()  # noqa: E731
        scores["mlp"] = (per_clip_r(predict, train), per_clip_r(predict, heldout))
    return scores


@torch.no_grad()
def audio_use(denoiser: Path, store: Path, frames: int, seed: int = 0) -> dict[int, dict[str, float]]:
    """Mouth-box x_0 error per noise level with the frame's own audio, another frame's, and the null audio."""
    config = OmegaConf.load(denoiser / "config.yaml")
    unet = DenoisingUNet.from_pretrained(denoiser / "unet").eval()
    reference_net = ReferenceNet.from_pretrained(denoiser / "reference_net").eval()
    diffusion = GaussianDiffusion.from_config(config.diffusion)
    dataset = FrameDataset(store, window=config.data.window, resolution=config.data.resolution, seed=seed,
                           identity_source=config.data.identity_source,
                           expression_smoothing=config.data.get("expression_smoothing", 0))
    generator = torch.Generator().manual_seed(seed)
    items = [dataset[int(i)] for i in torch.randperm(len(dataset), generator=generator)[:frames]]
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0] if torch.is_tensor(items[0][key])}
    b = len(items)
    other = torch.roll(torch.arange(b), b // 3)
    level = config.train.motion_noise_sampling if config.train.motion_noise_max else None
    levels = None if level is None else torch.full((b,), level)
    motion = motion_frames(diffusion, batch["motion"], batch["identity"], None, levels,
                           None if levels is None else torch.randn(batch["motion"].shape, generator=generator))
    features = reference_net(batch["identity"])
    rows = {}
    for t0 in LEVELS:
        t = torch.full((b,), t0)
        x_t = diffusion.q_sample(batch["target"], t, torch.randn(batch["target"].shape, generator=generator))
        rows[t0] = {}
        for name, audio, keep in (("own audio", batch["audio"], None), ("another frame's", batch["audio"][other], None),
                                  ("null audio", batch["audio"], torch.zeros(b, dtype=torch.bool))):
            out = unet(x_t, t, identity=batch["identity"], motion=motion, audio=audio, expression=batch["expression"],
                       reference_features=features, emotion=batch.get("emotion"), intensity=batch.get("intensity"),
                       audio_keep=keep, motion_noise=levels)[:, :3]
            eps = diffusion.eps_from_v(x_t, t, out) if unet.config.prediction_type == "v_prediction" else out
            rows[t0][name] = float(masked_mse(diffusion.predict_x0(x_t, t, eps), batch["target"],
                                              batch["mouth_mask"]).mean())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished `emodiff real-clips` run folder")
    parser.add_argument("--denoiser", type=Path, help="denoiser folder (default RUN/denoiser)")
    parser.add_argument("--frames", type=int, default=96, help="frames per store for the audio-use table")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    denoiser = args.denoiser or args.run / "denoiser"
    window = int(OmegaConf.load(denoiser / "config.yaml").data.window)
    stores = {part: args.run / f"store_{part}" for part in ("train", "heldout")}
    train, heldout = (audio_windows(ClipStore.open(stores[part]), window) for part in ("train", "heldout"))
    lines = ["| audio window → mouth opening | training r | held-out r |", "|---|---|---|"]
    for name, (r_train, r_heldout) in audio_ceiling(train, heldout).items():
        lines.append(f"| {name} | {r_train:.3f} | {r_heldout:.3f} |")
    lines += ["", "| store | t | own audio | another frame's | null audio |", "|---|---|---|---|---|"]
    for part, store in stores.items():
        for t0, row in audio_use(denoiser, store, args.frames).items():
            lines.append(f"| {part} | {t0} | " + " | ".join(f"{row[k]:.4f}" for k in row) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
