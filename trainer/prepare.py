"""Resized copies of an ImageNet-layout dataset, as the schedules' `trndir = "-sz/<S>"` phases read them.

For each size S, ROOT/{train,validation}/<class>/<file> becomes ROOT-sz/S/{train,validation}/<class>/<file>
with its short side S (aspect kept). Images already no bigger are copied unchanged. Outputs appear atomically;
an output carries its source's modification time and is kept while the source has it, so a second run makes
nothing and an interrupted run resumes where it stopped. A source that changed since its output was made (an older
file put in its place too) is made again, and outputs whose source is gone are removed, so the copies always
mirror ROOT (the trainer refuses copies whose classes differ from ROOT's).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from trainer.layout import SPLITS, is_image_name
from trainer.process_pool import process_pool

logger = logging.getLogger(__name__)

JPEG_QUALITY = 90
LONGEST_SIDE = {"PNG": 2**31 - 1, "JPEG": 65_500, "WEBP": 16_383}  # pixels: libjpeg's, WebP's header's
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B")  # those Pillow writes as PNG
DECODED_PIXELS_AT_MOST = 400_000_000  # 1.2 GB of RGB in a worker: a 20,000 x 20,000 scan
# What PIL raises for files it cannot decode (truncated, garbage, absurdly large).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class PrepareError(ValueError):
    """A dataset that cannot be prepared; the message names the problem."""


@dataclass
class PrepareReport:
    resized: int = 0
    copied: int = 0
    skipped_existing: int = 0
    removed: int = 0  # outputs whose source is gone
    corrupt: list[Path] = field(default_factory=list)
    output_roots: dict[int, Path] = field(default_factory=dict)

    @property
    def made(self) -> int:
        return self.resized + self.copied

    def __str__(self) -> str:
        return (f"{self.resized} resized, {self.copied} copied, {self.skipped_existing} already there, "
                f"{self.removed} removed (source gone), {len(self.corrupt)} unreadable")


# One source image, the outputs (size, path) it still needs, and its modification time: a copy is fresh when it
# carries it, so a source replaced is made again whatever its time (rsync -a, cp -p and tar x put an older one in).
Job = tuple[Path, tuple[tuple[int, Path], ...], int]
Progress = Callable[[int, int], None]  # (images done, images to do)
# A source left without copies, and why: None where it cannot be read, the encoder's error where it cannot be written.
Skipped = tuple[Path, str | None]


def resized_root(root: Path, size: int) -> Path:
    """Where the copy of `root` resized to `size` lives: the string ROOT with "-sz/<size>" appended."""
    return Path(f"{root}-sz/{size}")


def size_of(trndir: str) -> int | None:
    """The pixel size a schedule's `trndir` names ("-sz/160" -> 160), None for the full-size folder ("")."""
    return int(trndir.removeprefix("-sz/")) if trndir else None


