"""tlresearch: transfer-learning research for computer vision on Lightning and Hydra."""

__version__ = "0.1.0"
