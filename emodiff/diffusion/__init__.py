"""Diffusion maths: schedules, q_sample, posterior, hybrid loss, diffusers scheduler mapping (eq. 1–10, 16)."""
