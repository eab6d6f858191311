"""`vaelab cache list` and `vaelab cache clear`: the decoded images in $VAELAB_CACHE/folders."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import run_cli, write_images
from vaelab.cli import main
from vaelab.data.folder import load_files, load_folder


def _decode_two(tmp_path: Path) -> tuple[Path, Path]:
    """A folder decoded into the cache (then deleted), and image files given to a command."""
    write_images(tmp_path / "photos", 10, (8, 6), mode="RGB")
    load_folder(str(tmp_path / "photos"), "train", None, max_memory="0")
    files = write_images(tmp_path / "inputs", 4, (8, 6))
    load_files(files, 1, (6, 8), max_memory="0")
    (folder,) = (tmp_path / "cache" / "folders").glob("folder-*.u8")
    (inputs,) = (tmp_path / "cache" / "folders").glob("files-*.u8")
    return folder, inputs


def test_cache_list_shows_what_each_decoded_file_holds_and_clear_deletes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    code, result, _ = run_cli(["cache", "list"], capsys)
    assert code == 0 and result["entries"] == [] and result["total_bytes"] == 0
    folder, inputs = _decode_two(tmp_path)
    old = time.time() - 3 * 86400  # the folder's file last used three days ago
    os.utime(folder.with_suffix(".json"), (old, old))
    stopped = folder.parent / ".folder-0123.abcd.tmp.u8"  # left by a decode killed an hour ago
    stopped.write_bytes(b"\0" * 1000)
    os.utime(stopped, (old, old))
    code, result, _ = run_cli(["cache", "list"], capsys)
    assert code == 0
    assert [
        (e["file"], e["images"], e["shape"], e["source"], e["source_exists"]) for e in result["entries"]
    ] == [
        (str(inputs), 4, [1, 6, 8], "image files given to a command", None),
        (str(folder), 10, [3, 6, 8], str(tmp_path / "photos"), True),
    ]  # most recently used first
    assert result["entries"][1]["bytes"] == 10 * 3 * 6 * 8 + folder.with_suffix(".json").stat().st_size
    assert result["unfinished_bytes"] == 1000
    assert result["total_bytes"] == sum(p.stat().st_size for p in folder.parent.iterdir())
    assert main(["cache", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert str(tmp_path / "photos") in table[2] and "left by stopped decodes" in table[3]

    # reusing a file makes it recently used: it survives --older-than
    load_files(sorted((tmp_path / "inputs").iterdir()), 1, (6, 8), max_memory="0")
    freed = folder.stat().st_size + folder.with_suffix(".json").stat().st_size + 1000
    code, result, _ = run_cli(["cache", "clear", "--older-than", "1"], capsys)
    assert code == 0 and result["kept"] == 1
    assert set(result["deleted"]) == {str(folder), str(stopped)} and result["freed_bytes"] == freed
    assert sorted(p.name for p in folder.parent.iterdir()) == [inputs.with_suffix(".json").name, inputs.name]
    load_folder(str(tmp_path / "photos"), "train", None, max_memory="0")  # decoded again when needed
    code, result, _ = run_cli(["cache", "clear"], capsys)
    assert code == 0 and len(result["deleted"]) == 2 and list(folder.parent.iterdir()) == []
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith("deleted 0 decoded image files")


def test_cache_clear_refuses_a_negative_age(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(["cache", "clear", "--older-than", "-1"], capsys)
    assert code == 2 and "older_than must be zero or more days" in err


def test_a_decoded_file_that_cannot_be_marked_used_is_reused_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a cache shared read-only (another user's files): reuse must not depend on writing to it
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    files = write_images(tmp_path / "inputs", 4, (8, 6))
    load_files(files, 1, (6, 8), max_memory="0")
    (data,) = (tmp_path / "cache" / "folders").glob("files-*.u8")
    decoded_at = data.stat().st_mtime_ns

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "utime", refuse)
    again = load_files(files, 1, (6, 8), max_memory="0")
    assert again.file is not None and again.file.path == str(data)
    assert data.stat().st_mtime_ns == decoded_at  # not decoded again


def test_a_decoded_file_in_use_is_kept_by_clear_until_its_user_lets_go(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import pickle

    import torch

    from vaelab import training
    from vaelab.config import TrainConfig

    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "photos", 10, (8, 6), mode="RGB")
    config = TrainConfig(dataset=f"folder:{tmp_path / 'photos'}", max_memory="0", workers=0).validate()
    train_images, val_images = training.split_train_val(config, torch.device("cpu"))  # streamed from it
    (data,) = (tmp_path / "cache" / "folders").glob("folder-*.u8")
    copy = pickle.loads(pickle.dumps(train_images.file))  # as sent to a fork server's workers
    assert (copy.path, copy.shape) == (train_images.file.path, train_images.file.shape)
    code, result, _ = run_cli(["cache", "clear"], capsys)
    assert code == 0 and result["in_use"] == [str(data)] and result["deleted"] == [] and data.exists()
    assert main(["cache", "clear"]) == 0
    assert "kept 1 in use by a running job or session" in capsys.readouterr().out
    order = torch.arange(len(train_images))
    assert sum(len(b) for b in train_images.batches(order, 4, len(order), torch.device("cpu"))) == len(order)
    del train_images, val_images  # the originals let go; the copy, still here, holds nothing
    gc.collect()
    code, result, _ = run_cli(["cache", "clear"], capsys)
    assert code == 0 and result["deleted"] == [str(data)] and not data.exists()
    assert copy.path == str(data)


def test_images_kept_alone_keep_their_decoded_file_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    import vaelab

    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VAELAB_MAX_MEMORY", "0")  # streamed: the images are a map of the decoded file
    write_images(tmp_path / "photos", 10, (8, 6), mode="RGB")
    images, _ = vaelab.load_dataset(f"folder:{tmp_path / 'photos'}", split="train")  # no ImageSet kept
    (data,) = (tmp_path / "cache" / "folders").glob("folder-*.u8")
    first = images[:2]  # a view of the map
    del images
    gc.collect()
    code, result, _ = run_cli(["cache", "clear"], capsys)
    assert code == 0 and result["in_use"] == [str(data)] and data.exists()
    assert first.shape == (2, 3, 6, 8)
    del first
    gc.collect()
    code, result, _ = run_cli(["cache", "clear"], capsys)
    assert code == 0 and result["deleted"] == [str(data)] and not data.exists()


def test_without_file_locks_clear_keeps_what_the_system_will_not_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as on Windows: no flock; a file open elsewhere cannot be deleted (PermissionError)
    from vaelab.data import cache

    monkeypatch.setattr(cache, "fcntl", None)
    data = tmp_path / "folder-0.u8"
    data.write_bytes(b"\0" * 8)
    header = data.with_suffix(".json")
    header.write_text("{}")
    assert cache.Held(data)._file is None  # opens and locks nothing there
    real_unlink = Path.unlink

    def in_use(path: Path, missing_ok: bool = False) -> None:
        if path == data:
            raise PermissionError(13, "in use by another process", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", in_use)
    assert not cache.delete_unless_held(data, [header, data]) and data.exists()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert cache.delete_unless_held(data, [header, data]) and not data.exists() and not header.exists()
