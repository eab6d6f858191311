from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import struct
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from torchvision import datasets

import vaelab
from conftest import run_cli, write_images
from vaelab.data import cache, resize_uint8
from vaelab.data.folder import load_folder
from vaelab.data.transforms import binarize_uint8, to_unit


def test_mnist_mini_splits_are_real_uint8_digits() -> None:
    train_x, train_y = vaelab.load_dataset("mnist-mini", "train")
    test_x, test_y = vaelab.load_dataset("mnist-mini", "test")
    assert train_x.shape == (8000, 1, 28, 28) and test_x.shape == (2000, 1, 28, 28)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert set(train_y.tolist()) == set(range(10)) == set(test_y.tolist())
    # MNIST digits: dark background, ~19% of pixels lit, full intensity range used.
    lit = (train_x > 0).float().mean().item()
    assert 0.15 < lit < 0.25
    assert train_x.max() == 255 and train_x[:, :, 0, :].max() < 50  # top row is (almost) empty


def test_unknown_dataset_names_the_choices() -> None:
    with pytest.raises(vaelab.VaelabError, match="unknown dataset 'mnst'.*mnist-mini"):
        vaelab.load_dataset("mnst")


def test_a_folder_given_as_a_dataset_name_gets_the_name_to_use(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(vaelab.VaelabError, match="'photos'; it is a folder: .* use folder:photos$"):
        vaelab.load_dataset("photos")
    with pytest.raises(vaelab.VaelabError, match="^folder: names no folder; give folder:PATH"):
        vaelab.load_dataset("folder:")  # not the working directory, searched to its depths


def test_image_size_resizes_any_dataset() -> None:
    images, _ = vaelab.load_dataset("mnist-mini", "test", image_size=32)
    assert images.shape == (2000, 1, 32, 32) and images.dtype == torch.uint8


def test_resize_keeps_a_constant_image_constant() -> None:
    images = torch.full((2, 3, 10, 14), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(images, 6), torch.full((2, 3, 6, 6), 77, dtype=torch.uint8))


def test_resize_in_chunks_gives_the_images_of_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.randint(
        0, 256, (7, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    whole = resize_uint8(images, 12)
    monkeypatch.setattr("vaelab.data.RESIZE_CHUNK_BYTES", 4 * 3 * 20 * 20 * 2)  # two images a chunk
    assert torch.equal(resize_uint8(images, 12), whole) and whole.float().std() > 10


def test_static_binarization_is_zero_or_255_and_keeps_the_mean() -> None:
    images = torch.full((200, 1, 28, 28), 64, dtype=torch.uint8)
    binary = binarize_uint8(images, torch.Generator().manual_seed(0))
    assert set(binary.unique().tolist()) == {0, 255}
    p, n = 64 / 255, binary.numel()
    assert abs(to_unit(binary).mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5


def test_folder_with_class_subfolders_gives_labels(tmp_path: Path) -> None:
    write_images(tmp_path / "cats", 6, (12, 10))
    write_images(tmp_path / "dogs", 4, (12, 10), seed=1)
    train = vaelab.load_images(f"folder:{tmp_path}", "train")
    test = vaelab.load_images(f"folder:{tmp_path}", "test")
    assert len(train) + len(test) == 10 and len(test) == 2
    assert train.images.shape[1:] == (1, 10, 12)  # grayscale PNGs -> 1 channel, H=10, W=12
    assert train.class_names == ["cats", "dogs"]
    assert sorted(train.labels.tolist() + test.labels.tolist()) == [0] * 6 + [1] * 4
    assert not set(train.paths) & set(test.paths)


def test_folder_rgb_and_pixels_survive(tmp_path: Path) -> None:
    write_images(tmp_path, 1, (5, 4), mode="RGB")
    write_images(tmp_path / "more", 4, (5, 4), mode="RGB", seed=3)
    images = vaelab.load_images(f"folder:{tmp_path}", "train")
    assert images.images.shape == (4, 3, 4, 5) and images.labels is None  # no class folders for all
    for image, path in zip(images.images, images.paths):
        assert torch.equal(image, torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1))


def test_folder_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    write_images(tmp_path, 3, (8, 8))
    write_images(tmp_path / "big", 3, (16, 12), seed=2)
    with pytest.raises(vaelab.VaelabError, match="different sizes.*image_size"):
        vaelab.load_images(f"folder:{tmp_path}")
    resized = vaelab.load_images(f"folder:{tmp_path}", image_size=10)
    assert resized.images.shape[1:] == (1, 10, 10)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "holds no images"),
        (lambda p: (p / "broken.png").write_bytes(b"not a png"), "cannot read image .*broken.png"),
    ],
)
def test_folder_bad_input_is_one_clear_error(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path)
    with pytest.raises(vaelab.VaelabError, match=message):
        vaelab.load_images(f"folder:{tmp_path}")


