"""A data sync from s3:// with S3's round trip: files per second at 1, 10 and 64 copies at once.

    python bench/data_sync.py [--files 2000] [--round-trip 0.03] [--at-once 1 10 64]

Puts --files small files in a bucket of the AWS simulator (moto server + our wrapper), which answers each GetObject
--round-trip seconds after it is asked (S3's time to first byte, tens of milliseconds), then times
`trainer.sync.sync` into a fresh folder once for each --at-once value; prints files per second and what that makes
of ImageNet's 4 million files (the originals and the 160 and 352 px copies). Needs the test extras (moto). Figures go
to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.awssim import start  # noqa: E402
from tests.awssim.client import client_environment  # noqa: E402
from trainer import sync  # noqa: E402

IMAGENET_FILES = 4_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--round-trip", type=float, default=0.03, help="seconds before S3 answers each GET")
    parser.add_argument("--at-once", type=int, nargs="+", default=[1, 10, sync.COPIES_AT_ONCE])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, value in client_environment(root / "aws").items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        with start(root / "sim") as sim:
            os.environ["AWS_ENDPOINT_URL"] = sim.endpoint
            s3 = sim.make_bucket("bench")
            for index in range(args.files):
                s3.put_object(Bucket="bench", Key=f"imagenet/train/n{index % 100:03d}/{index}.JPEG", Body=b"x" * 1000)
            sim.set_s3_round_trip(args.round_trip)
            print(f"{args.files} files of 1 kB, S3 answering each GET after {args.round_trip * 1000:.0f} ms")
            for at_once in args.at_once:
                began = time.perf_counter()
                copied = sync.sync("s3://bench/imagenet", root / f"copy-{at_once}", [""], copies_at_once=at_once)
                seconds = time.perf_counter() - began
                print(f"  {at_once:3d} at once: {copied} files in {seconds:6.2f} s, {copied / seconds:7.1f} files/s; "
                      f"ImageNet's {IMAGENET_FILES / 1e6:g} million at that pace: "
                      f"{IMAGENET_FILES / (copied / seconds) / 3600:5.1f} h")


if __name__ == "__main__":
    main()
