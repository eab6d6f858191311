"""`vaelab cache list` and `vaelab cache clear`: the decoded images kept in $VAELAB_CACHE/folders.

A folder larger than the memory budget, and image files given to a command past it, are decoded
once into a raw uint8 file there (see vaelab.data.cache) and reused while their files are
unchanged; a changed folder gets a new file and leaves the old one behind. These commands show
what the files hold and take, and delete them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

from vaelab.data.cache import delete_unless_held, folder_cache_dir, last_used
from vaelab.errors import VaelabError

STOPPED_AFTER = 3600  # seconds: a temporary file untouched this long was left by a stopped decode


def _entries(folder: Path) -> list[dict[str, Any]]:
    """One dict per decoded file in `folder`, most recently used first."""
    entries = []
    for data in folder.glob("*.u8"):
        if data.name.startswith("."):
            continue
        try:
            header = json.loads(data.with_suffix(".json").read_bytes())
            images, *shape = header["shape"]
        except (OSError, ValueError, KeyError, TypeError):
            header, images, shape = {}, None, None
        source = header.get("folder")
        entries.append({
            "file": str(data),
            "source": source if source is not None else "image files given to a command",
            "source_exists": Path(source).is_dir() if source is not None else None,
            "images": images,
            "shape": shape,
            "bytes": data.stat().st_size + (data.with_suffix(".json").stat().st_size if header else 0),
            "last_used": last_used(data),
        })  # fmt: skip
    return sorted(entries, key=lambda entry: -entry["last_used"])


def _unfinished(folder: Path) -> list[Path]:
    """Temporary files of decodes that were stopped (untouched for STOPPED_AFTER seconds)."""
    now = time.time()
    return [p for p in folder.glob(".*.tmp.u8*") if now - p.stat().st_mtime > STOPPED_AFTER]


def cache_list() -> dict[str, Any]:
    """List the decoded images in $VAELAB_CACHE/folders (default ~/.cache/vaelab/folders): for each
    file, the folder it was decoded from (or image files given to a command), its images and their
    shape, its size on disk and when it was last used; most recently used first."""
    folder = folder_cache_dir()
    entries = _entries(folder) if folder.is_dir() else []
    unfinished = _unfinished(folder) if folder.is_dir() else []
    return {
        "out": str(folder),
        "entries": entries,
        "total_bytes": sum(e["bytes"] for e in entries) + sum(p.stat().st_size for p in unfinished),
        "unfinished_bytes": sum(p.stat().st_size for p in unfinished),
    }


def cache_clear(
    older_than: Annotated[
        float | None, "delete only files not used for this many days (default: all of them)"
    ] = None,
) -> dict[str, Any]:
    """Delete decoded images from $VAELAB_CACHE/folders: all of them, or those not used for
    `older_than` days, and what stopped decodes left behind. A folder whose file is deleted is
    decoded again the next time it is needed. A file a running job reads is kept (`in_use`)."""
    if older_than is not None and older_than < 0:
        raise VaelabError(f"older_than must be zero or more days, got {older_than:g}")
    folder = folder_cache_dir()
    if not folder.is_dir():
        return {"out": str(folder), "deleted": [], "freed_bytes": 0, "kept": 0, "in_use": []}
    cutoff = time.time() - (older_than or 0) * 86400
    deleted, in_use, freed, kept = [], [], 0, 0
    for entry in _entries(folder):
        if older_than is not None and entry["last_used"] > cutoff:
            kept += 1
            continue
        data = Path(entry["file"])
        if not delete_unless_held(data, [data.with_suffix(".json"), data]):  # the header first
            in_use.append(entry["file"])
            continue
        freed += entry["bytes"]
        deleted.append(entry["file"])
    for path in _unfinished(folder):
        freed += path.stat().st_size
        path.unlink(missing_ok=True)
        deleted.append(str(path))
    return {"out": str(folder), "deleted": deleted, "freed_bytes": freed, "kept": kept, "in_use": in_use}


def _size(count: int) -> str:
    if count >= 1e8:
        return f"{count / 1e9:.2f} GB"
    return f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count / 1e3:.1f} kB"


def format_list(result: dict[str, Any]) -> str:
    """The cache's files as a table, most recently used first."""
    entries = result["entries"]
    if not entries and not result["unfinished_bytes"]:
        return f"no decoded images in {result['out']}"
    lines = [f"{'size':>9}  {'last used':<16}  {'images':>9}  {'shape':<11}  source"]
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
        images = f"{e['images']:,}" if e["images"] is not None else "?"
        shape = "x".join(map(str, e["shape"])) if e["shape"] else "?"
        gone = " (gone)" if e["source_exists"] is False else ""
        lines.append(f"{_size(e['bytes']):>9}  {used:<16}  {images:>9}  {shape:<11}  {e['source']}{gone}")
    if result["unfinished_bytes"]:
        lines.append(f"{_size(result['unfinished_bytes']):>9}  left by stopped decodes")
    lines.append(
        f"{_size(result['total_bytes']):>9}  in all, in {result['out']} (vaelab cache clear deletes them)"
    )
    return "\n".join(lines)


def format_clear(result: dict[str, Any]) -> str:
    """What `cache clear` deleted, in one line."""
    kept = f"; kept {result['kept']} used more recently" if result["kept"] else ""
    if result["in_use"]:
        kept += f"; kept {len(result['in_use'])} in use by a running job or session"
    freed = _size(result["freed_bytes"])
    return f"deleted {len(result['deleted'])} decoded image files ({freed}) from {result['out']}{kept}"