@pytest.mark.parametrize("streamed", [False, True])
def test_every_unreadable_image_is_named_in_one_error(tmp_path: Path, streamed: bool) -> None:
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    paths = write_images(folder, 8, (6, 6))
    (folder / "a_text.png").write_text("not a picture")
    (folder / "b_empty.jpg").write_bytes(b"")
    (folder / "c_cut.png").write_bytes(paths[0].read_bytes()[:60])  # a whole header, half the pixels
    memory = "1KB" if streamed else None
    with pytest.raises(vaelab.VaelabError) as error:
        load_folder(str(folder), "train", None, max_memory=memory, cache_dir=cache)
    message = str(error.value)
    # A folder bound for the cache has its headers read first, and nothing decoded while any is
    # unreadable: the PNG cut in its pixel data is named after decoding (see the next test).
    cut = 0 if streamed else 1
    assert message.startswith(f"{2 + cut} of 11 images cannot be read: ") and message.endswith(
        "; remove or replace them"
    )
    for name in ("a_text.png (not an image file", "b_empty.jpg (not an image file", "c_cut.png (")[: 2 + cut]:
        assert f"{folder / name}" in message
    assert not any(cache.glob("*.u8*"))  # nothing half-decoded left behind
    for i in range(3):
        (folder / f"d{i}.png").write_text("x")
    with pytest.raises(
        vaelab.VaelabError, match=rf"^{5 + cut} of 14 images cannot be read: .* and {2 + cut} more; remove"
    ):
        load_folder(str(folder), "train", None, max_memory=memory, cache_dir=cache)


def test_files_cut_short_are_all_named_after_decoding_a_streamed_folder(tmp_path: Path) -> None:
    # a JPEG or PNG cut in its pixel data passes the header pass and fails only when decoded
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    first, *_ = write_images(folder, 6, (32, 32), mode="RGB")
    (folder / "cut3.png").write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    noise = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    for name in ("cut1.jpg", "cut2.jpg"):
        (folder / name).write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(
        vaelab.VaelabError,
        match=r"^3 of 9 images cannot be read: .*cut1\.jpg \(image file is trunc.*cut3\.png",
    ):
        load_folder(str(folder), "train", None, max_memory="1KB", cache_dir=cache)
    assert not any(cache.glob("folder-*"))  # the partly decoded file is removed, no header written


@pytest.mark.parametrize("streamed", [False, True])
def test_mixed_sizes_are_counted_and_the_odd_ones_named(tmp_path: Path, streamed: bool) -> None:
    folder = tmp_path / "photos"
    write_images(folder / "most", 7, (8, 8))
    odd = write_images(folder / "wide", 2, (9, 8), seed=1)
    single = write_images(folder / "small", 1, (5, 5), seed=2)
    memory = "1KB" if streamed else None
    with pytest.raises(vaelab.VaelabError) as error:
        load_folder(str(folder), "train", None, max_memory=memory, cache_dir=tmp_path / "cache")
    assert str(error.value) == (
        f"images have different sizes (width x height): 7 are 8x8; 2 are 9x8 ({odd[0]}, {odd[1]}); "
        f"1 is 5x5 ({single[0]}); pass image_size N (--image-size) to resize them all to N x N"
    )


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(vaelab.VaelabError, match="not a directory"):
        vaelab.load_images(f"folder:{tmp_path / 'nope'}")


