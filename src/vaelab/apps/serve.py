"""`vaelab serve`: a local web app to explore a run's latent space, and the JSON API behind it.

The run folder is opened once, at start: the model, up to POINTS test images and their latent
codes, the principal directions of those codes, the coordinates with the most KL (traversal rows),
the saved attribute vectors, and each test image's reconstruction score (to rank an upload's).
No request names a file on the server; every input is a number, a latent vector or an upload.

API (OpenAPI document at /openapi.json, browsable at /docs):

    GET  /api/info             model, latent size, dataset, axes, attributes, limits
    GET  /api/points           the encoded test images as 2-D points with their classes
    GET  /api/latent/{index}   the latent code of test image `index`
    GET  /api/image/{index}    test image `index` as PNG
    POST /api/decode           {"z": [...]} -> image/png
    POST /api/decode/stream    {"z": [...]} -> NDJSON progress lines, then the image (pixel-by-pixel decoders)
    POST /api/sample           {"n", "temperature", "seed"} -> images (PNG data URLs) and their z
    POST /api/reconstruct      multipart field `file` -> z, reconstruction and anomaly score
    POST /api/traverse         {"z": [...]} -> image/png, one row per traversal coordinate

Errors answer 4xx with {"error": "one line"}; the server keeps serving.
"""

# No `from __future__ import annotations` here: FastAPI reads the request models of the
# endpoints defined inside create_app from their evaluated annotations.

import base64
import io
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vaelab import latent, plots
from vaelab.apps.steer import current_attributes, traversal_axes
from vaelab.data.cache import to_8bit
from vaelab.device import model_device
from vaelab.errors import VaelabError
from vaelab.evaluation import reconstruction_scores
from vaelab.latent_density import LATENT_SOURCES, LatentDensity, latent_density
from vaelab.models import VAE
from vaelab.options import Device, Run
from vaelab.runs import open_run, run_images

logger = logging.getLogger(__name__)

POINTS = 2000  # test images encoded at start: the scatter, the anomaly ranking, interpolation ends
AXES = 8  # principal directions offered as sliders
MAX_SAMPLES = 64
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096  # decoded size cap: a small file can decode to a huge image
TRAVERSAL_ROWS = 6
TRAVERSAL_STEPS = 7
PAGE = "explorer.html"


