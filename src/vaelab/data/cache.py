"""A folder of images too large for memory, decoded once into a uint8 memory-mapped file.

The file (``folder-KEY.u8``, with ``folder-KEY.json`` beside it, in $VAELAB_CACHE/folders, by
default ~/.cache/vaelab/folders: shared by every run and command, like a download cache) holds every image of the folder as
[N, C, H, W] uint8, the test split's rows first and then the training split's, so that each split
is a slice of the file: reading a batch touches only its rows, and the operating system keeps in
memory whatever fits. KEY hashes the folder's listing (relative paths, sizes, modification times)
and the image size, so a changed folder gets a new cache and an unchanged one is reused.

A folder is grayscale (1 channel) when every image is: a grayscale file, or a colour file whose R,
G and B agree at every pixel (a scan or a digit saved as RGB), as when the folder is read into
memory, so that a folder gives the same images under any memory budget.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from vaelab.data.idx import cache_dir
from vaelab.data.imageset import local_processes
from vaelab.errors import VaelabError
from vaelab.fileio import atomic_output, write_json
from vaelab.progress import bar_hidden

try:
    import fcntl
except ImportError:  # Windows: decoded files in use are not locked
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
# 2: images of more than 8 bits scaled into 0-255 where 1 clipped them; EXIF orientation.
# 3: transparent pixels laid over black, where 2 showed the colour stored under them.
# 4: colour files holding only grey (R = G = B) make a grayscale folder, as in memory; 3 kept RGB.
CACHE_FORMAT = 4
TURNED = {5, 6, 7, 8}  # EXIF orientations that swap width and height (a photo taken upright)


def folder_cache_dir() -> Path:
    """Where decoded folders are kept: $VAELAB_CACHE/folders (default ~/.cache/vaelab/folders)."""
    return cache_dir() / "folders"


def cache_key(root: Path | None, files: list[Path], settings: object) -> str:
    """A hash of the listing (paths relative to `root`, else absolute; sizes; modification times)
    and of `settings` (the image size, say)."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{settings}".encode())
    for path in files:
        stat = path.stat()
        name = path.relative_to(root) if root is not None else path.resolve()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


SHOWN = 3  # files named in an error about several