def _idx_bytes(array: np.ndarray) -> bytes:
    type_code = 0x08  # unsigned byte
    header = struct.pack(">I", (type_code << 8) | array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, prefix: str, n: int, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        name = f"{prefix}-{kind}-ubyte"
        data = _idx_bytes(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("layout", [".", "FashionMNIST/raw"])
def test_idx_files_from_data_dir(tmp_path: Path, compress: bool, layout: str) -> None:
    images, labels = _write_idx_set(tmp_path / layout, "t10k", 7, compress)
    x, y = vaelab.load_dataset("fashion-mnist", "test", data_dir=str(tmp_path))
    assert torch.equal(x[:, 0], torch.from_numpy(images)) and torch.equal(y, torch.from_numpy(labels).long())


def test_data_dir_without_files_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(vaelab.VaelabError, match="data_dir .* holds no train-images-idx3-ubyte"):
        vaelab.load_dataset("mnist", "train", data_dir=str(tmp_path))


def test_offline_download_fails_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets.KMNIST, "mirrors", ["http://127.0.0.1:9/"])  # discard port: refused
    with pytest.raises(vaelab.VaelabError) as error:
        vaelab.load_dataset("kmnist", "test")
    assert "--data-dir" in str(error.value) and "mnist-mini" in str(error.value)
    assert "\n" not in str(error.value)


def test_download_path_from_a_loopback_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "served"
    expected = {}
    for prefix, n in (("train", 5), ("t10k", 3)):
        expected[prefix] = _write_idx_set(served, prefix, n, compress=True)
    resources = [(p.name, hashlib.md5(p.read_bytes()).hexdigest()) for p in sorted(served.glob("*.gz"))]
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(datasets.KMNIST, "mirrors", [f"http://127.0.0.1:{server.server_address[1]}/"])
        monkeypatch.setattr(datasets.KMNIST, "resources", resources)
        x, y = vaelab.load_dataset("kmnist", "test")
    finally:
        server.shutdown()
    assert torch.equal(x[:, 0], torch.from_numpy(expected["t10k"][0]))
    assert torch.equal(y, torch.from_numpy(expected["t10k"][1]).long())


def test_a_system_dataset_folder_is_found_without_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vaelab.data import idx

    images, _ = _write_idx_set(tmp_path, "train", 4, compress=True)
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", [str(tmp_path)])
    monkeypatch.setattr(datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])  # must not be needed
    x, _ = vaelab.load_dataset("fashion-mnist", "train")
    assert torch.equal(x[:, 0], torch.from_numpy(images))


def test_shapes_and_folders_too_large_for_memory_are_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import run_cli

    monkeypatch.setattr("vaelab.data.imageset.available_memory", lambda: 2 * 10**9)
    with pytest.raises(vaelab.VaelabError, match=r"need 15.7 GB in memory, more than the 2.0 GB available"):
        vaelab.load_images("shapes", "train", image_size=512)
    code, _, err = run_cli(
        ["train", "-o", str(tmp_path / "run"), "--dataset", "shapes", "--image-size", "512"], capsys
    )
    assert code == 2 and "choose a smaller image_size" in err and not (tmp_path / "run").exists()


def test_16_bit_and_float_images_keep_their_whole_range(tmp_path: Path) -> None:
    # the same ramp stored as 8-bit, 16-bit and float32 pixels reads back as the same 8-bit image,
    # where Pillow's own conversion clips 16-bit to white and floats in [0, 1] to black
    ramp = np.linspace(0, 1, 12 * 9).reshape(9, 12)
    folder, cache = tmp_path / "scans", tmp_path / "cache"
    folder.mkdir()
    Image.fromarray(np.rint(ramp * 255).astype(np.uint8)).save(folder / "a8.png")
    Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)).save(folder / "b16.png")
    Image.fromarray(np.rint(ramp * 65535).astype(np.int32)).save(folder / "c32.tif")
    Image.fromarray(ramp.astype(np.float32)).save(folder / "d.tif")
    expected = torch.from_numpy(np.rint(ramp * 255).astype(np.uint8))
    for images in (
        vaelab.load_images(f"folder:{folder}", "train").images,  # decoded into memory
        load_folder(str(folder), "train", None, max_memory="1KB", cache_dir=cache).images,  # streamed
    ):
        assert images.shape == (len(images), 1, 9, 12)
        assert all((image[0].int() - expected.int()).abs().max() <= 1 for image in images)


def test_photos_are_turned_upright_as_their_exif_orientation_says(tmp_path: Path) -> None:
    # a phone stores an upright photo as a wide picture with orientation 6 ("turn 90 degrees
    # clockwise to show"): it reads as the tall picture a viewer shows, beside a tall one stored tall
    stored = np.arange(8 * 12, dtype=np.uint8).reshape(8, 12) * 2  # 12 wide, 8 high
    folder, cache = tmp_path / "phone", tmp_path / "cache"
    folder.mkdir()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(stored).save(folder / "a_sideways.png", exif=exif)
    for i in range(4):
        Image.fromarray(np.full((12, 8), 40 * i, np.uint8)).save(folder / f"b{i}_upright.png")
    memory = vaelab.load_images(f"folder:{folder}", "train")
    streamed = load_folder(str(folder), "train", None, max_memory="1KB", cache_dir=cache)
    for images in (memory, streamed):
        assert images.images.shape[1:] == (1, 12, 8)
        turned = [i for i, path in enumerate(images.paths) if "sideways" in str(path)]
        assert len(turned) == 1 and np.array_equal(images.images[turned[0], 0].numpy(), np.rot90(stored, -1))


