"""`vaelab compress` / `decompress`: store images as their latent codes.

By default the codes are entropy-coded (vaelab.codec): rotated onto the principal axes of the
run's training codes, quantized with one step, and coded under a prior learned from the training
codes, so each image costs the bits its code carries. `--dtype int8` and `float16` store fixed-size
codes instead.

File layout (version 2, little-endian; every byte counts, so the header is binary):
    4 bytes   magic b"VLZ2"
    4 bytes   CRC-32 of everything after these 8 bytes (a damaged file is refused)
    8 bytes   the first 8 bytes of the SHA-256 of the run's model.safetensors
    1 byte    codes: 0 float16, 1 int8, 2 entropy
    5 bytes   image shape: channels (uint8), height, width (uint16)
    varint    image count N;  varint latent size D
    varint    L, then L bytes: the file names (L = 0: none, the images are numbered on output),
              front-coded and raw DEFLATE, or, when the first byte is 0x07, one numbered run:
              varint first number, varint digits, prefix, NUL, suffix (UTF-8)
    codes     float16: nothing more;  int8: D offsets, D scales (float32);
              entropy: the step (float32) and the CRC-32 of the run's prior (uint32)
    payload   the codes: N*D float16 or int8 values, or the entropy-coded stream
Version 1 files (magic b"VAELATNT", a JSON header) still decompress.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from vaelab import codec, latent, plots
from vaelab.data.transforms import from_unit
from vaelab.errors import VaelabError
from vaelab.evaluation import mean_squared_error, psnr, structural_similarity
from vaelab.fileio import atomic_output
from vaelab.options import Choices, DataDir, Dataset, Device, Inputs, Out, Positional, Run, Split
from vaelab.plots import figure, save_figure
from vaelab.runs import open_run, select_images, weights_hash

MAGIC, MAGIC_V1 = b"VLZ2", b"VAELATNT"
DTYPES = ("entropy", "int8", "float16")
DECODE_DRAWS = 8  # pixelcnn decoders: images drawn (seed 0, so repeatable) to estimate each mean image
DEFAULT_STEP = (
    0.25  # quantization step of the entropy coder, in units of the codes' spread (LatentPrior.scale)
)
RD_STEPS = (0.125, 0.25, 0.4, 0.45, 0.5, 0.75, 1.0, 1.5, 2.0)  # the rate-distortion curve's steps
JPEG_QUALITIES = (1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (0, 1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
# JPEG and WebP are scored on at most this many of the images, evenly spread: on the 2,000 test
# digits 500 gave every quality's bytes within 1% and PSNR within 0.06 dB of all 2,000, in 5.7 s
# instead of 23 (docs/benchmarks.md)
CODEC_IMAGES = 500


@dataclass
class Header:
    """What a compressed file says about its codes."""

    model: bytes  # first 8 bytes of the weights' SHA-256
    dtype: str
    shape: tuple[int, int, int]
    count: int
    latent_dim: int
    names: list[str] | None = None
    step: float = 0.0  # entropy
    prior: int = 0  # entropy: CRC-32 of the prior
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # int8
    scale: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # int8


def quantize(codes: np.ndarray, dtype: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Codes [N, D] as float16, or as int8 with a per-dimension offset and scale (returned for the header)."""
    if dtype == "float16":
        return codes.astype(np.float16), {}
    low, high = codes.min(0), codes.max(0)
    scale = np.where(high > low, (high - low) / 255.0, 1.0).astype(np.float32)
    q = np.clip(np.rint((codes - low) / scale) - 128, -128, 127).astype(np.int8)
    return q, {"offset": low.astype(np.float32), "scale": scale}


