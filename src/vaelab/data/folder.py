"""``folder:PATH``: any directory of images, optionally one sub-folder per class.

Images are found recursively. When every image sits in a first-level sub-folder, the sub-folder
names are the classes (sorted; labels are their indices). All images must share one size unless
``image_size`` is given, in which case each is resized to image_size x image_size. The set is
grayscale (1 channel) when every image is, else RGB (3 channels). The split is fixed: a
permutation drawn from seed 0 sends one image in five to ``test`` (at least one when there are two
or more images), the rest to ``train``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from vaelab.data.cache import (
    decoded,
    decoded_files,
    decoded_folder,
    equal_channels,
    folder_cache_dir,
    layout,
    mapped,
    say_resized,
    sizes_error,
    unreadable_error,
)
from vaelab.data.imageset import ImageSet, ensure_fits_in_memory, memory_budget
from vaelab.data.stream import ImageFile
from vaelab.errors import VaelabError
from vaelab.progress import bar_hidden

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_SEED = 0
TEST_SHARE = 0.2


def list_images(root: Path) -> list[Path]:
    """All image files under `root`, sorted, hidden files and folders skipped."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def read_image_files(
    paths: list[Path],
    image_size: int | None,
    channels: int | None = None,
    resize_to: tuple[int, int] | None = None,
    keep: np.ndarray | None = None,
) -> torch.Tensor:
    """Decode image files into one uint8 tensor [N, C, H, W].

    `channels` forces 1 (grayscale, by luminance) or 3 (RGB); None picks 1 when every image has
    equal R, G and B. `resize_to` (height, width), for images given to a trained model with
    image_size None, resizes every image of another size to it and says how many were. `keep`
    (sorted indices into `paths`) returns only those images: the others are decoded to check
    them (readable, one size, grey or colour) and dropped, so that the two splits of a folder
    agree while memory holds one split. The result is written into one array as the files are
    read: memory peaks near the size of the result (4/3 of it when colour files turn out grey).
    """
    mode = "L" if channels == 1 else "RGB"  # decide grayscale after reading when channels is None
    size = (image_size, image_size) if image_size is not None else resize_to
    wanted = np.arange(len(paths)) if keep is None else np.asarray(keep)
    rows = np.full(len(paths), -1)  # where each file goes in the result, -1: checked only
    rows[wanted] = np.arange(len(wanted))
    out: np.ndarray | None = None  # [kept, C, H, W]; C = 1 while every image so far is grey
    grey, resized = 0, 0
    failures: list[tuple[Path, Exception]] = []
    sizes: dict[tuple[int, int], list[Path]] = {}
    results = tqdm(
        decoded(paths, mode, size),
        desc="reading images",
        unit="img",
        total=len(paths),
        disable=bar_hidden(len(paths), 10_000),
        leave=False,
    )
    for (path, result), row in zip(results, rows.tolist()):
        if isinstance(result, Exception):
            failures.append((path, result))  # read on, to name every unreadable file at once
            continue
        pixels, grey_file, was_resized = result  # [H, W] or [H, W, 3]
        grey += grey_file
        resized += was_resized
        sizes.setdefault((pixels.shape[1], pixels.shape[0]), []).append(path)
        colour = pixels.ndim == 3 and (channels == 3 or not equal_channels(pixels))
        if out is None:
            out = np.empty((len(wanted), 3 if colour else 1, *pixels.shape[:2]), np.uint8)
        elif colour and out.shape[1] == 1:  # the first colour image: every image is read as RGB
            out = np.repeat(out, 3, axis=1)
        if row < 0 or pixels.shape[:2] != out.shape[2:]:  # another size: named below
            continue
        if out.shape[1] == 3:
            out[row] = pixels.transpose(2, 0, 1)
        else:  # grey, or colour with R = G = B
            out[row, 0] = pixels if pixels.ndim == 2 else pixels[..., 0]
    if failures:
        raise unreadable_error(failures, len(paths))
    if resize_to is not None:
        say_resized(resized, len(paths), resize_to)
    if len(sizes) > 1:
        raise sizes_error(sizes)
    assert out is not None  # paths is not empty and every file was read
    if out.shape[1] == 3 and channels is None and 0 < grey < len(paths):
        logger.warning(
            "%d of %d images are grayscale and the rest colour: all are read as RGB (grey as equal R, G, B)",
            grey,
            len(paths),
        )
    return torch.from_numpy(out)