@pytest.mark.parametrize("streamed", [False, True])
def test_photos_with_exif_that_cannot_be_parsed_are_read_as_stored(tmp_path: Path, streamed: bool) -> None:
    # Pillow raises SyntaxError ("not a TIFF file") for such EXIF: it was a traceback
    folder = tmp_path / "photos"
    write_images(folder, 4, (6, 4), mode="RGB")
    stored = np.random.default_rng(1).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    Image.fromarray(stored).save(folder / "bad.png", exif=b"Exif\x00\x00not a TIFF header")
    Image.fromarray(stored).save(folder / "bad.jpg", exif=b"Exif\x00\x00not a TIFF header", quality=100)
    memory = "1KB" if streamed else None
    images = {"test": load_folder(str(folder), "test", None, memory, tmp_path / "cache")}
    images["train"] = load_folder(str(folder), "train", None, memory, tmp_path / "cache")
    read = {Path(p).name: image for split in images.values() for p, image in zip(split.paths, split.images)}
    assert read["bad.png"].shape == (3, 4, 6) and read["bad.jpg"].shape == (3, 4, 6)  # not turned
    assert np.array_equal(read["bad.png"].permute(1, 2, 0).numpy(), stored)


def test_the_header_pass_of_a_big_folder_finds_png_orientation_without_decoding_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow decodes a whole PNG to look for EXIF after its image data: the pass over the headers
    # of a folder bound for the cache decoded every PNG once more than it needs to.
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    folder = tmp_path / "phone"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(folder / "a_sideways.png", exif=exif)
    # move its eXIf chunk after the image data, where some writers place it
    data, chunks, at = (folder / "a_sideways.png").read_bytes(), [], 8
    while at < len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        chunks.append(data[at : at + 12 + length])
        at += 12 + length
    assert [c[4:8] for c in chunks] == [b"IHDR", b"eXIf", b"IDAT", b"IEND"]
    (folder / "a_sideways.png").write_bytes(data[:8] + chunks[0] + chunks[2] + chunks[1] + chunks[3])
    Image.fromarray(np.zeros((12, 8), np.uint8)).save(folder / "b_upright.png")
    with Image.open(folder / "a_sideways.png") as image:  # Pillow itself finds it after the data
        assert image.getexif().get(ExifTags.Base.Orientation) == 6

    def no_decoding(self: object) -> None:
        raise AssertionError("decoded pixels to read a header")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    files = sorted(folder.iterdir())
    assert cache.layout(files, None) == (1, 12, 8)  # both upright: 8 wide, 12 high
    assert cache.layout(files, 16) == (1, 16, 16)