class RequestError(Exception):
    """A bad request: answered with `status` and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Explorer:
    """A run opened for serving: everything the API answers from, computed once."""

    def __init__(self, run: str | Path, device: str = "auto", max_batch: int = 32) -> None:
        self.model, self.config = open_run(run, device)
        self.device = model_device(self.model)
        self.lock = threading.Lock()  # one model call at a time: no oversubscribed CPU threads
        mc = self.model.config
        self.shape = (mc.image_channels, mc.image_height, mc.image_width)
        self.autoregressive = not self.model.pixels.closed_form_mean
        test = run_images(self.model, self.config)
        self.images = test.images[:POINTS]
        self.labels = test.labels[:POINTS] if test.labels is not None else None
        self.class_names = test.class_names
        means, variances = latent.posterior_moments(self.model, self.images)  # one encoder pass for both
        self.codes = means.double()
        self.prior_mismatch = (  # how far the test latents sit from N(0, I), for the samples' note
            latent.prior_gap(means[: latent.PRIOR_CHECK_IMAGES], variances[: latent.PRIOR_CHECK_IMAGES])[0]
            if variances is not None and len(self.images) > 1
            else None
        )
        # every principal axis of the codes: the Gaussian with their mean and full covariance (an
        # AE's codes are often strongly correlated; independent coordinates would miss the data),
        # and the page's axes
        self.code_axes = latent.principal_axes(self.codes, self.codes.shape[1])
        self.axes = self._axes()
        self.z_limit = 10.0 * max(1.0, float(self.codes.abs().max()))
        self.traversal_dims, self.traversal_centre, self.traversal_spread, _ = traversal_axes(
            self.model, self.images, TRAVERSAL_ROWS
        )
        try:
            self.attributes, self.attribute_info, stale = current_attributes(run)
        except VaelabError as error:  # the rest of the page works without its sliders
            logger.warning("%s; serving without attribute sliders", error)
            self.attributes, self.attribute_info, stale = {}, {}, []
        if stale:  # their vectors point through the latent space of weights the run no longer holds
            logger.warning(
                "attribute vectors found for earlier weights left out: %s; find them again with `vaelab "
                "attribute %s`", ", ".join(stale), run,
            )  # fmt: skip
        # normality, as AnomalyDetector(score="recon") scores it: the negated loss (lower = worse)
        self.test_scores = np.sort(-reconstruction_scores(self.model, self.images).numpy())
        self.run_name = Path(run).resolve().name
        self.run = Path(run)
        self.density: LatentDensity | None = None  # fitted on the first request that asks for it
        self.density_lock = threading.Lock()  # held while fitting: seconds that decoding need not wait
        self.batcher = DecodeBatcher(self._decode_batch, max_batch)

    def _axes(self) -> dict[str, Any]:
        """The latent's own coordinates up to 2-D; else its first AXES principal directions."""
        d = self.codes.shape[1]
        if d <= 2:
            return {"kind": "coordinates", "mean": [0.0] * d, "directions": torch.eye(d).tolist(),
                    "std": self.codes.std(0).tolist(), "labels": [f"z[{i}]" for i in range(d)]}  # fmt: skip
        mean, directions, std, share = self.code_axes
        directions, std, share = directions[:AXES], std[:AXES], share[:AXES]
        return {"kind": "pca", "mean": mean.tolist(), "directions": directions.tolist(), "std": std.tolist(),
                "labels": [f"PC{i + 1} ({s:.0%})" for i, s in enumerate(share)]}  # fmt: skip

    # ---- answers

    def info(self) -> dict[str, Any]:
        mc = self.model.config
        return {
            "run": self.run_name,
            "model": mc.model,
            "arch": mc.arch,
            "loss": mc.loss,
            "decoder": mc.decoder,
            "autoregressive": self.autoregressive,
            "latent_dim": mc.latent_dim,
            "image_shape": list(self.shape),
            "dataset": self.config.dataset,
            "n_points": len(self.images),
            "class_names": self._class_names(),
            "axes": self.axes,
            "z_limit": self.z_limit,
            "traversal": {"dims": self.traversal_dims, "steps": TRAVERSAL_STEPS, "limit": 3.0},
            "prior_mismatch_nats": self.prior_mismatch,
            "prior_mismatch_limit": latent.PRIOR_MISMATCH_NATS,
            "attributes": {
                name: {**self.attribute_info.get(name, {}), "vector": vector.tolist()}
                for name, vector in self.attributes.items()
            },
            "limits": {
                "max_samples": MAX_SAMPLES,
                "max_upload_bytes": MAX_UPLOAD_BYTES,
                "max_upload_pixels": MAX_UPLOAD_PIXELS,
            },
        }

    def _class_names(self) -> list[str] | None:
        if self.labels is None:
            return None
        if self.class_names is not None:
            return list(self.class_names)
        return [str(c) for c in range(int(self.labels.max()) + 1)]

    def points(self) -> dict[str, Any]:
        mean = torch.tensor(self.axes["mean"], dtype=torch.float64)
        directions = torch.tensor(self.axes["directions"][:2], dtype=torch.float64)
        coords = (self.codes - mean) @ directions.T
        if coords.shape[1] == 1:
            coords = torch.cat([coords, torch.zeros_like(coords)], dim=1)
        return {
            "x": [round(v, 4) for v in coords[:, 0].tolist()],
            "y": [round(v, 4) for v in coords[:, 1].tolist()],
            "labels": self.labels.tolist() if self.labels is not None else None,
        }

    def latent_of(self, index: int) -> list[float]:
        return self.codes[self._index(index)].tolist()

    def image_png(self, index: int) -> bytes:
        return png_bytes(self.images[self._index(index)].float() / 255.0)

    def _index(self, index: int) -> int:
        if not 0 <= index < len(self.images):
            raise RequestError(f"index must be between 0 and {len(self.images) - 1}, got {index}", 404)
        return index

    def check_latent(self, z: list[float]) -> torch.Tensor:
        d = self.model.config.latent_dim
        if len(z) != d:
            raise RequestError(f"z has {len(z)} numbers; this model's latent has {d}", 422)
        tensor = torch.tensor(z, dtype=torch.float32)
        if not torch.isfinite(tensor).all():
            raise RequestError("z holds NaN or infinite values; send finite numbers", 422)
        if float(tensor.abs().max()) > self.z_limit:
            raise RequestError(
                f"z holds values beyond ±{self.z_limit:.3g}, far outside the latent space; send smaller ones",
                422,
            )
        return tensor

    def decode(self, z: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The image of one latent [D]: the mean image (decoded together with the latents other
        requests are waiting on), or one drawn pixel by pixel."""
        if not self.autoregressive:
            return self.batcher.decode(z)
        with self.lock, torch.no_grad():
            generator = torch.Generator(self.device).manual_seed(seed)
            return self.model.pixels.sample(self.model.decoder(z[None].to(self.device)), generator)[0].cpu()

    def _decode_batch(self, z: torch.Tensor) -> torch.Tensor:
        with self.lock, torch.no_grad():
            return self.model.decode(z.to(self.device)).cpu()

    def decode_stream(self, z: torch.Tensor, seed: int = 0) -> Iterator[bytes]:
        """NDJSON lines: {"rows_done", "rows"} while drawing, then {"image": PNG data URL}."""
        if not self.autoregressive:
            yield _line({"image": data_url(png_bytes(self.decode(z)))})
            return
        rows = self.shape[1]
        with self.lock, torch.no_grad():
            generator = torch.Generator(self.device).manual_seed(seed)
            features = self.model.decoder(z[None].to(self.device))
            for done, drawn, _ in self.model.pixels.generate_rows(features, generator):
                image = drawn[0]  # the same tensor each row, filled in place
                if done % max(1, rows // 14) == 0 or done == rows:
                    yield _line({"rows_done": done, "rows": rows})
            image = image.cpu()
        yield _line({"image": data_url(png_bytes(image))})

    def sample(self, n: int, temperature: float, seed: int, latents: str = "prior") -> dict[str, Any]:
        if not 1 <= n <= MAX_SAMPLES:
            raise RequestError(f"n must be between 1 and {MAX_SAMPLES}, got {n}", 422)
        if not 0 < temperature <= 3:
            raise RequestError(f"temperature must be in (0, 3], got {temperature}", 422)
        if self.autoregressive and n > 4:
            raise RequestError("this decoder draws pixel by pixel: ask for at most 4 samples at once", 422)
        if latents not in LATENT_SOURCES:
            raise RequestError(f"latents must be one of: {', '.join(LATENT_SOURCES)}; got {latents!r}", 422)
        generator = torch.Generator().manual_seed(seed)
        if latents == "fitted":
            with self.density_lock:  # the first request fits it (or reads it from the run folder)
                if self.density is None:
                    self.density = latent_density(self.run, self.model, self.config)
            z = self.density.sample(n, generator, temperature)
        else:
            z = torch.randn(n, self.model.config.latent_dim, generator=generator) * temperature
            if not isinstance(self.model, VAE):  # no prior: draw from the Gaussian of the codes
                mean, directions, std, _ = self.code_axes
                z = (mean + (z.double()[:, : len(std)] * std) @ directions).float()
        images = [self.decode(row, seed) for row in z]
        return {"z": z.tolist(), "images": [data_url(png_bytes(image)) for image in images]}

    def reconstruct(self, data: bytes) -> dict[str, Any]:
        image = read_upload(data, self.shape)
        with self.lock, torch.no_grad():
            z = self.model.embed((image.float() / 255.0)[None].to(self.device))[0].cpu()
            score = -float(reconstruction_scores(self.model, image[None])[0])
        recon = self.decode(z)
        rank = float(np.searchsorted(self.test_scores, score) / len(self.test_scores))
        return {
            "z": z.tolist(),
            "input": data_url(png_bytes(image.float() / 255.0)),
            "reconstruction": data_url(png_bytes(recon)),
            "anomaly": {
                "score": -score,  # reconstruction loss in nats (bernoulli: above the data's own entropy)
                "unit": "reconstruction loss per image",
                "share_of_test_images_reconstructed_better": 1.0 - rank,
                "test_median": float(-np.median(self.test_scores)),
            },
        }

    def traverse(self, z: torch.Tensor) -> bytes:
        if self.autoregressive:
            raise RequestError(
                "traversals need a decoder with a mean image; this one draws pixel by pixel", 409
            )
        units = torch.linspace(-3.0, 3.0, TRAVERSAL_STEPS)
        centre, spread = self.traversal_centre, self.traversal_spread
        rows = [latent.traversal_latents(z, [d], centre[d] + units * spread[d]) for d in self.traversal_dims]
        with self.lock:
            images = latent.decode_latents(self.model, torch.cat(rows))
        return png_bytes(images, nrow=TRAVERSAL_STEPS)


class DecodeBatcher:
    """Decodes the latents of concurrent requests in one forward pass.

    Each caller adds its latent and waits; one worker thread takes every latent waiting (up to
    max_batch) and decodes them together, so a lone request is decoded at once and eight
    concurrent ones cost little more than one (a 64 px colour decoder: 4.4 ms for one latent,
    12 ms for eight, on 2 CPU cores)."""

    def __init__(self, decode_batch: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 32) -> None:
        self.decode_batch = decode_batch
        self.max_batch = max_batch
        self.waiting: list[tuple[torch.Tensor, Future[torch.Tensor]]] = []
        self.ready = threading.Condition()
        self.batches: list[int] = []  # the size of each batch decoded (recent ones), for tests
        threading.Thread(target=self._work, name="vaelab-decode", daemon=True).start()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        future: Future[torch.Tensor] = Future()
        with self.ready:
            self.waiting.append((z, future))
            self.ready.notify()
        return future.result()

    def _work(self) -> None:
        while True:
            with self.ready:
                while not self.waiting:
                    self.ready.wait()
                batch, self.waiting = self.waiting[: self.max_batch], self.waiting[self.max_batch :]
            self.batches = [*self.batches[-999:], len(batch)]
            try:
                images = self.decode_batch(torch.stack([z for z, _ in batch]))
            except Exception as error:  # handed to every waiting request
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (_, future), image in zip(batch, images):
                future.set_result(image)


def png_bytes(images: torch.Tensor, nrow: int = 8) -> bytes:
    """One image [C, H, W] (or a grid of [N, C, H, W]) in [0, 1] as PNG bytes, at its own size."""
    if images.dim() == 4:
        images = plots.tile(images.float().clamp(0, 1), nrow=nrow, padding=1)
    array = plots.to_uint8(images)
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def read_upload(data: bytes, shape: tuple[int, int, int]) -> torch.Tensor:
    """An uploaded image file as uint8 [C, H, W] of the model's shape (converted and resized)."""
    if not data:
        raise RequestError("the upload is empty; send an image file in the field 'file'")
    if len(data) > MAX_UPLOAD_BYTES:
        raise RequestError(f"the upload is over {MAX_UPLOAD_BYTES // 2**20} MiB; send a smaller image", 413)
    channels, height, width = shape
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_UPLOAD_PIXELS:
                raise RequestError(
                    f"the image is {image.width}x{image.height} pixels, over the {MAX_UPLOAD_PIXELS:,}-pixel "
                    "cap; send a smaller image",
                    413,
                )
            image.load()
            converted = to_8bit(image, "L" if channels == 1 else "RGB", "the upload")
    except VaelabError as error:  # pixels outside the range of their type
        raise RequestError(str(error), 422) from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise RequestError("the upload is not an image Pillow can read; send a PNG or JPEG", 415) from None
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BICUBIC)
    array = np.asarray(converted)
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def _line(data: dict[str, Any]) -> bytes:
    return (json.dumps(data) + "\n").encode()