def _size(files: list[Path], image_size: int | None) -> tuple[int, int]:
    """The size images will have: image_size, else the first readable file's (the unreadable
    ones are all named later, when the folder is read)."""
    if image_size is not None:
        return image_size, image_size
    for path in files:
        try:
            with Image.open(path) as image:
                return image.size
        except (UnidentifiedImageError, OSError):
            continue
    return 0, 0


def load_folder(
    path: str,
    split: str,
    image_size: int | None,
    max_memory: str | None = None,
    cache_dir: Path | None = None,
) -> ImageSet:
    """Load `split` of the images under `path` (see the module docstring for the rules).

    A folder whose decoded images would take more than the memory budget (`max_memory`; by
    default half of the available memory) is decoded once into a memory-mapped file in `cache_dir`
    (default: $VAELAB_CACHE/folders, see vaelab.data.cache) and the returned images are a view of it."""
    if not path.strip():  # Path("") is the working directory: not what anyone meant
        raise VaelabError("folder: names no folder; give folder:PATH, e.g. folder:photos or folder:.")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise VaelabError(f"folder:{path} is not a directory; give folder:PATH with an existing folder")
    files = list_images(root)
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise VaelabError(f"folder:{path} holds no images ({suffixes}); add images or pick another folder")
    relative = [f.relative_to(root) for f in files]
    by_class = all(len(r.parts) >= 2 for r in relative)
    class_names = sorted({r.parts[0] for r in relative}) if by_class else None

    order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    n_test = round(len(files) * TEST_SHARE) if len(files) >= 5 else min(1, len(files) - 1)
    chosen = np.sort(order[:n_test] if split == "test" else order[n_test:])
    if len(chosen) == 0:
        raise VaelabError(f"folder:{path} has too few images for a {split} split; add more images")
    labels = None
    if class_names is not None:
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[relative[i].parts[0]] for i in chosen], dtype=torch.int64)
    chosen_files = [str(files[i]) for i in chosen]
    budget = memory_budget(max_memory)
    if budget is not None and len(files) * 3 * math.prod(_size(files, image_size)) > budget:
        # at most this much in memory (RGB at the first image's size): only now read every header
        shape = layout(files, image_size)
        if len(files) * math.prod(shape) > budget:
            folders = cache_dir if cache_dir is not None else folder_cache_dir()
            data, full = decoded_folder(root, files, order[:n_test], image_size, folders, shape)
            images, held = mapped(data, full)  # kept from `vaelab cache clear` while in use
            start, stop = (0, n_test) if split == "test" else (n_test, len(files))
            return ImageSet(images=torch.from_numpy(images[start:stop]), labels=labels, class_names=class_names,
                            paths=chosen_files, file=ImageFile(str(data), full, held), file_start=start)  # fmt: skip
    if image_size is not None:
        ensure_fits_in_memory(len(files), 3, image_size, image_size, f"folder:{path}")
    images = read_image_files(files, image_size, keep=chosen)  # both splits agree on size and channels
    return ImageSet(images=images, labels=labels, class_names=class_names, paths=chosen_files)


def load_files(
    files: list[Path],
    channels: int,
    size: tuple[int, int],
    max_memory: str | None = None,
    cache_dir: Path | None = None,
) -> ImageSet:
    """Image files given to a trained model, as `channels` (1: grayscale by luminance, 3: RGB) at
    `size` (height, width; images of another size are resized to it), in their order. More than
    the memory budget (`max_memory`, by default half of the available memory) are decoded once
    into a file in `cache_dir` (default: $VAELAB_CACHE/folders) and the images are a view of it."""
    budget = memory_budget(max_memory)
    paths = [str(f) for f in files]
    if budget is not None and len(files) * channels * math.prod(size) > budget:
        folders = cache_dir if cache_dir is not None else folder_cache_dir()
        data, full = decoded_files(files, channels, size, folders)
        images, held = mapped(data, full)  # kept from `vaelab cache clear` while in use
        return ImageSet(
            images=torch.from_numpy(images), labels=None, paths=paths, file=ImageFile(str(data), full, held)
        )
    images = read_image_files(files, None, channels, size)
    return ImageSet(images=images, labels=None, paths=paths)