def test_transparent_pixels_read_as_black_whatever_colour_they_hide(tmp_path: Path) -> None:
    # an editor keeps the colour under erased pixels: Pillow's own conversion would show it
    folder, cache = tmp_path / "sprites", tmp_path / "cache"
    folder.mkdir()
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, hidden where alpha is 0
    rgba[:, :4, :3] = (200, 100, 40)
    rgba[:, :4, 3] = 255  # an opaque orange left half
    rgba[:, 4:6, 3] = 128  # half-transparent white: half grey over black
    Image.fromarray(rgba).save(folder / "a_rgba.png")
    palette = Image.fromarray(np.array([[0, 1] * 4] * 6, np.uint8), "P")
    palette.putpalette([200, 100, 40, 255, 255, 255])
    palette.save(folder / "b_palette.png", transparency=1)  # index 1 (white) is transparent
    expected = np.zeros((6, 8, 3), np.int32)
    expected[:, :4] = (200, 100, 40)
    expected[:, 4:6] = 128
    for memory in (True, False):
        read = {}
        for split in ("train", "test"):
            if memory:
                images = vaelab.load_images(f"folder:{folder}", split)
            else:
                images = load_folder(str(folder), split, None, max_memory="1KB", cache_dir=cache)
            read |= {
                Path(path).name: image.permute(1, 2, 0).int().numpy()
                for path, image in zip(images.paths, images.images)
            }
        assert sorted(read) == ["a_rgba.png", "b_palette.png"] and read["a_rgba.png"].shape == (6, 8, 3)
        assert np.abs(read["a_rgba.png"] - expected).max() <= 1
        stripes = read["b_palette.png"]
        assert (stripes[:, 0::2] == (200, 100, 40)).all() and (stripes[:, 1::2] == 0).all()


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (
            np.full((6, 6), 1.5, np.float32),
            r"d.tif holds floating-point pixels, read as 0 to 1, .* from 1.5 to 1.5",
        ),
        (np.full((6, 6), np.nan, np.float32), r"d.tif holds NaN or infinite pixels; replace them"),
        (np.full((6, 6), 70_000, np.int32), r"d.tif holds integer pixels, read as 0 to 65535, .* 70000"),
    ],
)
def test_pixels_outside_their_types_range_are_one_line(tmp_path: Path, capsys, pixels, message: str) -> None:
    Image.fromarray(pixels).save(tmp_path / "d.tif")
    with pytest.raises(vaelab.VaelabError, match=message):
        vaelab.load_images(f"folder:{tmp_path}")
    code, _, err = run_cli(
        ["train", "--dataset", f"folder:{tmp_path}", "--out", str(tmp_path / "run")], capsys
    )
    assert code == 2 and "save it as an 8-bit image" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_folder_of_grey_and_colour_images_is_read_as_colour_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_images(tmp_path / "mixed", 3, (8, 8), mode="L")
    Image.fromarray(np.full((8, 8, 3), (200, 10, 10), dtype=np.uint8)).save(tmp_path / "mixed" / "red.png")
    with caplog.at_level("WARNING"):
        images = vaelab.load_images(f"folder:{tmp_path / 'mixed'}", "train").images
    assert images.shape[1] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "3 of 4 images are grayscale and the rest colour: all are read as RGB (grey as equal R, G, B)"
    ]
    assert vaelab.load_images(f"folder:{tmp_path / 'mixed'}", "test").images.shape[1] == 3  # both splits


def test_files_are_decoded_by_several_threads_in_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_images(tmp_path, 40, (12, 10), mode="RGB")
    for broken in (files[3], files[31]):
        broken.write_bytes(b"not an image")
    monkeypatch.setattr(cache, "MAX_DECODE_THREADS", 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(4)), raising=False)
    assert cache.decode_threads() == 4
    results = list(cache.decoded(files, "RGB", (8, 8)))
    assert [file for file, _ in results] == files
    for file, result in results:
        if file in (files[3], files[31]):
            assert isinstance(result, UnidentifiedImageError)
        else:
            pixels, grey, resized = result
            assert np.array_equal(pixels, cache.decode(file, "RGB", (8, 8))[0]) and resized and not grey
    stopped = cache.decoded(files, "RGB", None)
    next(stopped)
    stopped.close()  # a caller that stops early (a file of another size): the threads end with it
    assert not [t for t in threading.enumerate() if t.name.startswith("vaelab-decode")]


def test_decoding_threads_are_the_cores_shared_among_this_machines_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(12)), raising=False)
    assert cache.decode_threads() == cache.MAX_DECODE_THREADS == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's processes on this machine
    assert cache.decode_threads() == 3
    assert cache.decode_threads(shared=False) == 8  # one decodes into the cache, the others wait
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "24")
    assert cache.decode_threads() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "many")
    assert cache.decode_threads() == 8


def _make_room_in_the_interned_strings() -> None:
    """Grow Python's table of interned strings now, so that it does not grow in a measured window.

    pathlib interns every part of every path it parses, in one table for the whole process that is
    reallocated at about twice its size when full. After a few hundred tests that table is
    megabytes, and its reallocation inside a window is an allocation of the whole table (7.7 MB,
    seen in a full-suite run), unrelated to the code measured. Interning new strings until the
    table has been reallocated once leaves it room for about as many entries again as it holds.
    """
    import sys
    import tracemalloc

    tracemalloc.start()
    try:
        kept: list[str | None] = [None] * 2_000_000
        for i in range(len(kept)):
            before = tracemalloc.get_traced_memory()[0]
            kept[i] = sys.intern(f"room {i} {id(kept)}")
            if tracemalloc.get_traced_memory()[0] - before > 100_000:  # the table, not one more string
                return
    finally:
        tracemalloc.stop()
    raise AssertionError("the table of interned strings did not grow")


