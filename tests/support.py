"""Small helpers every kind of test uses: waiting for a condition, a free port, odd image files, an epoch's numbers."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")
# One epoch's numbers as the trainer records them (trainer/records.py's Epoch), every field set.
EPOCH_NUMBERS = {"epoch": 3, "hours": 0.012345, "top1": 41.5, "top5": 88.25, "val_loss": 1.75, "train_loss": 1.9,
                 "train_top1": 38.0, "train_top5": 85.5, "lr": 0.4, "size": 128, "global_batch": 512,
                 "train_seconds": 30.5, "eval_seconds": 2.25, "images_per_second": 4200.0, "examples_seen": 51200}


def wait_for(predicate: Callable[[], T], seconds: float = 30.0, what: str = "the condition", every: float = 0.1) -> T:
    """The predicate's first true value, asked every `every` seconds; fails after `seconds` naming `what`."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    """A TCP port nothing on 127.0.0.1 listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def odd_files(root: Path) -> dict[str, Path]:
    """What real downloaded folders hold besides plain RGB JPEGs; returns those a test names, by what they are."""
    train = sorted(p for p in (root / "train").iterdir() if p.is_dir())[0]
    source = sorted(train.glob("*.JPEG"))[0]
    with Image.open(source) as image:
        image.convert("L").save(train / "grayscale.JPEG", "JPEG")
        image.convert("CMYK").save(train / "cmyk.JPEG", "JPEG")
        image.resize((1, 1)).save(train / "one-pixel.JPEG", "JPEG")
        image.save(train / "png-named.JPEG", "PNG")
        # a 16-bit PNG, as scientific and medical folders hold: decoded as uint16
        Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257).save(train / "sixteen-bit.png")
        # a name that is not UTF-8 (Latin-1, from an old archive)
        latin1 = os.fsdecode(os.fsencode(train) + b"/caf\xe9.JPEG")
        image.save(latin1, "JPEG")
        # an animated GIF named like a JPEG (scraped folders hold them): decoded as its frames
        frames = [image.convert("P"), image.rotate(90).convert("P")]
        frames[0].save(train / "animated.JPEG", "GIF", save_all=True, append_images=frames[1:])
    for image_path in sorted(train.glob("*.JPEG")):  # macOS's metadata beside each image copied from a Mac
        (train / f"._{image_path.name}").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
    (train / ".DS_Store").write_bytes(bytes(64))
    (train / "truncated.JPEG").write_bytes(source.read_bytes()[:300])
    (train / "text.JPEG").write_text("not an image, named like one")
    (train / "notes.txt").write_text("a note beside the images")
    return {"truncated": train / "truncated.JPEG", "text": train / "text.JPEG", "notes": train / "notes.txt",
            "sixteen_bit": train / "sixteen-bit.png", "latin1": Path(latin1), "animated": train / "animated.JPEG",
            "apple_double": train / f"._{source.name}", "plain": source}
