"""`vaelab compress` / `decompress`: store images as their latent codes.

File layout (little-endian):
    8 bytes   magic b"VAELATNT"
    4 bytes   header length L (uint32)
    L bytes   header, UTF-8 JSON: format version, the model's weights hash (SHA-256 of
              model.safetensors), image shape [C, H, W], latent_dim, dtype ("float16" or "int8"),
              count, the file names (absent for dataset images, which are numbered), and for int8
              the per-dimension offset and scale
    N*D*b     the codes, row by row (b = 2 for float16, 1 for int8)
The header is shared by every image in the file; decoding with another model is refused.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter
from PIL import Image

from vaelab import latent
from vaelab.errors import VaelabError
from vaelab.evaluation import mean_squared_error, psnr
from vaelab.fileio import atomic_output
from vaelab.options import Choices, DataDir, Dataset, Device, Inputs, Out, Positional, Run, Split
from vaelab.plots import save_figure
from vaelab.runs import open_run, select_images, weights_hash

MAGIC = b"VAELATNT"
VERSION = 1
DTYPES = {"float16": np.float16, "int8": np.int8}
DECODE_DRAWS = 8  # pixelcnn decoders: images drawn (seed 0, so repeatable) to estimate each mean image
JPEG_QUALITIES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)


def quantize(codes: np.ndarray, dtype: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Codes [N, D] as float16, or as int8 with a per-dimension offset and scale (returned for the header)."""
    if dtype == "float16":
        return codes.astype(np.float16), {}
    low, high = codes.min(0), codes.max(0)
    scale = np.where(high > low, (high - low) / 255.0, 1.0).astype(np.float32)
    q = np.clip(np.rint((codes - low) / scale) - 128, -128, 127).astype(np.int8)
    return q, {"offset": low.astype(np.float32).tolist(), "scale": scale.tolist()}


def dequantize(values: np.ndarray, header: dict[str, Any]) -> np.ndarray:
    """The float32 codes [N, D] stored by quantize."""
    if header["dtype"] == "float16":
        return values.astype(np.float32)
    offset, scale = np.asarray(header["offset"], np.float32), np.asarray(header["scale"], np.float32)
    return (values.astype(np.float32) + 128) * scale + offset


def pack(header: dict[str, Any], values: np.ndarray) -> bytes:
    """The bytes of a compressed file."""
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return (
        MAGIC + struct.pack("<I", len(head)) + head + values.astype(values.dtype.newbyteorder("<")).tobytes()
    )


def unpack(data: bytes, source: str) -> tuple[dict[str, Any], np.ndarray]:
    """Header and codes of a compressed file; a damaged file is a VaelabError."""
    if data[:8] != MAGIC or len(data) < 12:
        raise VaelabError(f"{source} is not a vaelab compressed file")
    (length,) = struct.unpack("<I", data[8:12])
    try:
        header = json.loads(data[12 : 12 + length])
        dtype = np.dtype(DTYPES[header["dtype"]]).newbyteorder("<")
        count, dim = int(header["count"]), int(header["latent_dim"])
    except (ValueError, KeyError, TypeError):
        raise VaelabError(f"{source} has a damaged header; compress the images again") from None
    payload = data[12 + length :]
    if len(payload) != count * dim * dtype.itemsize:
        raise VaelabError(
            f"{source} is truncated or damaged: {len(payload)} bytes of codes where {count} images need "
            f"{count * dim * dtype.itemsize}"
        )
    return header, np.frombuffer(payload, dtype=dtype).reshape(count, dim)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding (Pillow, optimized) of one uint8 image [C, H, W]."""
    buffer = io.BytesIO()
    _pil(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[0]) if image.shape[0] == 1 else Image.fromarray(image.transpose(1, 2, 0))


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the PSNR (dB) between uint8 image stacks."""
    mse = mean_squared_error(torch.from_numpy(a) / 255.0, torch.from_numpy(b) / 255.0)
    return float(psnr(mse).mean())


def jpeg_curve(images: np.ndarray) -> list[dict[str, float]]:
    """Mean bytes per image and PSNR of Pillow's JPEG at several qualities (rate-distortion points)."""
    points = []
    for quality in JPEG_QUALITIES:
        sizes, decoded = [], []
        for image in images:
            buffer = io.BytesIO()
            _pil(image).save(buffer, format="JPEG", quality=quality)
            sizes.append(buffer.tell())
            back = np.asarray(
                Image.open(io.BytesIO(buffer.getvalue())).convert("L" if image.shape[0] == 1 else "RGB")
            )
            decoded.append(back[None] if image.shape[0] == 1 else back.transpose(2, 0, 1))
        points.append(
            {
                "quality": quality,
                "bytes_per_image": float(np.mean(sizes)),
                "psnr": psnr_db(images, np.stack(decoded)),
            }
        )
    return points


