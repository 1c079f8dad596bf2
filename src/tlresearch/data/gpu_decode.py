"""Batched JPEG decoding on the compute device, for the evaluation transform.

DataLoader workers only read file bytes; ``torchvision.io.decode_jpeg`` decodes a whole batch
at once on the device (nvJPEG on CUDA, libjpeg-turbo on a CPU), and the resize, centre crop
and normalisation of :func:`~tlresearch.data.transforms.eval_transform` run there too. A
file that is not a JPEG, or that the batched decoder rejects, goes through the data
pipeline's PIL loader instead (same RGB rules, same policy for unreadable files: pass the
split's :class:`~tlresearch.data.images.ImageListDataset` and its policy and count apply).

The result matches the PIL pipeline up to resampling rounding (tensor and PIL antialiased
resizes differ by about one intensity level), which is why feature-cache keys record it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as TF

from tlresearch.data.images import ImageListDataset, Sample, as_image_list
from tlresearch.data.transforms import Preprocessing

log = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedFiles(Dataset):
    """``(file bytes, index)``; an unreadable file gives empty bytes.

    Plain ``bytes`` cross from worker processes through the pipe: a batch of small tensors
    would each need a shared-memory file descriptor, which breaks (and hangs the loader) when
    a batch holds many files.
    """

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        try:
            with open(self.samples[index].path, "rb") as fh:
                return fh.read(), index
        except OSError:
            return b"", index


def _as_lists(batch: list[tuple[bytes, int]]) -> tuple[list[bytes], list[int]]:
    """collate_fn (runs in the workers): the files' bytes and their indices, as lists."""
    return [data for data, _ in batch], [index for _, index in batch]


def is_jpeg(data: torch.Tensor) -> bool:
    """True when the bytes start with the JPEG SOI marker."""
    return data.numel() >= 3 and bytes(data[:3].tolist()) == _JPEG_MAGIC


def decode_batch(data: list[torch.Tensor], indices: list[int], fallback: ImageListDataset, device: torch.device) -> list[torch.Tensor]:
    """uint8 ``[3, H, W]`` images on ``device``: JPEGs decoded in one batched call, the rest
    (and any the batched call rejects) by ``fallback``'s PIL loader."""
    images: list[torch.Tensor | None] = [None] * len(data)
    jpegs = [k for k, d in enumerate(data) if is_jpeg(d)]
    if jpegs:
        try:
            decoded = torchvision.io.decode_jpeg([data[k] for k in jpegs], mode=ImageReadMode.RGB, device=device)
            for k, image in zip(jpegs, decoded):
                images[k] = image
        except RuntimeError as error:  # one bad file fails the batch: decode one by one below
            log.debug("batched JPEG decoding failed (%s); decoding this batch one image at a time", error)
    for k, image in enumerate(images):
        if image is None:
            pil, _ = fallback[indices[k]]
            images[k] = TF.pil_to_tensor(pil).to(device)
    return images  # type: ignore[return-value]


def eval_preprocess(images: list[torch.Tensor], pre: Preprocessing) -> torch.Tensor:
    """Resize the short side, centre-crop, scale to [0, 1] and normalise: ``[N, 3, crop, crop]``."""
    crops = [
        TF.center_crop(TF.resize(image, [pre.resize_size], interpolation=pre.interpolation_mode, antialias=True), [pre.crop_size])
        for image in images
    ]
    batch = torch.stack(crops).float().div_(255.0)
    return TF.normalize(batch, list(pre.mean), list(pre.std))


def device_decoded_batches(
    samples: Sequence[Sample] | ImageListDataset,
    indices: Sequence[int],
    pre: Preprocessing | None,
    device: torch.device | str,
    batch_size: int,
    num_workers: int = 0,
) -> Iterator[torch.Tensor]:
    """Normalised input batches of ``samples[indices]``, decoded and preprocessed on ``device``.

    ``samples``: a list of samples (a file no decoder reads is replaced by another of its
    class), or a split's dataset, whose policy the PIL fallback follows (a test split raises).
    """
    if pre is None:
        raise ValueError("device decoding needs the backbone's preprocessing")
    device = torch.device(device)
    fallback = as_image_list(samples)
    samples = fallback.samples
    loader = DataLoader(Subset(EncodedFiles(samples), list(indices)), batch_size=batch_size, num_workers=num_workers, collate_fn=_as_lists)
    for data, batch_indices in loader:
        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]  # in this process: no shared memory
        yield eval_preprocess(decode_batch(encoded, batch_indices, fallback, device), pre)
