"""Third-party formats implemented from their papers and file layouts (no code copied)."""
