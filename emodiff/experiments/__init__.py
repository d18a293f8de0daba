"""Experiments composed of the library's stages: each one a command that prepares, trains, samples and reports."""