def page() -> str:
    """The explorer page (one HTML file with its script)."""
    return resources.files("vaelab.apps").joinpath(PAGE).read_text(encoding="utf-8")


def create_app(run: str | Path, device: str = "auto", max_batch: int = 32) -> Any:
    """The FastAPI application serving `run` (opened now, once); concurrent decode requests
    share forward passes of up to `max_batch` latents."""
    if max_batch < 1:
        raise VaelabError(f"max_batch must be at least 1, got {max_batch}")
    fastapi = _import_fastapi()
    from fastapi import File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, Field

    explorer = Explorer(run, device, max_batch)
    app = fastapi.FastAPI(
        title=f"vaelab explorer: {explorer.run_name}",
        description="Decode latent vectors, draw samples, reconstruct uploads, traverse the latent space.",
        version="1",
    )
    app.state.explorer = explorer

    class Latent(BaseModel):
        z: list[float] = Field(description="a latent vector, latent_dim numbers")
        seed: int = Field(0, description="seed of the drawn pixels (pixel-by-pixel decoders only)")

    class SampleRequest(BaseModel):
        n: int = Field(16, description=f"images, 1 to {MAX_SAMPLES}")
        temperature: float = Field(1.0, description="scale of the prior's standard deviation")
        seed: int = Field(0, description="seed of the random latents")
        latents: str = Field(
            "prior",
            description="prior: N(0, T² I); fitted: the Gaussian mixture fitted to the training latents "
            "(each Gaussian's spread scaled by T), fitted on first use and kept in the run folder",
        )

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _one_line(error.errors())}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page()

    @app.get("/api/info", summary="The model, its latent space and the limits of this server")
    def info() -> dict[str, Any]:
        return explorer.info()

    @app.get("/api/points", summary="The encoded test images as 2-D points (the first two axes)")
    def points() -> dict[str, Any]:
        return explorer.points()

    @app.get("/api/latent/{index}", summary="The latent code of one test image")
    def latent_of(index: int) -> dict[str, Any]:
        return {"index": index, "z": explorer.latent_of(index)}

    @app.get("/api/image/{index}", summary="One test image as PNG", response_class=Response)
    def image(index: int) -> Response:
        return Response(explorer.image_png(index), media_type="image/png")

    @app.post("/api/decode", summary="Decode one latent vector into a PNG", response_class=Response)
    def decode(body: Latent) -> Response:
        z = explorer.check_latent(body.z)
        return Response(png_bytes(explorer.decode(z, body.seed)), media_type="image/png")

    @app.post("/api/decode/stream", summary="Decode with progress lines (NDJSON) for pixel-by-pixel decoders")
    def decode_stream(body: Latent) -> StreamingResponse:
        z = explorer.check_latent(body.z)
        return StreamingResponse(explorer.decode_stream(z, body.seed), media_type="application/x-ndjson")

    @app.post("/api/sample", summary="Decode random latents; images as PNG data URLs with their z")
    def sample(body: SampleRequest) -> dict[str, Any]:
        return explorer.sample(body.n, body.temperature, body.seed, body.latents)

    @app.post("/api/reconstruct", summary="Encode an uploaded image; its reconstruction and anomaly score")
    def reconstruct(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        data = file.file.read(MAX_UPLOAD_BYTES + 1)
        return explorer.reconstruct(data)

    @app.post(
        "/api/traverse", summary="Traversal rows around a latent vector, as PNG", response_class=Response
    )
    def traverse(body: Latent) -> Response:
        return Response(explorer.traverse(explorer.check_latent(body.z)), media_type="image/png")

    return app


def _one_line(errors: Any) -> str:
    """FastAPI's validation errors as one readable line."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            return 'the request body is not valid JSON; send an object such as {"z": [0, 0]}'
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _import_fastapi() -> Any:
    try:
        import fastapi
        import python_multipart  # noqa: F401 (FastAPI's uploads need it)
    except ImportError:
        raise VaelabError(
            "serve needs FastAPI, uvicorn and python-multipart; install them with: pip install 'vaelab[serve]'"
        ) from None
    return fastapi


def serve(
    run: Run,
    host: Annotated[str, "address to listen on (127.0.0.1: this computer only)"] = "127.0.0.1",
    port: Annotated[int, "port to listen on"] = 8000,
    device: Device = "auto",
    max_batch: Annotated[
        int, "latents of concurrent decode requests decoded in one pass, at most (1 = one by one)"
    ] = 32,
) -> dict[str, Any]:
    """Serve a web page and a JSON API to explore the run's latent space (samples, the latent
    plane, interpolation, uploads and drawings, traversals, attribute sliders), until Ctrl-C."""
    if not 0 < port < 65536:
        raise VaelabError(f"port must be between 1 and 65535, got {port}")
    _check_can_listen(host, port)  # before the seconds spent opening the run
    app = create_app(run, device, max_batch)
    try:
        import uvicorn
    except ImportError:
        raise VaelabError("serve needs uvicorn; install it with: pip install 'vaelab[serve]'") from None
    url = f"http://{host}:{port}/"
    logger.info("serving %s at %s (API description at %sdocs); Ctrl-C stops", run, url, url)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except SystemExit:  # uvicorn exits when it cannot bind (taken since the check)
        raise VaelabError(f"cannot listen on {host}:{port}; pick another port") from None
    return {"url": url, "run": str(run)}


def _check_can_listen(host: str, port: int) -> None:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        reason = error.strerror or str(error)
        raise VaelabError(f"cannot listen on {host}:{port} ({reason}); pick another port or host") from None