def dequantize(values: np.ndarray, header: dict[str, Any]) -> np.ndarray:
    """The float32 codes [N, D] stored by quantize."""
    if header["dtype"] == "float16":
        return values.astype(np.float32)
    offset, scale = np.asarray(header["offset"], np.float32), np.asarray(header["scale"], np.float32)
    return (values.astype(np.float32) + 128) * scale + offset


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    """Reads the fields of a header; running past the end is a damaged file."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("header runs past the end")
        self.at += n
        return self.data[self.at - n : self.at]

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            (byte,) = self.take(1)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80 or shift > 56:
                return value
            shift += 7


NUMBERED = 0x07  # first byte of a numbered-names table: a raw DEFLATE stream never starts so (BTYPE 11)


def pack_names(names: list[str]) -> bytes:
    """The file names: a numbered run (prefix, first number, digits, suffix: e.g. digit_0000.png to
    digit_0063.png in 13 bytes) when the names are one, else front-coded (each as the length of
    the prefix it shares with the one before, then the rest, NUL-terminated) and deflated, which
    costs about a byte a name for numbered names with gaps."""
    coded, before = bytearray(), b""
    for name in names:
        raw = name.encode()
        common = next((i for i, (a, b) in enumerate(zip(before, raw)) if a != b), min(len(before), len(raw)))
        shared = min(255, common)
        coded += bytes([shared]) + raw[shared:] + b"\0"
        before = raw
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    front_coded = packer.compress(bytes(coded)) + packer.flush()
    run = _numbered_run(names)
    return run if run is not None and len(run) < len(front_coded) else front_coded


def _numbered_run(names: list[str]) -> bytes | None:
    """The names as one run of consecutive numbers between a fixed prefix and suffix, or None."""
    match = re.fullmatch(r"(.*\D|)(\d+)(\D*)", names[0], re.DOTALL)
    if match is None or "\0" in names[0]:
        return None
    prefix, digits, suffix = match.groups()
    start, width = int(digits), len(digits)
    if any(name != f"{prefix}{start + i:0{width}d}{suffix}" for i, name in enumerate(names)):
        return None
    return bytes([NUMBERED]) + _varint(start) + _varint(width) + prefix.encode() + b"\0" + suffix.encode()


def unpack_names(data: bytes, count: int) -> list[str]:
    """The `count` names written by pack_names."""
    if data[:1] == bytes([NUMBERED]):
        reader = _Reader(data[1:])
        start, width = reader.varint(), reader.varint()
        prefix, _, suffix = data[1 + reader.at :].decode().partition("\0")
        return [f"{prefix}{start + i:0{width}d}{suffix}" for i in range(count)]
    coded, names, before, at = zlib.decompress(data, -15), [], b"", 0
    while at < len(coded):
        end = coded.index(b"\0", at + 1)
        before = before[: coded[at]] + coded[at + 1 : end]
        names.append(before.decode())
        at = end + 1
    return names


def pack(header: Header, payload: bytes) -> bytes:
    """The bytes of a compressed file."""
    names = pack_names(header.names) if header.names else b""
    body = bytearray(header.model[:8])
    body += struct.pack("<BBHH", DTYPES.index(header.dtype), *header.shape)
    body += _varint(header.count) + _varint(header.latent_dim) + _varint(len(names)) + names
    if header.dtype == "int8":
        body += header.offset.astype("<f4").tobytes() + header.scale.astype("<f4").tobytes()
    elif header.dtype == "entropy":
        body += struct.pack("<fI", header.step, header.prior)
    body += payload
    return MAGIC + struct.pack("<I", zlib.crc32(body)) + bytes(body)


def unpack(data: bytes, source: str) -> tuple[Header, bytes]:
    """Header and payload of a compressed file; a damaged file is a VaelabError."""
    if data[:8] == MAGIC_V1:
        return _unpack_v1(data, source)
    if data[:4] != MAGIC or len(data) < 8:
        raise VaelabError(f"{source} is not a vaelab compressed file")
    body = data[8:]
    if struct.unpack("<I", data[4:8])[0] != zlib.crc32(body):
        raise VaelabError(
            f"{source} is truncated or damaged (its checksum does not match); compress the images again"
        )
    try:
        reader = _Reader(body)
        model = reader.take(8)
        kind, channels, height, width = reader.unpack("<BBHH")
        header = Header(model, DTYPES[kind], (channels, height, width), reader.varint(), reader.varint())
        names = reader.take(reader.varint())
        if names:
            header.names = unpack_names(names, header.count)
        if header.dtype == "int8":
            header.offset = np.frombuffer(reader.take(4 * header.latent_dim), "<f4").astype(np.float32)
            header.scale = np.frombuffer(reader.take(4 * header.latent_dim), "<f4").astype(np.float32)
        elif header.dtype == "entropy":
            header.step, header.prior = reader.unpack("<fI")
    except (ValueError, IndexError, zlib.error, UnicodeDecodeError):
        raise VaelabError(f"{source} has a damaged header; compress the images again") from None
    return header, body[reader.at :]


def _unpack_v1(data: bytes, source: str) -> tuple[Header, bytes]:
    (length,) = struct.unpack("<I", data[8:12]) if len(data) >= 12 else (0,)
    try:
        saved = json.loads(data[12 : 12 + length])
        header = Header(bytes.fromhex(saved["model_sha256"])[:8], saved["dtype"], tuple(saved["shape"]),
                        int(saved["count"]), int(saved["latent_dim"]), saved.get("names"))  # fmt: skip
        if header.dtype == "int8":
            header.offset = np.asarray(saved["offset"], np.float32)
            header.scale = np.asarray(saved["scale"], np.float32)
    except (ValueError, KeyError, TypeError):
        raise VaelabError(f"{source} has a damaged header; compress the images again") from None
    return header, data[12 + length :]


def _values(header: Header, payload: bytes, source: str) -> np.ndarray:
    """The fixed-size codes [N, D] of a float16 or int8 payload."""
    dtype = np.dtype(np.float16 if header.dtype == "float16" else np.int8).newbyteorder("<")
    if len(payload) != header.count * header.latent_dim * dtype.itemsize:
        raise VaelabError(
            f"{source} is truncated or damaged: {len(payload)} bytes of codes where {header.count} images "
            f"need {header.count * header.latent_dim * dtype.itemsize}"
        )
    return np.frombuffer(payload, dtype=dtype).reshape(header.count, header.latent_dim)


def run_prior(run: Run, model: Any, config: Any) -> codec.LatentPrior:
    """The run's entropy prior, fitted on its training split's codes the first time and kept in
    the run folder (fitted again when the weights change)."""
    path, digest = Path(run) / codec.PRIOR_FILE, weights_hash(run)
    if path.is_file():
        try:
            with safe_open(str(path), "numpy") as saved:
                fitted_for = (saved.metadata() or {}).get("model_sha256")
        except (SafetensorError, OSError):
            fitted_for = None  # a damaged file is fitted again and replaced
        if fitted_for == digest:
            return codec.load_prior(path)
    training = select_images(model, config, None, None, "train", None)
    prior = codec.fit_prior(latent.embed_images(model, training.images).numpy())
    codec.save_prior(prior, path, {"model_sha256": digest})
    return prior


def encode_codes(
    codes: np.ndarray, dtype: str, prior: codec.LatentPrior | None, step: float
) -> tuple[dict[str, Any], bytes]:
    """Header fields and payload for codes [N, D]: `step` is in the prior's units (a quarter
    of the training codes' range, LatentPrior.scale)."""
    if dtype == "entropy":
        assert prior is not None
        absolute = float(np.float32(step * prior.scale))  # as the header stores it
        symbols = codec.quantize(prior, codes, absolute)
        return {"step": absolute, "prior": prior.checksum()}, codec.encode(prior, symbols, absolute)
    values, extra = quantize(codes, dtype)
    return extra, values.astype(values.dtype.newbyteorder("<")).tobytes()


