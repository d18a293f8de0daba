"""Data: media I/O, face alignment, features, the clip store and datasets over it."""
