"""JPEGs decoded and cropped on the GPU, a batch at a time: the data path that keeps up with a fast GPU.

Loader workers read each file and parse only its header (for the image's size), then draw the crop and flip the CPU
path (trainer.data) draws for the same (seed, epoch, index), so a run decoded either way, or resumed, sees the same
crops. The training process decodes the whole batch with the GPU's decoder (below), then crops and resizes it there
(resized_crops). Images the GPU's decoder is not handed (anything but a baseline colour JPEG: PNGs named .JPEG,
grayscale, CMYK, progressive, or an unreadable header) are decoded and cropped in the worker, as the CPU path does,
and join the batch already cropped. On a CPU device the same code decodes with libjpeg-turbo, which is how the tests
run this path without a GPU.

Two GPU decoders: torchvision's nvJPEG call, which returns only once the GPU has decoded (and, measured on an H200,
once the work queued before it was done too), and nvImageCodec (bench/nvimgcodec-wheels.txt), whose decode returns
once it has queued the GPU's work, ordered on the caller's stream by events, into images allocated stream-ordered,
as its source reads (bench/decode_blocks.py is to confirm it on a GPU). nvImageCodec is used where it is installed."""

from __future__ import annotations

import functools
import io
import logging
import threading
from typing import NamedTuple

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from trainer.data import TrainImages, ValImages, decode_bytes, read_bytes
from trainer.prepare import DECODE_ERRORS

log = logging.getLogger(__name__)

CROPPED = (-1,) * 7  # the plan of a sample the worker has decoded and cropped itself


class EncodedBatch(NamedTuple):
    """What the loader hands the training process: the files' bytes end to end in one tensor (one shared-memory
    block per batch, not one per image), each image's length there (0: cropped in the worker, in `cropped`) and
    plan (top, left, h, w, out_h, out_w, flip)."""
    encoded: torch.Tensor
    lengths: torch.Tensor
    cropped: list[torch.Tensor]
    labels: torch.Tensor
    plans: torch.Tensor
    paths: list[str]

    def payloads(self) -> list[torch.Tensor]:
        """Per image, its file's bytes (1-D) or its cropped pixels (3-D), in batch order."""
        cropped, start, out = iter(self.cropped), 0, []
        for length in self.lengths.tolist():
            out.append(self.encoded[start:start + length] if length else next(cropped))
            start += length
        return out


def baseline_jpeg_size(payload: torch.Tensor) -> tuple[int, int] | None:
    """(height, width) of a baseline colour JPEG, from its header; None for anything nvJPEG is not given."""
    try:
        with Image.open(io.BytesIO(payload.numpy().tobytes())) as image:
            progressive = image.info.get("progressive") or image.info.get("progression")
            if image.format != "JPEG" or image.mode != "RGB" or progressive:
                return None
            return image.size[1], image.size[0]
    except DECODE_ERRORS:  # past Pillow's pixel limit too: the worker path decodes what it can
        return None


class EncodedTrainImages(TrainImages):
    """TrainImages whose decoding and crop are left to the GPU."""

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, tuple[int, ...], str]:
        index, epoch = key
        path, label = self.folder.samples[index]
        jpeg = _for_the_device(path)
        if jpeg is None:
            return *super().__getitem__(key), CROPPED, path
        top, left, h, w, flip = self.augmentation(index, epoch, *jpeg[1])
        return jpeg[0], label, (top, left, h, w, self.size, self.size, int(flip)), path


class EncodedValImages(ValImages):
    """ValImages whose decoding, resize and centre crop are left to the GPU."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, tuple[int, ...], str]:
        path, label = self.folder.samples[index]
        jpeg = _for_the_device(path)
        if jpeg is None:
            return *super().__getitem__(index), CROPPED, path
        return jpeg[0], label, (*self.crop(index, *jpeg[1]), 0), path


def _for_the_device(path: str) -> tuple[torch.Tensor, tuple[int, int]] | None:
    """The file's bytes and (height, width) when nvJPEG is to decode it; None: the worker decodes it (the CPU
    path, which also names and substitutes an unreadable file)."""
    try:
        payload = read_bytes(path)
    except OSError:
        return None
    size = baseline_jpeg_size(payload)
    return (payload, size) if size else None


def collate(samples: list[tuple[torch.Tensor, int, tuple[int, ...], str]]) -> EncodedBatch:
    payloads, labels, plans, paths = zip(*samples)
    encoded = [p for p in payloads if p.dim() == 1]
    return EncodedBatch(torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8),
                        torch.tensor([len(p) if p.dim() == 1 else 0 for p in payloads]),
                        [p for p in payloads if p.dim() == 3], torch.tensor(labels), torch.tensor(plans), list(paths))


def decode_batch(batch: EncodedBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch as uint8 NCHW images on `device`, and its labels there (a substitute's label where an image
    could not be decoded)."""
    plans, payloads = batch.plans.tolist(), batch.payloads()
    encoded = [i for i, payload in enumerate(payloads) if payload.dim() == 1]
    size = _output_size(payloads, plans, encoded)
    images = dict(zip(encoded, decode_jpegs([payloads[i] for i in encoded], device)))
    images.update((i, payload.to(device)) for i, payload in enumerate(payloads) if payload.dim() == 3)
    failed = [i for i, image in images.items() if image is None]
    kept = [i for i in range(len(plans)) if i not in failed]
    if not kept:
        raise RuntimeError(f"no image of a batch could be decoded (first: {batch.paths[0]})")
    labels = batch.labels.clone()
    for i in failed:  # the CPU path stands the next readable image in; here, one of the batch's own
        log.warning("skipping corrupt image %s (neither nvJPEG nor libjpeg could decode it)", batch.paths[i])
        images[i], plans[i], labels[i] = images[kept[0]], plans[kept[0]], labels[kept[0]]
    ordered = [images[i] for i in range(len(plans))]
    return resized_crops(ordered, plans, size), labels.to(device, non_blocking=True)