@pytest.mark.parametrize(
    ("mode", "late_colour", "channels"), [("RGB", False, 3), ("grey in RGB", False, 1), ("L", True, 3)]
)
def test_a_folder_in_memory_takes_about_the_memory_of_its_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, late_colour: bool, channels: int
) -> None:
    # Decoding each image into a list, stacking the list and then taking one split out of the
    # whole folder peaked at over 3x the folder's decoded size: a 368 MB folder killed `vaelab
    # train` under a 1.2 GB memory limit. Now each split is written into one array as it is read.
    import tracemalloc

    rng = np.random.default_rng(0)
    for i in range(150):
        pixels = rng.integers(0, 256, (96, 96, 3) if mode == "RGB" else (96, 96), dtype=np.uint8)
        if mode == "grey in RGB":
            pixels = np.repeat(pixels[..., None], 3, axis=2)  # colour files holding grey: 1 channel
        Image.fromarray(pixels).save(tmp_path / f"img{i:03d}.png")
    if late_colour:  # the last file read is the folder's only colour one: all of it turns RGB
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(tmp_path / "z.png")
    _make_room_in_the_interned_strings()
    monkeypatch.setattr(cache, "MAX_DECODE_THREADS", 2)  # the same files in hand on any machine
    ahead = cache.DECODE_AHEAD * cache.decode_threads() * 96 * 96 * 3  # decoded, not yet in the result
    for split in ("test", "train"):
        tracemalloc.start()
        images = load_folder(str(tmp_path), split, None).images
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert images.shape[1:] == (channels, 96, 96)
        # the result, plus 1/3 of it where a colour image comes last, the files decoded ahead (each
        # also once more as Pillow hands it over) and the listing's objects
        bound = (1.4 if late_colour else 1.1) * images.numel() + 2 * ahead + 500_000
        assert peak < bound, (split, peak, images.numel())
        for image, path in zip(images, load_folder(str(tmp_path), split, None).paths):
            with Image.open(path) as file:
                expected = np.asarray(file.convert("RGB" if channels == 3 else "L"))
            assert np.array_equal(image.permute(1, 2, 0).numpy(), expected.reshape(96, 96, channels))


def test_a_folder_over_the_memory_budget_is_decoded_once_into_a_memory_mapped_file(tmp_path: Path) -> None:
    folder, cache = tmp_path / "photos", tmp_path / "cache"
    write_images(folder / "a", 6, (10, 8), mode="RGB")
    write_images(folder / "b", 4, (10, 8), mode="RGB", seed=1)
    for split in ("train", "test"):
        memory = vaelab.load_images(f"folder:{folder}", split)
        disk = load_folder(str(folder), split, None, max_memory="1KB", cache_dir=cache)
        assert memory.file is None and disk.file is not None
        # the same images, labels and paths in the same order, read from the file
        assert torch.equal(disk.images, memory.images) and torch.equal(disk.labels, memory.labels)
        assert disk.paths == memory.paths
    (data,) = cache.glob("folder-*.u8")
    assert data.stat().st_size == 10 * 3 * 8 * 10  # every image once, uint8, test rows then train rows
    decoded_at = data.stat().st_mtime_ns
    load_folder(str(folder), "train", None, max_memory="1KB", cache_dir=cache)
    assert data.stat().st_mtime_ns == decoded_at and len(list(cache.glob("folder-*.u8"))) == 1  # reused
    data.with_suffix(".json").write_text('{"shape": [1')  # a damaged header: decoded again, not a crash
    again = load_folder(str(folder), "train", None, max_memory="1KB", cache_dir=cache)
    assert data.stat().st_mtime_ns != decoded_at
    assert torch.equal(again.images, vaelab.load_images(f"folder:{folder}", "train").images)
    write_images(folder / "b", 1, (10, 8), mode="RGB", seed=5)  # one file changes: decoded again
    changed = load_folder(str(folder), "train", None, max_memory="1KB", cache_dir=cache)
    assert len(list(cache.glob("folder-*.u8"))) == 2
    assert torch.equal(changed.images, vaelab.load_images(f"folder:{folder}", "train").images)
    # under the budget the folder is decoded into memory as before
    assert load_folder(str(folder), "train", None, max_memory="1GB", cache_dir=cache).file is None


