"""Emotion control: intensity interpolation (eq. 14–15), intensity schedules, emotion timelines."""
