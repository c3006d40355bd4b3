"""Where a batch's time goes on the GPU data path (`--decode device`): the batched decode (torchvision's nvJPEG call,
and nvImageCodec where it is installed), then the crops,
torchvision's resized_crop image by image (how trainer.gpu_decode cropped until 2026-12-04) against
trainer.gpu_decode.resized_crops (roi_align, one launch per image), and the whole decode_batch. Each figure is
given twice: the host's time to issue the work (what the training process spends while the GPU still runs the
step before) and the time until the GPU has done it. Prints a table; nothing is written.

    python bench/decode_split.py DATA [--batch 256] [--size 224] [--rounds 5]   # DATA/train/<class>/*.JPEG

On a CPU (no CUDA) libjpeg-turbo stands in for nvJPEG, as in the tests: a smoke run, not a figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from trainer import gpu_decode, layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folder = layout.scan(args.data / "train")
    encoded_images = gpu_decode.EncodedTrainImages(folder, args.size, 0.35, seed=0)
    batches = [gpu_decode.collate([encoded_images[(index, epoch)] for index in range(args.batch)])
               for epoch in range(args.rounds + 1)]  # the first is warm-up
    print(f"device {device}, {args.batch} images of {folder.root} per batch, {args.size} px, "
          f"median of {args.rounds} batches after one")
    print(f"{'work':44} {'host ms':>8} {'done ms':>8} {'img/s (done)':>13}")
    decoded = {}

    def decode(decoder):
        def work(batch):
            payloads = batch.payloads()
            decoded[id(batch)] = gpu_decode.decode_jpegs([p for p in payloads if p.dim() == 1], device, decoder)
        return work

    def plans(batch):
        return [plan for plan, payload in zip(batch.plans.tolist(), batch.payloads()) if payload.dim() == 1]

    def crop_each(batch):
        out = torch.empty((len(decoded[id(batch)]), 3, args.size, args.size), dtype=torch.uint8, device=device)
        for i, (image, (top, left, h, w, _, _, flip)) in enumerate(zip(decoded[id(batch)], plans(batch))):
            crop = F.resized_crop(image, top, left, h, w, [args.size, args.size], antialias=True)
            out[i] = crop.flip(-1) if flip else crop

    def crop_batched(batch):
        gpu_decode.resized_crops(decoded[id(batch)], plans(batch), (args.size, args.size))

    chosen = gpu_decode.decoder_for(device)
    decoders = ["nvImageCodec", "nvJPEG"] if chosen == "nvImageCodec" else [chosen]  # the crops crop the last's
    works = {f"{decoder} batched decode": decode(decoder) for decoder in decoders}
    works.update({"crops: resized_crop per image (before)": crop_each,
                  "crops: resized_crops, roi_align (now)": crop_batched,
                  f"decode_batch: {chosen} decode + crops": lambda batch: gpu_decode.decode_batch(batch, device)})
    for name, work in works.items():
        issued, done = [], []
        for batch in batches:
            _sync(device)
            start = time.perf_counter()
            work(batch)
            issued.append(time.perf_counter() - start)
            _sync(device)
            done.append(time.perf_counter() - start)
        host, total = statistics.median(issued[1:]) * 1e3, statistics.median(done[1:]) * 1e3
        print(f"{name:44} {host:8.1f} {total:8.1f} {args.batch / total * 1e3:13,.0f}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
