"""Evaluate generated videos against a reference set and compare pipelines with the same metrics.

    emodiff evaluate --reference REF --run ours=DIR --run eat=DIR --out REPORT [weights…]
    emodiff evaluate protocol --source MEAD_ROOT --out PROTOCOL      (write the test inputs)

Folder convention: a run folder holds `<name>.mp4` (frames + audio); videos are matched across runs and the
reference by `<name>`. Optional sidecars next to a video (a run's own sidecar wins over the reference's):
  `<name>.json`           {"emotion": "happy", "intensity": 0.5 or [per-frame k…], "series": "M003_happy_001"}
                          — videos of one series share identity and audio and differ in intensity (FLIE, LIE);
  `<name>.expression.npy` (T, D) expression vectors (docs/design.md §4.2, `deca` or `landmarks` extractor);
  `<name>.landmarks.npy`  (T, 68, 2) iBUG-68 landmarks in the evaluation crop's pixels (else detected).
All videos are resampled to one fps and face-aligned with the crop code of `emodiff prepare` (per-frame
iBUG-68 landmarks, nose-tip boxes smoothed in time; `--aligned`: already crops, only resized); the same
detection gives the landmarks of M-LMD / F-LMD and of the mouth-opening correlation (mouth r). PSNR drift is the
PSNR of a video's last second minus its first (dB). Every metric whose weights and inputs are present is
computed; the others are listed as skipped with the reason. A metric that cannot be computed for one video
(no or silent audio, too short) is n/a for that video with its reason, and a video that cannot be read or
aligned is left out with its reason; the rest of the report is written. Intensity-L2 reads k back with one
measure fitted on the reference videos that carry an emotion and an intensity (`fit_intensity_measure`).
Each run's super-resolution, as `emodiff sample` records it in every mp4, is listed in the settings;
`--super-resolution SR` also scores every run with its videos upscaled by SR, as the run `<name>+sr`.
Outputs: metrics.md, metrics.csv, metrics.json, and PNG plots.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emodiff.errors import EmodiffError
from emodiff.metrics.evaluate import WeightFiles, evaluate_folders
from emodiff.metrics.protocol import DEFAULT_SWEEP, MEAD_TEST_IDENTITIES, write_protocol
from emodiff.metrics.videos import REFERENCE_RUN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", nargs="?", choices=["protocol"],
                        help="`protocol`: write the inputs of a test protocol instead of evaluating.")
    parser.add_argument("--reference", type=Path, help="Folder of ground-truth videos (<name>.mp4 + sidecars).")
    parser.add_argument("--run", dest="runs", action="append", default=[], metavar="NAME=DIR",
                        help="A pipeline's output folder (repeatable).")
    parser.add_argument("--out", type=Path, required=True, help="Report folder (or protocol folder).")
    parser.add_argument("--fps", type=float, default=25.0, help="Frame rate all videos are resampled to.")
    parser.add_argument("--size", type=int, default=128, help="Side of the aligned evaluation crops in pixels.")
    parser.add_argument("--aligned", action="store_true", help="Videos are aligned face crops already: resize only.")
    parser.add_argument("--landmarks", choices=["mediapipe", "fan", "none"], default="mediapipe",
                        help="Landmark backend for alignment and M/F-LMD (`none`: skip detection; needs --aligned).")
    parser.add_argument("--expression", choices=["landmarks", "deca", "none"], default="landmarks",
                        help="Expression vectors for FLIE, Intensity-L2, Beat Align, Diversity (docs/design.md §4.2); "
                             "<name>.expression.npy sidecars win. `deca` needs --deca-model and --flame-model.")
    parser.add_argument("--deca-model", help="DECA's deca_model.tar (for --expression deca).")
    parser.add_argument("--flame-model", help="FLAME's generic_model.pkl (for --expression deca).")
    parser.add_argument("--device", help="Device for the networks (default: cuda when available, else cpu).")
    parser.add_argument("--lpips-trunk", choices=["alex", "vgg"], default="alex")
    parser.add_argument("--lpips-backbone", help="torchvision alexnet/vgg16 state_dict file (.pth/.safetensors).")
    parser.add_argument("--lpips-linear", help="LPIPS linear-layer file (lpips weights/v0.1/<trunk>.pth).")
    parser.add_argument("--inception", help="TorchScript FID Inception file (e.g. inception-2015-12-05.pt).")
    parser.add_argument("--i3d", help="TorchScript FVD I3D file (e.g. i3d_torchscript.pt).")
    parser.add_argument("--syncnet", help="Official syncnet_v2.model file, or a folder of a saved emodiff SyncNet.")
    parser.add_argument("--emotion-classifier", help="The model folder of `emodiff train emotion-classifier` (OUTPUT_DIR/model).")
    parser.add_argument("--super-resolution", metavar="SR",
                        help="also score every run upscaled by SR (a pipeline folder with super_resolution/, a "
                             "super_resolution/ folder or a Real-ESRGAN .pth) as the run NAME+sr; the upscaled "
                             "videos are written to OUT/super_resolved/NAME/")
    parser.add_argument("--face-embedder", help="TorchScript face-embedding network (images in [-1, 1]) for CSIM.")
    group = parser.add_argument_group("protocol mode")
    group.add_argument("--source", type=Path, help="MEAD root or folder of MEAD-named videos.")
    group.add_argument("--identities", default=",".join(MEAD_TEST_IDENTITIES), help="Comma-separated test identities.")
    group.add_argument("--level", type=int, default=3, help="MEAD intensity level of the test videos.")
    group.add_argument("--sweep", default=DEFAULT_SWEEP, help="Intensities k of the sweep items (FLIE/LIE).")


def parse_runs(specs: list[str]) -> dict[str, Path]:
    runs: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise EmodiffError(f"--run expects NAME=DIR, got '{spec}'.")
        if name == REFERENCE_RUN or name in runs:
            raise EmodiffError(f"Run name '{name}' is used twice or clashes with '{REFERENCE_RUN}'.")
        runs[name] = Path(folder)
    return runs


def run(args: argparse.Namespace) -> int:
    if args.mode == "protocol":
        n = write_protocol(args.source, args.out, args.identities.split(","), args.level, args.sweep,
                           args.fps)
        print(f"Wrote {n} protocol items to {args.out}")
        return 0
    if args.reference is None or not args.runs:
        raise EmodiffError("evaluate needs --reference DIR and at least one --run NAME=DIR.")
    files = WeightFiles(args.lpips_trunk, args.lpips_backbone, args.lpips_linear, args.inception, args.i3d,
                        args.syncnet, args.emotion_classifier, args.face_embedder)
    evaluate_folders(args.reference, parse_runs(args.runs), args.out, files, args.fps, args.size, args.aligned,
                     args.landmarks, args.expression, args.deca_model, args.flame_model, args.device,
                     args.super_resolution)
    return 0
