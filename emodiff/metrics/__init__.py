"""Metrics of talking-head videos, one module per family, and the `emodiff evaluate` harness.

linearity (FLIE eq. 20, LIE) · lpips · emotion (EmoAcc classifier) · quality (PSNR, SSIM, CPBD, CSIM) ·
frechet (FID, FVD) · sync (SyncNet LSE-C / LSE-D) · landmarks (M-LMD / F-LMD) · framewise (Beat Align,
Diversity, Intensity-L2) · protocol · the `emodiff evaluate` harness: videos (find, read, align) → table
(one function per metric) → report (metrics.md / .csv / .json, plots), run by evaluate.
"""
