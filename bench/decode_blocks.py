"""Does torchvision's decode_jpeg on the GPU wait for the GPU work queued before it? About 0.9 s of matrix
products are queued, then a batch is decoded (on the same stream, then on a side stream); if the call returns
only after the products are done, the decode cannot overlap the training step, whatever stream it is given.

    python bench/decode_blocks.py DATA [--batch 256]   # DATA/train/<class>/*.JPEG; needs a CUDA GPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    files = [read_file(str(path)) for path in sorted((args.data / "train").glob("*/*.JPEG"))[:args.batch]]
    matrix = torch.randn(8192, 8192, device="cuda")
    for _ in range(2):
        decode_jpeg(files, mode=ImageReadMode.RGB, device="cuda")
    side = torch.cuda.Stream()
    for where in ("same stream", "side stream"):
        torch.cuda.synchronize()
        _queue_products(matrix)
        start = time.perf_counter()
        with torch.cuda.stream(side if where == "side stream" else torch.cuda.current_stream()):
            decode_jpeg(files, mode=ImageReadMode.RGB, device="cuda")
        issued = time.perf_counter() - start
        torch.cuda.synchronize()
        print(f"{where}: decode issued in {issued * 1e3:.1f} ms, all done {(time.perf_counter() - start) * 1e3:.1f} ms")
    torch.cuda.synchronize()
    start = time.perf_counter()
    _queue_products(matrix)
    torch.cuda.synchronize()
    print(f"the matrix products alone: {(time.perf_counter() - start) * 1e3:.1f} ms")


def _queue_products(matrix: torch.Tensor) -> None:
    for _ in range(40):
        matrix @ matrix


if __name__ == "__main__":
    main()