def decode_codes(header: Header, payload: bytes, prior: codec.LatentPrior | None, source: str) -> np.ndarray:
    """Float32 codes [N, D] of a file's payload."""
    if header.dtype == "entropy":
        assert prior is not None
        try:
            symbols = codec.decode(prior, payload, header.count, header.step)
        except (VaelabError, ValueError, RuntimeError) as error:
            raise VaelabError(f"{source} is truncated or damaged ({error})") from None
        return codec.dequantize(prior, symbols, header.step)
    values = _values(header, payload, source)
    return dequantize(values, {"dtype": header.dtype, "offset": header.offset, "scale": header.scale})


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding (Pillow, optimized) of one uint8 image [C, H, W]."""
    buffer = io.BytesIO()
    plots.to_pil(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def image_scores(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean over images of the PSNR (dB) and SSIM between uint8 image stacks [N, C, H, W]."""
    a_t, b_t = torch.from_numpy(a) / 255.0, torch.from_numpy(b) / 255.0
    return float(psnr(mean_squared_error(a_t, b_t)).mean()), float(structural_similarity(a_t, b_t).mean())


def codec_sample(count: int) -> np.ndarray:
    """Indices of the up to CODEC_IMAGES of `count` images, evenly spread, that JPEG and WebP are scored on."""
    return np.linspace(0, count - 1, min(count, CODEC_IMAGES)).astype(int)


