"""The student-vs-teacher table of `emodiff train distill` in the synthetic world (issue: fast sampling).

Given a finished synthetic run (`emodiff synthetic-run --out RUN`), distils RUN/pipeline into RUN/distill (unless it
is there), then scores the teacher with `--teacher-steps` DDIM steps and guidance and the student at each of
`--student-steps` on the same held-out sweep and drift videos as the synthetic report (`synthetic_run.evaluate`,
each in OUT/teacher_N or OUT/student_N with its samples cached), and writes OUT/report.md: ρ per emotion, EmoAcc@1, mouth r,
PSNR/SSIM, drift and UNet forwards per frame (`benchmarks/bench_sample.py` and `emodiff demo` give the times).

    python scripts/distill_synthetic.py --run runs/synthetic_quick --out docs/distill_report [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from emodiff.data.labels import EMOTIONS  # noqa: E402
from emodiff.experiments.synthetic_run import evaluate  # noqa: E402
from emodiff.train import distill  # noqa: E402
from emodiff.train.common import CONFIG_DIR, load_config  # noqa: E402

# (report column, metrics path) of the quality numbers the student must keep within 5 % of the teacher's
QUALITY = [("ρ mean", ("generated", "spearman_mean")), ("EmoAcc@1", ("generated", "emotion_accuracy")),
           ("mouth r", ("generated", "mouth_pearson")), ("PSNR (dB)", ("identity", "psnr")),
           ("SSIM", ("identity", "ssim"))]


def lookup(metrics: dict, path: tuple[str, ...]) -> float:
    for key in path:
        metrics = metrics[key]
    return float(metrics)


def score(run: Path, pipeline: Path, folder: Path, steps: int, overrides: list[str]) -> dict:
    """`synthetic_run.evaluate` of `pipeline` with `steps` steps in `folder` (linked to the run's readout)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("pipeline", pipeline), ("readout", run / "readout")):
        link = folder / name
        if not link.exists():
            link.symlink_to(target.resolve())
    config = OmegaConf.merge(OmegaConf.load(run / "synthetic_run.yaml"),
                             OmegaConf.from_dotlist([f"evaluation.steps={steps}", *overrides]))
    return evaluate(config, folder)


def label(name: str) -> str:
    """"student_1" → "student, 1 step"."""
    kind, steps = name.split("_")
    return f"{kind}, {steps} step{'' if steps == '1' else 's'}"


def k1_strength(metrics: dict) -> float:
    """Mean over emotions of the readout's projection on the emotion direction at k = 1 (how strong k = 1 looks)."""
    per = metrics["generated"]["per_emotion"]
    return sum(e["projection_by_k"][-1] for e in per.values()) / len(per)


def write_report(out: Path, rows: dict[str, dict], validation: dict, command: str) -> None:
    """OUT/report.md from the metrics of each evaluation folder (the first row is the teacher) and the student's
    validation.json."""
    teacher = next(iter(rows))
    ref = rows[teacher]
    lines = ["# Distilled student vs teacher in the synthetic world", "",
             f"Produced by `{command}`. Same held-out sweep as "
             "`docs/synthetic_report/report.md`; the student has the teacher's guidance (audio "
             f"{ref['counts']['cfg_audio']:g}, expression {ref['counts']['cfg_expression']:g}) baked in. "
             "Goal: the 4-step student within 5 % of the teacher on every quality number with ≥ 12× fewer forwards.", "",
             "| sampler | forwards / frame | " + " | ".join(c for c, _ in QUALITY) + " | drift (dB) | k = 1 strength |",
             "|---|---|" + "---|" * len(QUALITY) + "---|---|"]
    for name, m in rows.items():
        cells = [f"{lookup(m, p):.3f}" for _, p in QUALITY]
        lines.append(f"| {label(name)} | {m['counts']['forwards_per_frame']} | " + " | ".join(cells) +
                     f" | {m['drift']['drift_db']:.2f} | {k1_strength(m):.3f} |")
    lines += ["", "k = 1 strength: the readout's projection on each emotion's direction at k = 1, averaged over the "
              "emotions (the true renders: "
              f"{sum(e['projection_by_k'][-1] for e in ref['truth']['per_emotion'].values()) / len(ref['truth']['per_emotion']):.3f}).",
              "", "Relative to the teacher (student ÷ teacher − 1; PSNR as the dB difference):", "",
              "| sampler | " + " | ".join(c for c, _ in QUALITY) + " | forward reduction |", "|---|" + "---|" * (len(QUALITY) + 1)]
    for name, m in rows.items():
        if name == teacher:
            continue
        cells = []
        for column, path in QUALITY:
            a, b = lookup(m, path), lookup(ref, path)
            cells.append(f"{a - b:+.2f} dB" if "PSNR" in column else f"{(a / b - 1) * 100:+.1f} %")
        lines.append(f"| {label(name)} | " + " | ".join(cells) +
                     f" | ×{ref['counts']['forwards_per_frame'] / m['counts']['forwards_per_frame']:.1f} |")
    lines += ["", "Spearman ρ(k, readout · d) per emotion:", "", "| sampler | " + " | ".join(
        e for e in EMOTIONS if e in ref["generated"]["per_emotion"]) + " |",
              "|---|" + "---|" * len(ref["generated"]["per_emotion"])]
    for name, m in rows.items():
        per = m["generated"]["per_emotion"]
        lines.append(f"| {label(name)} | " + " | ".join(f"{per[e]['spearman']:.3f}" for e in EMOTIONS if e in per) + " |")
    if validation:
        steps = sorted(validation["student_psnr"], key=int)
        lines += ["", f"How closely each reproduces the teacher's {validation['teacher_steps']}-step guided frames on the "
                  f"student's {validation['held_out_couplings']} held-out couplings (PSNR in dB, `validation.json`):", "",
                  "| steps | " + " | ".join(steps) + " |", "|---|" + "---|" * len(steps),
                  "| student | " + " | ".join(f"{validation['student_psnr'][k]:.2f}" for k in steps) + " |",
                  "| teacher | " + " | ".join(f"{validation['teacher_psnr'][k]:.2f}" for k in steps) + " |"]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished `emodiff synthetic-run` folder")
    parser.add_argument("--out", type=Path, required=True, help="report folder (evaluations cached in it)")
    parser.add_argument("--student", type=Path, help="distill run folder (default RUN/distill; trained there if absent)")
    parser.add_argument("--teacher-steps", type=int, default=25)
    parser.add_argument("--student-steps", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--distill-set", nargs="*", default=[], metavar="KEY=VALUE", help="distill config overrides")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="evaluation overrides")
    args = parser.parse_args()
    rows = {f"teacher_{args.teacher_steps}": score(args.run, args.run / "pipeline", args.out / f"teacher_{args.teacher_steps}",
                                                    args.teacher_steps, args.set)}
    student_dir = args.student or args.run / "distill"
    if args.student_steps and not (student_dir / "pipeline" / "model_index.json").is_file():
        config = load_config(CONFIG_DIR / "distill.yaml", args.distill_set)
        config.teacher, config.data.store, config.output_dir = str(args.run / "pipeline"), str(args.run / "store"), str(student_dir)
        distill.train(config, resume="latest")
    for k in args.student_steps:
        rows[f"student_{k}"] = score(args.run, student_dir / "pipeline", args.out / f"student_{k}", k, args.set)
    validation = json.loads((student_dir / "validation.json").read_text()) if args.student_steps else {}
    write_report(args.out, rows, validation, " ".join(["python", *sys.argv]))
    print(f"report written to {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