def prepare(root: Path, sizes: Sequence[int] = (160, 352), workers: int | None = None,
            progress: Progress | None = None) -> PrepareReport:
    """Bring the resized copies of `root` for each of `sizes` up to date: make what is missing or not made from
    its source as it is (by its modification time), remove what has no source any more. `progress(done, to_do)`
    is called as images are made."""
    root = Path(root)
    sizes = _check_sizes(sizes)
    workers = _check_workers(workers)
    class_dirs = _class_dirs(root)
    report = PrepareReport(output_roots={size: resized_root(root, size) for size in sizes})
    for out_root in report.output_roots.values():
        report.removed += _remove_orphans(root, out_root)
        for class_dir in class_dirs:
            (out_root / class_dir.relative_to(root)).mkdir(parents=True, exist_ok=True)
    jobs = []
    for source, outputs, fresh, changed in _sources(root, class_dirs, report.output_roots):
        report.skipped_existing += fresh
        if outputs:
            jobs.append((source, outputs, changed))
    if jobs:
        logger.info("preparing sizes %s of %d images in %s with %d workers", list(sizes), len(jobs), root,
                    min(workers, len(jobs)))
    progress_every = max(1, len(jobs) // 20)  # about 20 reports, whatever the size
    for done, (resized, copied, skipped) in enumerate(_run(jobs, workers), 1):
        report.resized += resized
        report.copied += copied
        if skipped is not None:
            source, error = skipped
            if error is None:
                logger.warning("skipping corrupt or unreadable image %s", source)
            else:
                logger.warning("skipping image %s: its copy cannot be written (%s)", source, error)
            report.corrupt.append(source)
        if done % progress_every == 0 or done == len(jobs):
            logger.info("prepared %d/%d images", done, len(jobs))
            if progress:
                progress(done, len(jobs))
    report.corrupt.sort()
    logger.info("prepared %s sizes %s: %s", root, list(sizes), report)
    return report


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise PrepareError(f"sizes must be a sequence of positive integers, got {sizes!r}")
    sizes = tuple(sizes)
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise PrepareError(f"sizes must be a non-empty sequence of positive integers, got {sizes!r}")
    return tuple(dict.fromkeys(sizes))


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return len(os.sched_getaffinity(0))
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise PrepareError(f"workers must be a positive integer or None (all cores), got {workers!r}")
    return workers


def _class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise PrepareError(f"dataset root {root} does not exist or is not a directory")
    class_dirs = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise PrepareError(f"dataset root {root} has no {split}/ folder (expected {root}/{split}/<class>/*.JPEG)")
        classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise PrepareError(f"{split_dir} has no class folders (expected {split_dir}/<class>/*.JPEG)")
        class_dirs += classes
    return class_dirs


def unreadable_classes(root: Path) -> list[Path]:
    """The class folders of the full-size dataset none of whose images the trainer's decoder reads (each class's
    images are tried until one is: mostly one decode a class)."""
    from trainer.data import decode  # torch's: only where a run reads the full-size images

    def decodes(path: Path) -> bool:
        try:
            decode(str(path))
            return True
        except (RuntimeError, OSError):  # as the trainer's loaders skip it
            return False

    return [class_dir for class_dir in _class_dirs(root)
            if not any(decodes(path) for path in sorted(class_dir.iterdir()) if _is_image(path))]


def _is_image(path: Path) -> bool:
    return is_image_name(path.name) and path.is_file()


def _remove_orphans(root: Path, out_root: Path) -> int:
    """Delete outputs (and class folders) under `out_root` whose source in `root` is gone."""
    removed = 0
    for split in SPLITS:
        for class_dir in sorted(p for p in (out_root / split).glob("*") if p.is_dir()):
            source_dir = root / split / class_dir.name
            if not source_dir.is_dir():
                removed += sum(1 for p in class_dir.iterdir() if _is_image(p))
                shutil.rmtree(class_dir)
                continue
            for output in class_dir.iterdir():
                if _is_image(output) and not (source_dir / output.name).is_file():
                    output.unlink()
                    removed += 1
    return removed


def _sources(root: Path, class_dirs: list[Path], output_roots: dict[int, Path]
             ) -> Iterable[tuple[Path, tuple[tuple[int, Path], ...], int, int]]:
    """Each source image, the outputs it still needs (missing, or not made from it as it is), how many are fresh,
    and its modification time."""
    for class_dir in class_dirs:
        for source in sorted(class_dir.iterdir()):
            if not _is_image(source):
                continue
            changed = source.stat().st_mtime_ns
            relative = source.relative_to(root)
            outputs = tuple((size, out_root / relative) for size, out_root in output_roots.items())
            needed = tuple((size, out) for size, out in outputs if not _made_from(out, changed))
            yield source, needed, len(outputs) - len(needed), changed


def _made_from(path: Path, source_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns == source_ns
    except FileNotFoundError:
        return False


def _run(jobs: list[Job], workers: int) -> Iterable[tuple[int, int, Skipped | None]]:
    workers = min(workers, len(jobs))
    if workers <= 1:
        yield from map(_prepare_one, jobs)
        return
    with process_pool(workers) as pool:
        yield from pool.imap_unordered(_prepare_one, jobs, chunksize=max(1, min(256, len(jobs) // (workers * 8))))


def _prepare_one(job: Job) -> tuple[int, int, Skipped | None]:
    """Write one source's needed outputs; returns (resized, copied, the source and why if it is skipped)."""
    source, missing, changed = job
    decoded = _decode(source, max(size for size, _ in missing))
    error = None
    if decoded is not None:
        image, full_size = decoded
        with image:
            try:
                return (*_write(source, image, full_size, missing, changed), None)
            except (OSError, ValueError) as exc:  # what Pillow raises for a mode or content it cannot encode
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # the output folder's (a full disk, no permission), not the image's: prepare fails
                error = str(exc)
    for _, out in missing:  # made from what the source was before, or some of them just now
        out.unlink(missing_ok=True)
    return 0, 0, (source, error)


def _write(source: Path, image: Image.Image, full_size: tuple[int, int], missing: tuple[tuple[int, Path], ...],
           changed: int) -> tuple[int, int]:
    """Write `missing` from the decoded `image`; returns (resized, copied)."""
    resized = copied = 0
    for size, out in missing:
        if min(full_size) <= size:
            _atomic_write(out, lambda temp: shutil.copyfile(source, temp), changed)
            copied += 1
        else:
            _atomic_write(out, lambda temp: _save(_resize(image, size, full_size), temp, out.suffix), changed)
            resized += 1
    return resized, copied


def _decode(source: Path, needs: int) -> tuple[Image.Image, tuple[int, int]] | None:
    """The decoded image and its full size, or None when it cannot be read (decoding it all is what finds truncated
    files). One past Pillow's pixel limit (a 200-megapixel phone's photo) is read too; a JPEG decoded at the
    smallest of libjpeg's scales (1/2 to 1/8) that keeps its short side at least `needs`, which bounds its memory,
    another only up to DECODED_PIXELS_AT_MOST."""
    with pixel_limit_lifted() as limit:
        try:
            image = Image.open(source)
        except DECODE_ERRORS:
            return None
        full_size = width, height = image.size
        if limit is not None and width * height > limit:
            scale = needs / min(full_size)
            image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))  # a no-op but for JPEG
        if image.size[0] * image.size[1] > DECODED_PIXELS_AT_MOST:  # no reduced decode (a PNG): memory is bounded
            image.close()
            return None
        try:
            image.load()
        except DECODE_ERRORS:
            image.close()
            return None
    return image, full_size


_PIXEL_LIMIT_LOCK = threading.Lock()


@contextmanager
def pixel_limit_lifted() -> Iterator[int | None]:
    """Within, Pillow opens and loads images past its pixel limit (yielded), a guard against hostile files: the
    dataset is the user's own, which the trainer's decoder reads whatever its size. The limit is a global of
    Pillow's, so it is lifted only for this block; the lock keeps two threads' blocks from restoring None."""
    with _PIXEL_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield limit
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _resize(image: Image.Image, size: int, full_size: tuple[int, int]) -> Image.Image:
    """`image` with its short side `size`, its aspect that of `full_size`, its size before a draft reduced it."""
    width, height = full_size
    scale = size / min(width, height)
    target = (size, round(height * scale)) if width <= height else (round(width * scale), size)
    return image.resize(target, Image.LANCZOS)


def _save(image: Image.Image, path: Path, suffix: str) -> None:
    # The output keeps its source's name, so its format follows the extension.
    kind = {".png": "PNG", ".webp": "WEBP"}.get(suffix.lower(), "JPEG")
    image = _within(image, LONGEST_SIDE[kind])
    if (image.mode.startswith("I") or image.mode == "F") and not (kind == "PNG" and image.mode in PNG_MODES):
        image = _as_8_bits(image)
    if kind == "PNG":
        if image.mode not in PNG_MODES:  # CMYK, YCbCr, LAB, PA
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        image.save(path, "PNG")
        return
    if kind == "WEBP":  # Pillow converts what WebP cannot hold (grey, CMYK) to RGB(A) itself
        image.save(path, "WEBP", quality=JPEG_QUALITY)
        return
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.save(path, "JPEG", quality=JPEG_QUALITY)


def _as_8_bits(image: Image.Image) -> Image.Image:
    """A 16 or 32-bit or float image, whose levels convert() clips to 8 bits, scaled instead: a 16-bit one's
    levels / 257, as the trainer's decoder scales a 16-bit PNG; another's by the range its values fit in, 0-1
    (a float image's usual), 0-255 or 0-65535, else its own maximum."""
    if image.mode.startswith("I;16"):
        ceiling = 65535.0
    else:
        high = float(image.getextrema()[1])
        ceiling = next((c for c in (1.0, 255.0, 65535.0) if high <= c), high)
    floats = image if image.mode == "F" else image.convert("I").convert("F")
    return floats.point(lambda value: value * (255 / ceiling)).convert("L")


def _within(image: Image.Image, longest: int) -> Image.Image:
    """`image`, its long side centre-cropped to what its format holds: a source of another format under the name
    (a PNG of a 200:1 strip named .webp) can be longer. Losing its ends beats failing the whole prepare."""
    width, height = image.size
    if max(width, height) <= longest:
        return image
    left, top = max(0, (width - longest) // 2), max(0, (height - longest) // 2)
    return image.crop((left, top, left + min(width, longest), top + min(height, longest)))


def _atomic_write(out: Path, write: Callable[[Path], object], source_ns: int) -> None:
    """`out` written whole, carrying its source's modification time."""
    temp = out.with_name(f".{secrets.token_hex(8)}.tmp")  # short: `out`'s name may be NAME_MAX's 255 bytes
    try:
        write(temp)
        os.utime(temp, ns=(time.time_ns(), source_ns))
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