def why(error: Exception) -> str:
    """What was wrong with a file, without the path Pillow repeats."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow can read"
    return str(getattr(error, "strerror", None) or error)


def unreadable_error(failures: list[tuple[Path, Exception]], total: int) -> VaelabError:
    """One line naming the first few of the files that could not be read, and how many there are,
    so that all of them can be fixed at once."""
    if len(failures) == 1:
        path, error = failures[0]
        return VaelabError(f"cannot read image {path} ({why(error)}); remove or replace it")
    shown = ", ".join(f"{path} ({why(error)})" for path, error in failures[:SHOWN])
    more = f" and {len(failures) - SHOWN:,} more" if len(failures) > SHOWN else ""
    return VaelabError(
        f"{len(failures):,} of {total:,} images cannot be read: {shown}{more}; remove or replace them"
    )


def sizes_error(sizes: dict[tuple[int, int], list[Path]]) -> VaelabError:
    """One line saying how many images have each size (width, height), naming a few of those not
    of the most common one, and the fix."""
    ranked = sorted(sizes.items(), key=lambda item: -len(item[1]))

    def are(count: int) -> str:
        return "1 is" if count == 1 else f"{count:,} are"

    parts = [f"{are(len(ranked[0][1]))} {ranked[0][0][0]}x{ranked[0][0][1]}"]
    for (width, height), paths in ranked[1:SHOWN]:
        names = ", ".join(str(p) for p in paths[:SHOWN]) + (", ..." if len(paths) > SHOWN else "")
        parts.append(f"{are(len(paths))} {width}x{height} ({names})")
    if len(ranked) > SHOWN:
        parts.append(f"{sum(len(p) for _, p in ranked[SHOWN:]):,} have {len(ranked) - SHOWN:,} other sizes")
    return VaelabError(
        f"images have different sizes (width x height): {'; '.join(parts)}; "
        "pass image_size N (--image-size) to resize them all to N x N"
    )


def to_8bit(image: Image.Image, mode: str, name: str | Path) -> Image.Image:
    """`image` the way a viewer shows it, converted to `mode` ("L" or "RGB"): turned as its EXIF
    orientation says (a phone's upright photo is stored sideways), and with its whole range mapped
    to 0-255, where Pillow's own conversion would clip it into a white or black picture: integer
    images of more than 8 bits (16-bit PNG and TIFF) are read as 0-65535, floating-point ones as
    0-1. Values outside those ranges are one line naming `name` and the fix. Transparent pixels
    are laid over black (half-transparent ones blended with it), whatever colour the file stores
    under them; Pillow's conversion would show that hidden colour. EXIF that cannot be parsed is
    ignored (the picture as stored, as viewers show it)."""
    if _orientation(image) is not None:
        image = ImageOps.exif_transpose(image)
    if image.mode in ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, image.convert("RGBA"))
    elif image.mode.startswith("I") or image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all():
            raise VaelabError(
                f"{name} holds NaN or infinite pixels; replace them, or save it as an 8-bit image"
            )
        top = 1.0 if image.mode == "F" else 65535.0
        if pixels.min() < 0 or pixels.max() > top:
            kind = (
                "floating-point pixels, read as 0 to 1" if top == 1 else "integer pixels, read as 0 to 65535"
            )
            raise VaelabError(
                f"{name} holds {kind}, but its values run from {pixels.min():g} to {pixels.max():g}; "
                "rescale it into that range or save it as an 8-bit image"
            )
        image = Image.fromarray(np.rint(pixels * (255 / top)).astype(np.uint8))
    return image.convert(mode)


def layout(files: list[Path], image_size: int | None) -> tuple[int, int, int]:
    """(channels, height, width) of the folder's images as the file headers say: 3 channels where
    any file is a colour image (1 once decoding finds they all hold grey, see decoded_folder)."""
    grey = True
    sizes: dict[tuple[int, int], list[Path]] = {}
    failures: list[tuple[Path, Exception]] = []
    for path in tqdm(
        files, desc="reading image headers", unit="img", disable=bar_hidden(len(files), 10_000), leave=False
    ):
        try:
            with Image.open(path) as image:
                grey = grey and image.mode in GREY_MODES
                turned = image_size is None and _orientation(image, path) in TURNED  # else resized anyway
                size = image.size[::-1] if turned else image.size
        except (UnidentifiedImageError, OSError) as error:
            failures.append((path, error))
            continue
        sizes.setdefault(size, []).append(path)
    if failures:
        raise unreadable_error(failures, len(files))
    if image_size is None and len(sizes) > 1:
        raise sizes_error(sizes)
    width, height = (image_size, image_size) if image_size is not None else next(iter(sizes))
    return (1 if grey else 3), height, width


def _orientation(image: Image.Image, path: Path | None = None) -> int | None:
    """The EXIF orientation of an opened image file; None where it has none, or EXIF that cannot
    be parsed. Given the file's `path`, without decoding its pixels: Pillow decodes a whole PNG to
    look for an eXIf chunk after the image data; this walks the chunks' headers instead."""
    try:
        if path is None or image.format != "PNG" or "exif" in image.info:
            return image.getexif().get(ExifTags.Base.Orientation)
        with open(path, "rb") as file:
            file.seek(8)  # the signature
            while len(head := file.read(8)) == 8:
                length, kind = struct.unpack(">I4s", head)
                if kind == b"eXIf":
                    exif = Image.Exif()
                    exif.load(file.read(length))
                    return exif.get(ExifTags.Base.Orientation)
                if kind == b"IEND":
                    break
                file.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    except (SyntaxError, ValueError, KeyError, IndexError, struct.error):  # what Pillow raises for bad EXIF
        return None
    return None


def decoded_folder(
    root: Path,
    files: list[Path],
    test_rows: np.ndarray,
    image_size: int | None,
    cache_dir: Path,
    shape: tuple[int, int, int],
) -> tuple[Path, tuple[int, int, int, int]]:
    """The raw uint8 file holding the folder's images [N, C, H, W] (test rows first, then the
    training rows, each in file order) and its shape; decoded into `cache_dir` on first use, with
    a progress bar, and reused while the folder is unchanged. `shape` is (C, H, W), from layout;
    C is 1 in the result where colour files turn out to hold only grey."""
    data = cache_dir / f"folder-{cache_key(root, files, image_size)}.u8"
    grey_shape = (len(files), 1, *shape[1:])
    saved = _saved_shape(data, [(len(files), *shape), grey_shape])
    if saved is not None:
        logger.info("reusing the decoded images of %s in %s", root, data)
        return data, saved
    train_rows = np.setdiff1d(np.arange(len(files)), test_rows)
    rows = np.concatenate([np.sort(test_rows), train_rows])
    full = (len(files), *shape)
    _check_disk(full, cache_dir, f"decoding {root}", "pass a smaller image_size (--image-size)")
    logger.info(
        "decoding %d images of %s once into %s (%.2f GB)", len(files), root, data, np.prod(full) / 1e9
    )
    with atomic_output(data) as tmp:
        size = (image_size, image_size) if image_size is not None else None
        grey, _ = _decode(tmp, [files[i] for i in rows], full, size, f"decoding {root.name}")
        if grey:  # colour files of grey pixels: keep one channel, as a folder read into memory does
            _keep_first_channel(tmp, full)
            full = grey_shape
    write_json(data.with_suffix(".json"), {"format": CACHE_FORMAT, "folder": str(root), "shape": list(full),
                                           "test_rows": len(test_rows)})  # fmt: skip
    return data, full


def decoded_files(
    files: list[Path], channels: int, size: tuple[int, int], cache_dir: Path
) -> tuple[Path, tuple[int, int, int, int]]:
    """The raw uint8 file holding image files given to a trained model, [N, C, H, W] in their
    order, each converted to `channels` and resized to `size` (height, width) where it has another
    size; decoded into `cache_dir` on first use, with a progress bar, and reused while the files are
    unchanged."""
    data = cache_dir / f"files-{cache_key(None, files, f'{channels}:{size}')}.u8"
    full = (len(files), channels, *size)
    if _saved_shape(data, [full]) is not None:
        logger.info("reusing the decoded images in %s", data)
        return data, full
    _check_disk(full, cache_dir, f"decoding {len(files):,} images", "give fewer images at a time")
    logger.info("decoding %d images once into %s (%.2f GB)", len(files), data, np.prod(full) / 1e9)
    with atomic_output(data) as tmp:
        _, resized = _decode(tmp, files, full, size, "decoding images")
    say_resized(resized, len(files), size)
    write_json(data.with_suffix(".json"), {"format": CACHE_FORMAT, "shape": list(full)})
    return data, full


def say_resized(resized: int, total: int, size: tuple[int, int]) -> None:
    """Log how many of `total` images were resized to `size` (height, width), if any."""
    if resized:
        logger.info(
            "resized %d of %d images to %dx%d (width x height), the size the model takes",
            resized, total, size[1], size[0],
        )  # fmt: skip


def _saved_shape(data: Path, shapes: list[tuple[int, ...]]) -> tuple[int, int, int, int] | None:
    """The shape the header beside `data` gives, when it is one of `shapes` and `data` has its
    size; else None (no file, a damaged header, a file cut short: decode again). A header found
    is touched: its modification time says when the images were last used (`vaelab cache`)."""
    header = data.with_suffix(".json")
    try:
        saved = tuple(json.loads(header.read_bytes())["shape"])
        if saved in shapes and data.stat().st_size == np.prod(saved):
            with contextlib.suppress(OSError):  # a cache shared read-only: used all the same
                os.utime(header)
            return saved  # type: ignore[return-value]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


class Held:
    """A shared lock (flock) on a decoded file, released when this object goes: `vaelab cache
    clear` keeps files locked so. Pickled (to the reading workers of a fork server) it holds
    nothing: the process that took it keeps the file for them."""

    def __init__(self, data: Path) -> None:
        self._file: BinaryIO | None = None
        if fcntl is None:  # Windows: a file in use cannot be deleted there anyway
            return
        gone = VaelabError(
            f"the decoded images in {data} were deleted as they were opened (vaelab cache clear?); "
            "run the command again"
        )
        try:
            file = open(data, "rb")  # noqa: SIM115 (held for this object's life)
        except FileNotFoundError:
            raise gone from None
        fcntl.flock(file, fcntl.LOCK_SH)  # waits while a clear deletes it
        try:
            same = os.path.samestat(os.fstat(file.fileno()), os.stat(data))
        except FileNotFoundError:
            same = False
        if not same:
            file.close()
            raise gone
        self._file = file

    def __getstate__(self) -> dict[str, object]:
        return {"_file": None}

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()


def mapped(data: Path, shape: tuple[int, int, int, int]) -> tuple[np.memmap, Held]:
    """A decoded file as a copy-on-write memory map [N, C, H, W], and its Held lock. The map
    holds the lock too, as do its views and the tensors made from them (`torch.from_numpy`), so
    a caller that keeps only the images (`vaelab.load_dataset`) keeps the file from `clear`."""
    held = Held(data)
    images = np.memmap(data, dtype=np.uint8, mode="c", shape=shape)
    images.held = held  # a view's base is this map: it lives as long as any view
    return images, held


def delete_unless_held(data: Path, paths: Sequence[Path]) -> bool:
    """Delete `paths` (a decoded file `data` and its header) unless a process holds `data` (see
    Held): then delete nothing and return False. `data` stays locked while it is deleted, so no
    job takes it meanwhile. (Windows refuses to delete a file in use: that says it is held.)"""

    def delete() -> bool:
        try:
            for path in paths:
                path.unlink(missing_ok=True)
        except PermissionError:
            return False
        return True

    if fcntl is None:
        return delete()
    try:
        file = open(data, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:  # gone already: its header goes too
        return delete()
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return delete()


def last_used(data: Path) -> float:
    """When the decoded images in `data` were last used (seconds since the epoch): when its header
    was last written or touched, else when `data` was."""
    try:
        return data.with_suffix(".json").stat().st_mtime
    except OSError:
        return data.stat().st_mtime


def _check_disk(shape: tuple[int, ...], folder: Path, what: str, smaller: str) -> None:
    """Refuse, in one line, to decode images of `shape` into `folder` when its disk lacks the room."""
    free = _free_disk(folder)
    if free is not None and free < np.prod(shape):
        raise VaelabError(
            f"{what} needs {np.prod(shape) / 1e9:.1f} GB in {folder}, which has {free / 1e9:.1f} GB free; "
            f"free some space or {smaller}"
        )


def _decode(
    path: Path, files: list[Path], shape: tuple[int, int, int, int], size: tuple[int, int] | None, desc: str
) -> tuple[bool, int]:
    """Decode `files` into the raw uint8 file `path` of `shape` [N, C, H, W], in their order, each
    resized to `size` (height, width) where given, else refused in one line when of another size.
    Every unreadable file is named at once. Returns whether every image of a colour file held only
    grey (R = G = B), and how many were resized."""
    _, channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"
    failures: list[tuple[Path, Exception]] = []  # past the headers: files cut short, say
    grey, resized = channels == 3, 0
    array = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
    # one process decodes into the cache, the others on this machine wait for it: every core
    results = tqdm(decoded(files, mode, size, decode_threads(shared=False)), desc=desc, unit="img",
                   total=len(files), disable=bar_hidden())  # fmt: skip
    with results:  # closed before an error is printed
        for position, (file, result) in enumerate(results):
            if isinstance(result, Exception):
                failures.append((file, result))
                continue
            pixels, _, was_resized = result
            resized += was_resized
            if pixels.shape[:2] != (height, width):
                raise VaelabError(
                    f"image {file} is {pixels.shape[1]}x{pixels.shape[0]}, the others {width}x{height}; "
                    "pass image_size N (--image-size) to resize them all to N x N"
                )
            array[position] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
            grey = grey and equal_channels(pixels)
    array.flush()
    del array
    if failures:  # every unreadable file named at once; the partial file is removed by the caller
        raise unreadable_error(failures, len(files))
    return grey, resized


READ_ERRORS = (UnidentifiedImageError, OSError, ValueError)  # a file that cannot be decoded
MAX_DECODE_THREADS = 8
DECODE_AHEAD = 4  # files decoded ahead of the one given out, per thread
Decoded = tuple[np.ndarray, bool, bool]  # what decode returns


def decode_threads(shared: bool = True) -> int:
    """Threads that decode image files: the cores this process may use, at most MAX_DECODE_THREADS;
    `shared`: shared among the processes torchrun started on this machine (LOCAL_WORLD_SIZE), each
    reading a folder into memory, where one decodes a folder into the cache while the others wait."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DECODE_THREADS, cores // (local_processes() if shared else 1)))


def decoded(
    files: Sequence[Path], mode: str, size: tuple[int, int] | None, threads: int | None = None
) -> Iterator[tuple[Path, Decoded | Exception]]:
    """Each file with what `decode` gives for it, or the READ_ERRORS error it raised, in the files'
    order. Files are decoded `threads` (default decode_threads()) at a time (Pillow decodes and
    resizes without holding Python's lock), DECODE_AHEAD per thread ahead of the one given out:
    memory holds that many decoded images more."""
    threads = threads or decode_threads()
    if threads == 1 or len(files) < 2:
        yield from ((file, _attempt(file, mode, size)) for file in files)
        return
    ahead: collections.deque[tuple[Path, concurrent.futures.Future[Decoded | Exception]]] = (
        collections.deque()
    )
    waiting = iter(files)
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="vaelab-decode") as pool:
        try:
            for file in waiting:
                ahead.append((file, pool.submit(_attempt, file, mode, size)))
                if len(ahead) >= DECODE_AHEAD * threads:
                    done, future = ahead.popleft()
                    yield done, future.result()
            while ahead:
                done, future = ahead.popleft()
                yield done, future.result()
        finally:  # stopped early (an error, a file of another size): no more decoding than in hand
            for _, future in ahead:
                future.cancel()


def _attempt(file: Path, mode: str, size: tuple[int, int] | None) -> Decoded | Exception:
    try:
        return decode(file, mode, size)
    except READ_ERRORS as error:
        return error


def decode(path: Path, mode: str, size: tuple[int, int] | None) -> tuple[np.ndarray, bool, bool]:
    """One image file as uint8 pixels, [H, W] for `mode` "L" or [H, W, 3] for "RGB" (see to_8bit),
    resized (bicubic) to `size` (height, width) where it has another size; with whether the file
    is a grayscale image and whether it was resized. Raises READ_ERRORS for a file it cannot read."""
    with Image.open(path) as image:
        image.load()
        grey = image.mode in GREY_MODES
        converted = to_8bit(image, mode, path)
    resized = size is not None and converted.size != size[::-1]
    if resized:
        converted = converted.resize(size[::-1], Image.Resampling.BICUBIC)
    return np.asarray(converted), grey, resized


def equal_channels(pixels: np.ndarray) -> bool:
    """Whether R, G and B agree at every pixel of [H, W, 3]."""
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def _keep_first_channel(path: Path, shape: tuple[int, int, int, int]) -> None:
    """Rewrite the raw images [N, 3, H, W] in `path` as their first channel [N, 1, H, W], 64 MB
    of them at a time."""
    scratch = path.with_name(path.name + ".grey")
    try:
        rgb = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
        grey = np.memmap(scratch, dtype=np.uint8, mode="w+", shape=(shape[0], 1, *shape[2:]))
        step = max(1, 2**26 // int(np.prod(shape[1:])))
        for start in range(0, shape[0], step):
            grey[start : start + step] = rgb[start : start + step, :1]
        grey.flush()
        del grey, rgb
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def _free_disk(folder: Path) -> int | None:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return stat.f_bavail * stat.f_frsize
