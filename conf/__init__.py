"""Hydra configs, installed as the package ``tlresearch.conf`` (see setup.py)."""
