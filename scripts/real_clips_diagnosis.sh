#!/usr/bin/env bash
# Why the tiny recipe gave back a noisy ghost on real clips, and what made it a face that stays put: short
# `emodiff real-clips` runs at 32 px on one split, each changing one thing of configs/real_clips.yaml, scored on the
# held-out seconds (docs/real_clips/diagnosis.md). Usage: scripts/real_clips_diagnosis.sh CLIPS_FOLDER OUT [STEPS]
# (about 12 min per variant on one core at the default 600 steps).
set -euo pipefail
clips=$1 out=$2 steps=${3:-600}
mkdir -p "$out"
before="denoiser.train.motion_drop=0.5 denoiser.unet.motion_mouth_box=null"  # the motion frames of the tiny recipe
variants=(
    "epsilon_smooth0|denoiser.diffusion.prediction_type=epsilon denoiser.data.expression_smoothing=0 $before"
    "epsilon_smooth25|denoiser.diffusion.prediction_type=epsilon $before"
    "v_prediction_smooth0|denoiser.data.expression_smoothing=0 $before"
    "v_prediction_smooth25|$before"
    "v_smooth25_nodrop|denoiser.unet.motion_mouth_box=null"
    "v_smooth25_nodrop_box|"
)
first=""
for variant in "${variants[@]}"; do
    name=${variant%%|*} overrides=${variant#*|}
    run="$out/$name"
    if [ -n "$first" ] && [ ! -d "$run/store_train" ]; then  # one split and prepare serves every variant
        mkdir -p "$run" && cp -r "$first/split" "$first/store_train" "$first/store_heldout" "$run/"
    fi
    # shellcheck disable=SC2086  # the overrides are separate words
    emodiff real-clips "$clips" --out "$run" --set denoiser.data.resolution=32 denoiser.train.max_steps="$steps" \
        $overrides > "$run.log" 2>&1
    first=${first:-$run}
done
python - "$out" "${variants[@]}" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| variant | changes to configs/real_clips.yaml | PSNR | SSIM | M-LMD | mouth r | drift (dB) |")
print("|---|---|---|---|---|---|---|")
for variant in sys.argv[2:]:
    name, overrides = variant.split("|", 1)
    metrics = out / name / "report" / "metrics.json"
    if not metrics.is_file():
        continue
    m = json.loads(metrics.read_text())["metrics"]["model"]
    cells = [f"{m[k]:.3f}" if k in m else "–" for k in ("psnr", "ssim", "m_lmd", "mouth_r", "psnr_drift")]
    print(f"| {name} | {overrides.replace('denoiser.', '') or 'none'} | " + " | ".join(cells) + " |")
PY