def resized_crops(images: list[torch.Tensor], plans: list[list[int]], size: tuple[int, int]) -> torch.Tensor:
    """Each uint8 CHW image's crop (plan: top, left, h, w, _, _, flip; CROPPED: the image as it is) resized to
    `size` and flipped where its plan says, as one uint8 NCHW batch on the images' device. One roi_align launch
    per image and a few for the batch (torchvision's resized_crop took about seven per image, and launching them
    bounded the GPU path): each output pixel averages ceil(crop/size) x ceil(crop/size) bilinear samples over
    its area when shrinking and is one bilinear sample when enlarging, pixel centres placed as resize places
    them, so the crops match the loader workers' within resampling, and an image already of `size` is kept
    exactly."""
    device = images[0].device
    rows = [[0.0, 0.0, 0.0, image.shape[2], image.shape[1], 0.0] if plan[0] < 0 else
            [0.0, left, top, left + w, top + h, float(flip)]
            for image, plan in zip(images, plans) for top, left, h, w, _, _, flip in [plan]]
    boxes_and_flips = torch.tensor(rows)
    if device.type == "cuda":  # a copy from pageable memory would wait for the stream
        boxes_and_flips = boxes_and_flips.pin_memory()
    boxes_and_flips = boxes_and_flips.to(device, non_blocking=True)
    boxes, flips = boxes_and_flips[:, :5].contiguous(), boxes_and_flips[:, 5].bool().view(-1, 1, 1, 1)
    flat = torch.cat([image.reshape(-1) for image in images]).float()
    crops, start = [], 0
    for k, image in enumerate(images):
        pixels = flat[start:start + image.numel()].view(1, *image.shape)
        start += image.numel()
        crops.append(roi_align(pixels, boxes[k:k + 1], list(size), sampling_ratio=-1, aligned=True))
    out = torch.cat(crops).round_().clamp_(0, 255).to(torch.uint8)
    return torch.where(flips, out.flip(-1), out)


def _output_size(payloads: list[torch.Tensor], plans: list[list[int]], encoded: list[int]) -> tuple[int, int]:
    if encoded:
        return plans[encoded[0]][4], plans[encoded[0]][5]
    return tuple(payloads[0].shape[1:])


def decoder_for(device: torch.device) -> str:
    """The decoder of `--decode device` there: nvImageCodec on a GPU where it is installed, else torchvision's
    nvJPEG call; libjpeg (torchvision's libjpeg-turbo) on a CPU."""
    if device.type != "cuda":
        return "libjpeg"
    return "nvImageCodec" if _nvimgcodec(_index(device)) else "nvJPEG"


def decode_jpegs(payloads: list[torch.Tensor], device: torch.device,
                 decoder: str | None = None) -> list[torch.Tensor | None]:
    """JPEGs' bytes as uint8 CHW images on `device`, decoded in one batch by `decoder` (decoder_for's by default);
    an image the batch left undecoded is tried alone, with libjpeg last; None: nothing could decode it."""
    if not payloads:
        return []
    decoder = decoder or decoder_for(device)
    try:
        if decoder == "nvImageCodec":
            images = _decode_with_nvimgcodec(payloads, device)
        else:
            images = decode_jpeg(payloads, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        images = [None] * len(payloads)
    return [image if image is not None else _decode_one(payload, device) for image, payload in zip(images, payloads)]


_NVIMGCODEC_CALLS = threading.Lock()  # one decode at a time per process: the decoder's state is not shared safely


@functools.cache
def _nvimgcodec(device_index: int):
    """(a decoder for that GPU, its decode parameters), or None where nvImageCodec is not installed or cannot
    start. Planar RGB (CHW, as the crops read it); EXIF orientation not applied, as the workers' decode does not: the
    crops were drawn on the stored size."""
    try:
        from nvidia import nvimgcodec
    except ImportError:
        return None
    try:
        params = nvimgcodec.DecodeParams(apply_exif_orientation=False, sample_format=nvimgcodec.SampleFormat.P_RGB)
        return nvimgcodec.Decoder(device_id=device_index), params
    except RuntimeError as error:
        log.warning("nvImageCodec is installed but could not start (%s): decoding with torchvision's nvJPEG", error)
        return None


def _decode_with_nvimgcodec(payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Queued on the current stream."""
    decoder, params = _nvimgcodec(_index(device))
    stream = torch.cuda.current_stream(device)
    with _NVIMGCODEC_CALLS:
        images = decoder.decode([payload.numpy() for payload in payloads], params=params,
                                cuda_stream=stream.cuda_stream)
    # the DLPack capsule keeps an image's memory alive while its tensor lives
    return [None if image is None else torch.from_dlpack(image) for image in images]


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _decode_one(payload: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(payload, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    try:
        return decode_bytes(payload).to(device)
    except RuntimeError:
        return None
