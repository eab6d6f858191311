"""MNIST, Fashion-MNIST and KMNIST from their standard IDX files (parsed by torchvision).

Where the files come from, first found wins: ``data_dir`` (plain or ``.gz`` files, directly in it
or in torchvision's ``<Class>/raw`` layout), a system folder such as Debian's
``/usr/share/datasets/fashion-mnist``, then torchvision's download into the cache folder
(``$VAELAB_CACHE`` or ``~/.cache/vaelab``).
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

from vaelab.data.imageset import ImageSet
from vaelab.errors import VaelabError

TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}
SYSTEM_DIRS = {
    "mnist": ["/usr/share/datasets/mnist"],
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist"],
    "kmnist": [],
}
PREFIX = {"train": "train", "test": "t10k"}


def _torchvision_class(name: str) -> type:
    """torchvision's dataset class for `name` (torchvision is imported here, when an IDX set is
    loaded, not by every command)."""
    from torchvision import datasets

    return getattr(datasets, TORCHVISION_CLASSES[name])


def cache_dir() -> Path:
    """Where downloaded datasets are kept: $VAELAB_CACHE or ~/.cache/vaelab."""
    return Path(os.environ.get("VAELAB_CACHE") or Path.home() / ".cache" / "vaelab")


def find_idx_files(name: str, split: str, folder: Path) -> tuple[Path, Path] | None:
    """Return the (images, labels) IDX files of `split` under `folder`, plain or .gz, or None."""
    class_name = TORCHVISION_CLASSES[name]
    stems = (f"{PREFIX[split]}-images-idx3-ubyte", f"{PREFIX[split]}-labels-idx1-ubyte")
    for base in (folder, folder / "raw", folder / class_name / "raw"):
        found = []
        for stem in stems:
            candidates = [base / stem, base / f"{stem}.gz"]
            existing = [c for c in candidates if c.is_file()]
            if not existing:
                break
            found.append(existing[0])
        if len(found) == 2:
            return found[0], found[1]
    return None


def read_idx_pair(images_path: Path, labels_path: Path) -> ImageSet:
    """Parse an images/labels IDX pair (gzip-compressed files are unpacked to a temp folder)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    with tempfile.TemporaryDirectory() as tmp:
        plain = []
        for path in (images_path, labels_path):
            if path.suffix == ".gz":
                target = Path(tmp) / path.stem
                with gzip.open(path, "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                path = target
            plain.append(str(path))
        try:
            images = read_image_file(plain[0])
            labels = read_label_file(plain[1])
        except (AssertionError, TypeError, ValueError, OSError, RuntimeError, EOFError) as error:
            raise VaelabError(f"{images_path.parent} holds IDX files that do not parse ({error})") from None
    if len(images) != len(labels):
        raise VaelabError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return ImageSet(images=images.unsqueeze(1).contiguous(), labels=labels.long())


def load_idx_dataset(name: str, split: str, data_dir: str | None) -> ImageSet:
    """Load `split` of an IDX dataset from data_dir, a system folder, the cache, or the network."""
    if data_dir is not None:
        found = find_idx_files(name, split, Path(data_dir))
        if found is None:
            raise VaelabError(
                f"data_dir {data_dir} holds no {PREFIX[split]}-images-idx3-ubyte[.gz] and "
                f"{PREFIX[split]}-labels-idx1-ubyte[.gz]; point it at the folder with the {name} IDX files"
            )
        return _with_names(name, read_idx_pair(*found))
    for folder in [*SYSTEM_DIRS[name], str(cache_dir())]:
        found = find_idx_files(name, split, Path(folder))
        if found is not None:
            return _with_names(name, read_idx_pair(*found))
    tv_class = _torchvision_class(name)
    try:
        tv_class(root=str(cache_dir()), train=split == "train", download=True)
    except Exception as error:  # torchvision raises RuntimeError/URLError/OSError for network failures
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VaelabError(
            f"could not download {name} ({reason}); pass data_dir (--data-dir) holding its IDX files, "
            "or use the embedded dataset mnist-mini"
        ) from None
    found = find_idx_files(name, split, cache_dir())
    if found is None:
        raise VaelabError(f"download of {name} finished but its files are missing under {cache_dir()}")
    return _with_names(name, read_idx_pair(*found))


def _with_names(name: str, image_set: ImageSet) -> ImageSet:
    classes = _torchvision_class(name).classes
    image_set.class_names = [str(d) for d in range(10)] if name == "mnist" else list(classes)
    return image_set
