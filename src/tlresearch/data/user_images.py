"""Images a user names on the command line (``images=[…]``): expansion and decoding with clear errors.

Shared by ``tlresearch.predict`` and ``tlresearch.visualize``; decoding goes through the data
layer's :func:`~tlresearch.data.images.load_rgb` (every mode to RGB, decompression bombs refused).
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from tlresearch.core.errors import ConfigError
from tlresearch.data.images import IMAGE_EXTENSIONS, load_rgb


def expand_image_paths(patterns: Sequence[str] | str | None, key: str = "images") -> list[Path]:
    """Files named by ``patterns``: paths, globs (``**`` recursive) or folders (their images).

    Raises a ConfigError naming ``key`` for a pattern that matches nothing, or for no pattern at all.
    """
    if isinstance(patterns, str):
        patterns = [patterns] if patterns else []
    paths: list[Path] = []
    for pattern in patterns or []:
        matches = _expand_one(str(pattern))
        if not matches:
            raise ConfigError(
                f"{key}: {str(pattern)!r} matches no image file; give existing image paths, a glob such as "
                "'photos/*.jpg' or a folder of images."
            )
        paths.extend(m for m in matches if m not in paths)
    if not paths:
        raise ConfigError(f"{key}=[] names no image; pass files, folders or globs, e.g. {key}=[cat.jpg].")
    return paths


def _expand_one(pattern: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if path.is_file():
        return [path]
    if glob.has_magic(pattern):
        return sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    return []


def open_user_image(path: Path, key: str = "images") -> Image.Image:
    """Decode ``path`` as RGB; a ConfigError naming the file when it cannot be decoded."""
    try:
        return load_rgb(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ConfigError(
            f"{key}: {str(path)!r} could not be decoded as an image ({type(exc).__name__}: {exc}); "
            f"use image files ({', '.join(sorted(IMAGE_EXTENSIONS))})."
        ) from None
