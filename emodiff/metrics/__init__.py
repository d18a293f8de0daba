"""Metrics: FLIE, LIE, EmoAcc, image/video quality, sync, landmarks, frame-wise intensity."""
