"""Image folders, augmentation and loaders: the seed's data pipeline, made fast on today's torchvision.

Images are decoded with torchvision.io and cropped before resizing, batches stay uint8 until they reach
the device (trainer.engine normalises them there). Augmentation draws from a generator seeded by
(seed, epoch, index), so a resumed run sees exactly the images the uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import random
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from trainer.layout import DataError, ImageFolder
from trainer.prepare import DECODE_ERRORS, pixel_limit_lifted

log = logging.getLogger(__name__)

VAL_RESIZE_RATIO = 1.14  # the seed's Resize(int(sz * 1.14)) before the centre crop
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


def decode(path: str) -> torch.Tensor:
    """Decode to a uint8 CHW RGB tensor (JPEG, also grayscale/CMYK, and PNGs named .JPEG)."""
    return decode_bytes(read_bytes(path))


def read_bytes(path: str) -> torch.Tensor:
    """The file as a uint8 tensor. Not torchvision's read_file, which refuses a name that is not UTF-8 (a
    Latin-1 "café.JPEG" from an old archive): Python reads any name the filesystem has."""
    with open(path, "rb") as file:
        data = bytearray(file.read())
    return torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def decode_bytes(payload: torch.Tensor) -> torch.Tensor:
    """An encoded image as a uint8 CHW RGB tensor: a 16-bit PNG (decoded as uint16) scaled to 8 bits, as the
    network's normalisation and the batches it shares with 8-bit images need; an animated GIF (decoded as its
    frames, NCHW) as its first frame, as Pillow shows it; an animated WebP, which torchvision refuses, as the
    first frame Pillow reads."""
    try:
        image = decode_image(payload, mode=ImageReadMode.RGB)
    except RuntimeError:
        if bytes(payload[:4]) != b"RIFF" or bytes(payload[8:12]) != b"WEBP":
            raise
        image = _first_frame_by_pillow(payload)
    return F.to_dtype(image[0] if image.ndim == 4 else image, torch.uint8, scale=True)


def _first_frame_by_pillow(payload: torch.Tensor) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(payload.numpy().tobytes())) as image:
            return F.pil_to_tensor(image.convert("RGB"))
    except DECODE_ERRORS as exc:
        raise RuntimeError(f"neither torchvision nor Pillow can decode this WebP: {exc}") from exc


def random_resized_crop_box(rng: random.Random, height: int, width: int,
                            min_scale: float) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w), drawn from `rng` instead of the global RNG."""
    area = height * width
    log_ratio = (math.log(ASPECT_RATIO_RANGE[0]), math.log(ASPECT_RATIO_RANGE[1]))
    for _ in range(10):
        target_area = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * ratio))
        h = round(math.sqrt(target_area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ASPECT_RATIO_RANGE[0]:
        w, h = width, round(width / ASPECT_RATIO_RANGE[0])
    elif in_ratio > ASPECT_RATIO_RANGE[1]:
        h, w = height, round(height * ASPECT_RATIO_RANGE[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TrainImages(Dataset):
    """RandomResizedCrop(sz, scale=(min_scale, 1)) + horizontal flip, as uint8; indexed by (index, epoch)."""

    def __init__(self, folder: ImageFolder, size: int, min_scale: float, seed: int):
        self.folder, self.size, self.min_scale, self.seed = folder, size, min_scale, seed

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key
        image, label = decode_or_substitute(self.folder, index)
        top, left, h, w, flip = self.augmentation(index, epoch, image.shape[1], image.shape[2])
        image = F.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        return (image.flip(-1) if flip else image), label

    def augmentation(self, index: int, epoch: int, height: int, width: int) -> tuple[int, int, int, int, bool]:
        """The crop box (top, left, h, w) and the flip of image `index` in `epoch`: the same wherever it is decoded."""
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        box = random_resized_crop_box(rng, height, width, self.min_scale)
        return (*box, rng.random() < 0.5)


def decode_or_substitute(folder: ImageFolder, index: int) -> tuple[torch.Tensor, int]:
    """Corrupt images are skipped with a warning naming the file; the next readable image stands in."""
    for offset in range(len(folder.samples)):
        path, label = folder.samples[(index + offset) % len(folder.samples)]
        try:
            return decode(path), label
        except (RuntimeError, OSError) as exc:  # undecodable; unreadable (vanished, no permission)
            log.warning("skipping corrupt image %s (%s)", path, str(exc).splitlines()[0])
    raise DataError(f"no image in {folder.root} can be decoded")


class ValImages(Dataset):
    """Resize the short side to int(sz * 1.14), then centre-crop to each image's (h, w) crop size."""

    def __init__(self, folder: ImageFolder, size: int, crop_sizes: list[tuple[int, int]]):
        self.folder, self.resize_to, self.crop_sizes = folder, int(size * VAL_RESIZE_RATIO), crop_sizes

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = decode_or_substitute(self.folder, index)
        top, left, src_h, src_w, crop_h, crop_w = self.crop(index, image.shape[1], image.shape[2])
        return F.resized_crop(image, top, left, src_h, src_w, [crop_h, crop_w], antialias=True), label

    def crop(self, index: int, height: int, width: int) -> tuple[int, int, int, int, int, int]:
        """The source region (top, left, h, w) and the output size (h, w) of image `index`. Cropping the
        source first, then resizing only that region, gives the same pixels for less work."""
        crop_h, crop_w = self.crop_sizes[index]
        scale = self.resize_to / min(height, width)
        src_h, src_w = min(height, round(crop_h / scale)), min(width, round(crop_w / scale))
        return (height - src_h) // 2, (width - src_w) // 2, src_h, src_w, crop_h, crop_w


def aspect_ratios(folder: ImageFolder, cache_dir: Path) -> list[float]:
    """Width/height of every image, read from headers only, cached per folder (the seed's sorted_idxar.p)."""
    key = hashlib.sha256(f"{folder.root.resolve()}:{len(folder.samples)}".encode()).hexdigest()[:16]
    cache = cache_dir / f"aspect-{key}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["files"] == len(folder.samples):
            return cached["ratios"]
    ratios = []
    for path, _ in folder.samples:
        try:
            with pixel_limit_lifted(), Image.open(path) as image:  # a header read: a 200-megapixel photo's too
                ratios.append(round(image.size[0] / image.size[1], 5))
        except DECODE_ERRORS:
            ratios.append(1.0)  # corrupt: decode_or_substitute warns
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"root": str(folder.root), "files": len(ratios), "ratios": ratios}))
    os.replace(tmp, cache)
    return ratios


def rect_val_batches(ratios: list[float], batch_size: int, size: int
                     ) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Sort by aspect ratio, batch, and give each batch the crop (sz, sz*mean_ar//8*8) or its transpose."""
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    crop_sizes: list[tuple[int, int]] = [(size, size)] * len(ratios)
    for batch in batches:
        mean = round(sum(ratios[i] for i in batch) / len(batch), 5)
        if mean < 1:
            crop = (int(size / mean) // 8 * 8, size)
        else:
            crop = (size, int(size * mean) // 8 * 8)
        for i in batch:
            crop_sizes[i] = crop
    return batches, crop_sizes
