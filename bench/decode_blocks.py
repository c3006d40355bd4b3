"""Does a GPU decoder wait for the GPU work queued before it, and for which? About 0.9 s of matrix products are
queued, then a batch is decoded on a side stream, by torchvision's nvJPEG call and, where it is installed, by
nvImageCodec. A decode that returns only once the products are done cannot overlap the training step. The products
go first on PyTorch's default stream (CUDA's legacy default stream, which every blocking stream waits for), then on
a stream made by torch (non-blocking: it neither waits for the legacy stream nor is waited for by it). If only the
first decode waits, the wait comes through the legacy stream, and a training loop on a stream of its own
(trainer.engine.training_stream) lets the decode overlap the step; if both wait, the decoder synchronises the
whole device, whatever stream the step is on.

    python bench/decode_blocks.py DATA [--batch 256]   # DATA/train/<class>/*.JPEG; needs a CUDA GPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchvision.io import read_file

from trainer import gpu_decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("decode_blocks: skipped, it needs a CUDA GPU")
        return
    device = torch.device("cuda")
    files = [read_file(str(path)) for path in sorted((args.data / "train").glob("*/*.JPEG"))[:args.batch]]
    matrix = torch.randn(8192, 8192, device=device)
    side = torch.cuda.Stream()
    decoders = ["nvJPEG", "nvImageCodec"] if gpu_decode.decoder_for(device) == "nvImageCodec" else ["nvJPEG"]
    for decoder in decoders:
        with torch.cuda.stream(side):
            for _ in range(2):
                gpu_decode.decode_jpegs(files, device, decoder)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.cuda.stream(side):
            gpu_decode.decode_jpegs(files, device, decoder)
        torch.cuda.synchronize()
        print(f"{decoder}: the decode alone {(time.perf_counter() - start) * 1e3:.1f} ms")
    start = time.perf_counter()
    _queue_products(matrix)
    torch.cuda.synchronize()
    print(f"the matrix products alone: {(time.perf_counter() - start) * 1e3:.1f} ms")
    for decoder in decoders:
        for where, stream in (("the default stream", torch.cuda.default_stream()),
                              ("a stream of their own", torch.cuda.Stream())):
            torch.cuda.synchronize()
            with torch.cuda.stream(stream):
                _queue_products(matrix)
            start = time.perf_counter()
            with torch.cuda.stream(side):
                gpu_decode.decode_jpegs(files, device, decoder)
            returned = time.perf_counter() - start
            torch.cuda.synchronize()
            print(f"{decoder}, products on {where}: the decode returned after {returned * 1e3:.1f} ms, "
                  f"all done after {(time.perf_counter() - start) * 1e3:.1f} ms")


def _queue_products(matrix: torch.Tensor) -> None:
    for _ in range(40):
        matrix @ matrix


if __name__ == "__main__":
    main()