def compress(
    run: Run,
    inputs: Inputs = None,
    out: Annotated[Out, "compressed file to write"] = "images.vlz",
    dtype: Annotated[
        str, Choices(tuple(DTYPES)), "code precision: float16, or int8 with a per-dimension scale"
    ] = "float16",
    dataset: Dataset = None,
    data_dir: DataDir = None,
    split: Split = "test",
    report: Annotated[bool, "measure PSNR and compare with PNG and JPEG (a plot beside the file)"] = True,
    device: Device = "auto",
) -> dict[str, Any]:
    """Store each image as its latent code in one file; report size, ratio to PNG, PSNR, and JPEG
    at matching sizes (a table in the result and a rate-distortion plot beside the file)."""
    if dtype not in DTYPES:
        raise VaelabError(f"dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, inputs)
    codes = latent.embed_images(model, images.images).numpy()
    values, extra = quantize(codes, dtype)
    names = [Path(p).name for p in images.paths] if images.paths else None  # dataset images: numbered
    header = {
        "version": VERSION,
        "model_sha256": weights_hash(run),
        "shape": list(images.images.shape[1:]),
        "latent_dim": int(codes.shape[1]),
        "dtype": dtype,
        "count": len(codes),
        **({"names": names} if names else {}),
        **extra,
    }
    data = pack(header, values)
    out = Path(out)
    with atomic_output(out) as tmp:
        tmp.write_bytes(data)
    result: dict[str, Any] = {
        "out": str(out),
        "output": str(out),
        "n_images": len(codes),
        "file_bytes": len(data),
        "bytes_per_image": len(data) / len(codes),
        "code_bytes_per_image": values.nbytes / len(codes),
    }
    if report:
        result.update(_report(model, images.images, values, header, out))
    return result


def _report(
    model: Any, images: torch.Tensor, values: np.ndarray, header: dict[str, Any], out: Path
) -> dict[str, Any]:
    originals = images.numpy()
    restored = _decode(model, values, header)
    png_total = sum(len(png_bytes(image)) for image in originals)
    file_bytes = out.stat().st_size
    ours = {"bytes_per_image": file_bytes / len(originals), "psnr": psnr_db(originals, restored)}
    jpeg = jpeg_curve(originals)
    matching = min(jpeg, key=lambda p: abs(p["bytes_per_image"] - ours["bytes_per_image"]))
    plot = out.with_suffix(".rd.png")
    fig = Figure(figsize=(6.4, 4.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    ax.plot(
        [p["bytes_per_image"] for p in jpeg],
        [p["psnr"] for p in jpeg],
        "o-",
        color="tab:gray",
        label="JPEG (Pillow), quality 1-95",
    )
    ax.plot([ours["bytes_per_image"]], [ours["psnr"]], "*", markersize=14, color="tab:red",
            label=f"{model.config.model.upper()} latent, {header['dtype']}")  # fmt: skip
    ax.axvline(png_total / len(originals), color="tab:blue", linestyle=":", label="PNG (lossless)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("bytes per image (log scale)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, plot)
    return {
        "psnr": ours["psnr"],
        "png_bytes_per_image": png_total / len(originals),
        "ratio_vs_png": png_total / file_bytes,
        "jpeg": jpeg,
        "jpeg_at_matching_size": matching,
        "smallest_jpeg_bytes_per_image": min(p["bytes_per_image"] for p in jpeg),
        "rd_plot": str(plot),
    }


@torch.no_grad()
def _decode(model: Any, values: np.ndarray, header: dict[str, Any]) -> np.ndarray:
    """uint8 images [N, C, H, W] decoded from stored codes."""
    codes = torch.from_numpy(dequantize(values, header))
    return (
        (latent.decode_latents(model, codes, DECODE_DRAWS, seed=0) * 255)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        .numpy()
    )


def decompress(
    run: Annotated[Run, "run folder that compressed the file"],
    file: Annotated[str | Path, Positional("FILE"), "compressed file"],
    out: Annotated[Out, "folder for the PNGs"] = "decompressed",
    device: Device = "auto",
) -> dict[str, Any]:
    """Restore the PNGs of a compressed file into folder `out` (refusing another model's file)."""
    path = Path(file)
    if not path.is_file():
        raise VaelabError(f"{file} does not exist")
    header, values = unpack(path.read_bytes(), str(file))
    model, _ = open_run(run, device)
    if header.get("model_sha256") != weights_hash(run):
        raise VaelabError(
            f"{file} was compressed with another model; decompress it with the run that made it"
        )
    if list(header["shape"]) != [
        model.config.image_channels,
        model.config.image_height,
        model.config.image_width,
    ]:
        raise VaelabError(f"{file} holds images of shape {header['shape']}, not this model's")
    names = header.get("names") or [f"{i:05d}.png" for i in range(len(values))]
    out = Path(out)
    targets = [out / (Path(name).stem + ".png") for name in names]
    clashes = [str(t) for t in targets if t.exists()]
    if clashes:
        raise VaelabError(f"{clashes[0]} already exists; choose an empty output folder")
    images = _decode(model, values, header)
    for target, image in zip(targets, images):
        with atomic_output(target) as tmp:
            _pil(image).save(tmp, format="PNG")
    return {
        "out": str(out),
        "output": str(out),
        "n_images": len(images),
        "shape": header["shape"],
        "dtype": header["dtype"],
    }


def format_table(result: dict[str, Any]) -> str:
    """The compression report as lines for the terminal."""
    lines = [
        f"{result['n_images']} images -> {result['output']}: {result['file_bytes']} bytes, "
        f"{result['bytes_per_image']:.1f} bytes per image ({result['code_bytes_per_image']:.0f} for the code, "
        "the rest is the shared header)"
    ]
    if "psnr" in result:
        jpeg = result["jpeg_at_matching_size"]
        lines += [
            f"PSNR {result['psnr']:.2f} dB; {result['ratio_vs_png']:.1f}x smaller than PNG "
            f"({result['png_bytes_per_image']:.0f} bytes per image)",
            f"JPEG nearest in size: quality {jpeg['quality']}, {jpeg['bytes_per_image']:.0f} bytes, "
            f"{jpeg['psnr']:.2f} dB (JPEG's smallest: {result['smallest_jpeg_bytes_per_image']:.0f} bytes)",
            f"rate-distortion plot: {result['rd_plot']}",
        ]
    return "\n".join(lines)
