"""Candidate profiles: their format and validation, storing them, and the generation job that writes them."""