def _write_grey_in_rgb(folder: Path, count: int, shape: tuple[int, int]) -> Path:
    """`count` RGB PNG files of random grey pixels ([height, width] `shape`) in `folder`."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        grey = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(folder / f"{i}.png")
    return folder


def test_colour_files_of_grey_pixels_are_one_channel_in_memory_and_in_the_decoded_file(
    tmp_path: Path,
) -> None:
    # Scans and digits saved as RGB: read into memory they were 1 channel, decoded into the
    # cache 3, so a run trained under --max-memory failed in every command that read its folder
    # into memory (and the other way round).
    folder, cache = _write_grey_in_rgb(tmp_path / "scans", 10, (8, 10)), tmp_path / "cache"
    for split in ("train", "test"):
        memory = load_folder(str(folder), split, None)
        disk = load_folder(str(folder), split, None, max_memory="1KB", cache_dir=cache)
        assert memory.file is None and disk.file is not None
        assert memory.image_shape == disk.image_shape == disk.file.shape[1:] == (1, 8, 10)
        assert torch.equal(disk.images, memory.images)
    (data,) = cache.glob("folder-*.u8")
    assert data.stat().st_size == 10 * 8 * 10 and not list(cache.glob(".*"))  # one channel, no scraps
    decoded_at = data.stat().st_mtime_ns
    load_folder(str(folder), "train", None, max_memory="1KB", cache_dir=cache)
    assert data.stat().st_mtime_ns == decoded_at  # the one-channel file is reused
    Image.fromarray(np.full((8, 10, 3), (200, 10, 10), np.uint8)).save(folder / "red.png")  # one colour
    colour = load_folder(str(folder), "train", None, max_memory="1KB", cache_dir=cache)
    assert colour.image_shape == load_folder(str(folder), "train", None).image_shape == (3, 8, 10)


def test_a_run_trained_under_a_memory_budget_reads_its_grey_folder_in_any_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, run = _write_grey_in_rgb(tmp_path / "scans", 20, (12, 12)), tmp_path / "run"
    code, _, err = run_cli(["train", "--dataset", f"folder:{folder}", "--max-memory", "1KB", "--arch", "mlp",
                            "--epochs", "1", "--out", str(run)], capsys)  # fmt: skip
    assert code == 0, err
    code, result, err = run_cli(["embed", str(run), "-o", str(tmp_path / "codes.npy")], capsys)
    assert code == 0 and result["n_images"] == 4, err  # read into memory with the default budget
    # grey images given to a colour model are read as equal R, G and B
    colour, colour_run = tmp_path / "colour", tmp_path / "colour-run"
    write_images(colour, 20, (12, 12), mode="RGB")
    code, _, err = run_cli(["train", "--dataset", f"folder:{colour}", "--arch", "mlp", "--epochs", "1",
                            "--out", str(colour_run)], capsys)  # fmt: skip
    assert code == 0, err
    for command in (["embed", "-o", str(tmp_path / "grey.npy")], ["evaluate", "--k", "2"]):
        code, result, err = run_cli([command[0], str(colour_run), *command[1:], "--dataset", f"folder:{folder}"],
                                    capsys)  # fmt: skip
        assert code == 0, err
    model = vaelab.load(colour_run)
    grey = load_folder(str(folder), "test", None).images
    expected = model.encode(grey.expand(-1, 3, -1, -1).float() / 255)[0].detach().numpy()
    assert np.allclose(np.load(tmp_path / "grey.npy"), expected, atol=1e-5)


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_memory_limit_of_the_cgroup_bounds_the_default_budget(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A container, a Kubernetes pod or a Slurm job runs under a cgroup memory limit far below the
    # machine's free memory: the default budget is half of what is left under the tightest limit
    # on the way up, with the file cache (which the kernel drops first) counted as free.
    from vaelab.data import imageset

    gb = 10**9
    root, membership = tmp_path / "cgroup", tmp_path / "membership"
    monkeypatch.setattr(imageset, "CGROUP_ROOT", root)
    monkeypatch.setattr(imageset, "CGROUP_MEMBERSHIP", membership)
    monkeypatch.setattr(imageset, "_machine_available", lambda: 100 * gb)
    # cgroup v2: the job's cgroup has no limit of its own, its parent has 8 GB, 5 GB used of which
    # 1 GB is inactive file cache: 4 GB left
    membership.write_text("0::/jobs/job1/step0\n")
    _write(root / "jobs", {"memory.max": str(8 * gb), "memory.current": str(5 * gb),
                           "memory.stat": f"anon 4\ninactive_file {gb}\nactive_file 7\n"})  # fmt: skip
    _write(root / "jobs/job1/step0", {"memory.max": "max", "memory.current": str(gb)})
    assert imageset.cgroup_headroom() == 4 * gb
    assert imageset.available_memory() == 4 * gb and imageset.memory_budget(None) == 2 * gb
    _write(root / "jobs/job1", {"memory.max": str(3 * gb), "memory.current": str(2 * gb)})
    assert imageset.available_memory() == gb  # the tighter limit in between
    assert imageset.memory_budget("6GB") == 6 * gb  # as given
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's 4 processes on this machine share it
    assert imageset.memory_budget(None) == gb // 8 and imageset.memory_budget("6GB") == 6 * gb
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    # cgroup v1 (memory controller mounted on its own), "no limit" written as a huge number
    membership.write_text("12:pids:/x\n7:memory:/slurm/uid_0/job_5\n0::/\n")
    _write(root / "memory/slurm/uid_0/job_5", {"memory.limit_in_bytes": str(6 * gb),
           "memory.usage_in_bytes": str(2 * gb), "memory.stat": f"cache 9\ntotal_inactive_file {gb}\n"})  # fmt: skip
    _write(root / "memory", {"memory.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": "1"})
    assert imageset.available_memory() == 5 * gb
    # inside a container the own cgroup is the root of the mount, whatever the path says
    membership.write_text("0::/kubepods/pod7/abc\n")
    _write(root, {"memory.max": str(2 * gb), "memory.current": str(gb // 2)})
    assert imageset.available_memory() == 3 * gb // 2
    # no limit anywhere, or no cgroups at all: the machine's free memory
    (root / "memory.max").write_text("max")
    assert imageset.cgroup_headroom() is None and imageset.available_memory() == 100 * gb
    membership.unlink()
    assert imageset.available_memory() == 100 * gb

    # a folder that fits the machine's memory but not the limit's half is streamed by default
    folder = tmp_path / "photos"
    write_images(folder, 12, size=(16, 16), mode="RGB")  # 9,216 bytes decoded
    membership.write_text("0::/\n")
    assert load_folder(str(folder), "train", None, cache_dir=tmp_path / "cache").file is None
    _write(root, {"memory.max": "16000", "memory.current": "0"})
    streamed = load_folder(str(folder), "train", None, cache_dir=tmp_path / "cache")
    assert streamed.file is not None and streamed.images.shape == (10, 3, 16, 16)


@pytest.mark.skipif(
    not os.access("/sys/fs/cgroup/memory", os.W_OK) or not Path("/proc/self/cgroup").exists(),
    reason="needs a writable cgroup v1 memory hierarchy (root on Linux)",
)
def test_a_process_under_a_real_memory_limit_sees_it(tmp_path: Path) -> None:
    group = Path("/sys/fs/cgroup/memory") / f"vaelab-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(3 * 10**9))
        code = "from vaelab.data.imageset import memory_budget; print(memory_budget(None))"
        enter = f"echo $$ > {group}/cgroup.procs && exec {sys.executable} -c '{code}'"
        budget = int(subprocess.run(["sh", "-c", enter], capture_output=True, text=True, check=True).stdout)
    finally:
        group.rmdir()
    assert 0.5 * 10**9 < budget <= 1.5 * 10**9  # half of the 3 GB less what Python and torch take


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the process's memory in /proc")
def test_streamed_batches_are_read_without_mapping_the_decoded_file(tmp_path: Path) -> None:
    # Mapped pages count to the process that maps them, and were mapped far around each row read
    # (read-ahead, large page-cache folios): the reading workers of a folder larger than a job's
    # memory limit filled it and were killed. Read rows leave only clean page cache behind.
    from vaelab.data.stream import ImageFile, _Rows

    shape = (6000, 3, 32, 32)  # 18 MB
    data = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data.tofile(tmp_path / "images.u8")
    rows = _Rows(ImageFile(str(tmp_path / "images.u8"), shape))

    def mapped_kb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(status.split("RssFile:")[1].split()[0])

    assert torch.equal(rows.__getitems__([5, 3]), torch.from_numpy(data[[5, 3]]))  # warm up the code paths
    before = mapped_kb()
    order = np.random.default_rng(1).permutation(len(data))
    for start in range(0, len(data), 200):
        batch = order[start : start + 200].tolist()
        assert torch.equal(rows.__getitems__(batch), torch.from_numpy(data[batch]))
    assert mapped_kb() - before < 4_000  # a memory map would hold all 18,000 KB read


def test_memory_sizes_parse_and_a_bad_one_is_one_clear_error() -> None:
    from vaelab.data.imageset import parse_bytes

    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("500 mb") == 5 * 10**8
    assert parse_bytes("2GiB") == 2**31 and parse_bytes("0") == 0 and parse_bytes("1234") == 1234
    with pytest.raises(vaelab.VaelabError, match="not a size; write e.g. 8GB"):
        parse_bytes("lots")