def codec_curve(images: np.ndarray, format: str, qualities: tuple[int, ...]) -> list[dict[str, float]]:
    """Mean bytes per image, PSNR and SSIM of Pillow's JPEG or WEBP, one file per image, at each
    quality (WebP at its slowest, smallest setting, method 6)."""
    options = {"method": 6} if format == "WEBP" else {}
    mode = "L" if images.shape[1] == 1 else "RGB"
    points = []
    for quality in qualities:
        sizes, decoded = [], []
        for image in images:
            buffer = io.BytesIO()
            plots.to_pil(image).save(buffer, format=format, quality=quality, **options)
            sizes.append(buffer.tell())
            back = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(mode))
            decoded.append(back[None] if image.shape[0] == 1 else back.transpose(2, 0, 1))
        score, similarity = image_scores(images, np.stack(decoded))
        points.append(
            {"quality": quality, "bytes_per_image": float(np.mean(sizes)), "psnr": score, "ssim": similarity}
        )
    return points


def compress(
    run: Run,
    inputs: Inputs = None,
    out: Annotated[Out, "compressed file to write"] = "images.vlz",
    dtype: Annotated[
        str,
        Choices(DTYPES),
        "entropy (coded under a learned prior; see --step), or fixed-size int8 or float16 codes",
    ] = "entropy",
    step: Annotated[
        float,
        "entropy: quantization step in units of the codes' spread, a quarter of their range on the training "
        "images (larger: smaller files, coarser images)",
    ] = DEFAULT_STEP,
    dataset: Dataset = None,
    data_dir: DataDir = None,
    split: Split = "test",
    report: Annotated[
        bool,
        "measure PSNR and SSIM, and draw a rate-distortion plot against PNG, and JPEG and WebP on up to "
        f"{CODEC_IMAGES} of the images",
    ] = True,
    device: Device = "auto",
) -> dict[str, Any]:
    """Store each image as its latent code in one file; report size, ratio to PNG, PSNR and SSIM,
    and (entropy codes) the model's rate-distortion curve beside JPEG and WebP at every quality."""
    if dtype not in DTYPES:
        raise VaelabError(f"dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
    if not step > 0:
        raise VaelabError(f"step must be positive (e.g. {DEFAULT_STEP}), got {step}")
    model, config = open_run(run, device)
    images = select_images(model, config, dataset, data_dir, split, inputs)
    prior = run_prior(run, model, config) if dtype == "entropy" else None
    codes = latent.embed_images(model, images.images).numpy()
    names = [Path(p).name for p in images.paths] if images.paths else None  # dataset images: numbered
    identity = {"model": bytes.fromhex(weights_hash(run))[:8], "shape": tuple(images.images.shape[1:]),
                "count": len(codes), "latent_dim": int(codes.shape[1]), "names": names}  # fmt: skip
    fields, payload = encode_codes(codes, dtype, prior, step)
    header = Header(dtype=dtype, **identity, **fields)
    data = pack(header, payload)
    out = Path(out)
    with atomic_output(out) as tmp:
        tmp.write_bytes(data)
    result: dict[str, Any] = {
        "out": str(out),
        "output": str(out),
        "dtype": dtype,
        "n_images": len(codes),
        "file_bytes": len(data),
        "bytes_per_image": len(data) / len(codes),
        "code_bytes_per_image": len(payload) / len(codes),
        "header_bytes": len(data) - len(payload),
    }
    if dtype == "entropy":
        result["step"] = step
    if report:
        originals = images.images.numpy()
        curve = _rate_distortion(model, originals, codes, prior, identity, step) if dtype == "entropy" else []
        result.update(
            _report(model, originals, decode_codes(header, payload, prior, str(out)), result, curve)
        )
    return result


def _rate_distortion(
    model: Any,
    originals: np.ndarray,
    codes: np.ndarray,
    prior: codec.LatentPrior | None,
    identity: dict[str, Any],
    step: float,
) -> list[dict[str, float]]:
    """Bytes per image (the whole file), PSNR and SSIM at each of RD_STEPS and `step`."""
    curve = []
    for other in sorted({*RD_STEPS, step}):
        fields, coded = encode_codes(codes, "entropy", prior, other)
        header = Header(dtype="entropy", **identity, **fields)
        score, similarity = image_scores(originals, _decode(model, decode_codes(header, coded, prior, "")))
        size = len(pack(header, coded)) / len(codes)
        curve.append({"step": other, "bytes_per_image": size, "psnr": score, "ssim": similarity})
    return curve


def _report(
    model: Any,
    originals: np.ndarray,
    codes: np.ndarray,
    result: dict[str, Any],
    curve: list[dict[str, float]],
) -> dict[str, Any]:
    png_total = sum(len(png_bytes(image)) for image in originals)
    this_file = [p for p in curve if p["step"] == result.get("step")]  # already decoded for the curve
    if this_file:
        score, similarity = this_file[0]["psnr"], this_file[0]["ssim"]
    else:
        score, similarity = image_scores(originals, _decode(model, codes))
    ours = {"bytes_per_image": result["bytes_per_image"], "psnr": score, "ssim": similarity}
    spread = codec_sample(len(originals))
    jpeg = codec_curve(originals[spread], "JPEG", JPEG_QUALITIES)
    webp = codec_curve(originals[spread], "WEBP", WEBP_QUALITIES)
    matching = min(jpeg, key=lambda p: abs(p["bytes_per_image"] - ours["bytes_per_image"]))
    plot = Path(result["out"]).with_suffix(".rd.png")
    label = f"{model.config.model.upper()} latent, {result['dtype']}"
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = figure(figsize=(10, 4.2), dpi=110, layout="constrained")
    for ax, key, name in zip(fig.subplots(1, 2), ("psnr", "ssim"), ("PSNR (dB)", "SSIM")):
        for points, colour, what in ((jpeg, "tab:gray", "JPEG (Pillow), quality 1-95"),
                                     (webp, "tab:green", "WebP (Pillow), quality 0-95")):  # fmt: skip
            ax.plot([p["bytes_per_image"] for p in points], [p[key] for p in points], "o-", color=colour,
                    markersize=3, label=what)  # fmt: skip
        if curve:
            ax.plot([p["bytes_per_image"] for p in curve], [p[key] for p in curve], "s-", color="tab:red",
                    markersize=4, label=f"{label}, steps {curve[0]['step']:g}-{curve[-1]['step']:g}")  # fmt: skip
        ax.plot([ours["bytes_per_image"]], [ours[key]], "*", markersize=14, color="tab:red",
                label=f"{label} (this file)")  # fmt: skip
        ax.axvline(png_total / len(originals), color="tab:blue", linestyle=":", label="PNG (lossless)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bytes per image, every byte of the file (log scale)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    fig.axes[0].legend(fontsize=7)
    sampled = f" (JPEG and WebP on {len(spread):,} of them)" if len(spread) < len(originals) else ""
    fig.suptitle(f"{len(originals):,} images of {originals.shape[3]} x {originals.shape[2]} pixels{sampled}")
    save_figure(fig, plot)
    return {
        "psnr": score,
        "ssim": similarity,
        "png_bytes_per_image": png_total / len(originals),
        "ratio_vs_png": png_total / result["file_bytes"],
        "rate_distortion": curve,
        "jpeg": jpeg,
        "webp": webp,
        "jpeg_at_matching_size": matching,
        "smallest_jpeg_bytes_per_image": min(p["bytes_per_image"] for p in jpeg),
        "smallest_webp_bytes_per_image": min(p["bytes_per_image"] for p in webp),
        "codec_images": len(spread),
        "rd_plot": str(plot),
    }


@torch.no_grad()
def _decode(model: Any, codes: np.ndarray) -> np.ndarray:
    """uint8 images [N, C, H, W] decoded from float32 codes [N, D]."""
    decoded = latent.decode_latents(model, torch.from_numpy(codes), DECODE_DRAWS, seed=0)
    return from_unit(decoded).numpy()


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
    header, payload = unpack(path.read_bytes(), str(file))
    model, config = open_run(run, device)
    if header.model != bytes.fromhex(weights_hash(run))[:8]:
        raise VaelabError(
            f"{file} was compressed with another model; decompress it with the run that made it"
        )
    if list(header.shape) != [
        model.config.image_channels,
        model.config.image_height,
        model.config.image_width,
    ]:
        raise VaelabError(f"{file} holds images of shape {list(header.shape)}, not this model's")
    prior = None
    if header.dtype == "entropy":
        prior = run_prior(run, model, config)
        if prior.checksum() != header.prior:
            raise VaelabError(
                f"{file} was coded under another entropy prior than {run}'s; compress the images again"
            )
    codes = decode_codes(header, payload, prior, str(file))
    names = header.names or [f"{i:05d}.png" for i in range(header.count)]
    out = Path(out)
    targets = [out / (Path(name).stem + ".png") for name in names]
    clashes = [str(t) for t in targets if t.exists()]
    if clashes:
        raise VaelabError(f"{clashes[0]} already exists; choose an empty output folder")
    images = _decode(model, codes)
    for target, image in zip(targets, images):
        plots.save_png(image, target)
    return {
        "out": str(out),
        "output": str(out),
        "n_images": len(images),
        "shape": list(header.shape),
        "dtype": header.dtype,
    }


def format_table(result: dict[str, Any]) -> str:
    """The compression report as lines for the terminal."""
    lines = [
        f"{result['n_images']} images -> {result['output']}: {result['file_bytes']} bytes, "
        f"{result['bytes_per_image']:.1f} bytes per image ({result['code_bytes_per_image']:.1f} for the codes, "
        f"{result['header_bytes']} bytes of header in all)"
    ]
    if "psnr" in result:
        lines.append(
            f"PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f}; {result['ratio_vs_png']:.1f}x smaller "
            f"than PNG ({result['png_bytes_per_image']:.0f} bytes per image)"
        )
        for point in result["rate_distortion"]:
            lines.append(
                f"  step {point['step']:<6g} {point['bytes_per_image']:>7.1f} bytes  {point['psnr']:6.2f} dB  "
                f"SSIM {point['ssim']:.3f}"
            )
        sampled = (
            f", on {result['codec_images']} of the images"
            if result["codec_images"] < result["n_images"]
            else ""
        )
        for name in ("jpeg", "webp"):
            smallest = min(result[name], key=lambda p: p["bytes_per_image"])
            lines.append(
                f"{name.upper()}'s smallest file: {smallest['bytes_per_image']:.0f} bytes per image at "
                f"{smallest['psnr']:.2f} dB (quality {smallest['quality']}{sampled})"
            )
        lines.append(f"rate-distortion plot: {result['rd_plot']}")
    return "\n".join(lines)
