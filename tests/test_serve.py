"""The explorer web app: its JSON API through FastAPI's test client, `vaelab serve` started for
real, and the page itself in headless Chromium (Playwright), on a grey 28 px digit model, a
colour 64 px model with attribute vectors, and a pixel-by-pixel (pixelcnn) decoder."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vaelab
from conftest import write_shapes_folder
from vaelab import latent
from vaelab.apps import serve as serve_module
from vaelab.config import PLAIN_TRAINING
from vaelab.estimators import AnomalyDetector
from vaelab.latent import decode_latents, embed_images
from vaelab.latent_density import DENSITY_FILE

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

PIXELCNN_RUN = Path(__file__).parent / "fixtures" / "run-0.1.0"
ARTIFACTS = Path(os.environ.get("VAELAB_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
COLOUR_SIZE, COLOUR_IMAGES = 64, 300


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small VAE on 64 px colour shapes (dlogistic, 2 epochs), with a saved `size` attribute."""
    size = {"size": lambda factors, i: f"{factors['size'][i]:.5f}"}
    folder, labels = write_shapes_folder(
        tmp_path_factory.mktemp("shapes64"), COLOUR_IMAGES, COLOUR_SIZE, size
    )
    run = tmp_path_factory.mktemp("runs") / "colour64"
    settings = {**PLAIN_TRAINING, "loss": "dlogistic", "batch_size": 32, "channels": 8}
    vaelab.train(run, dataset=f"folder:{folder}", latent_dim=8, epochs=2, device="cpu", progress=False,
                 **settings)  # fmt: skip
    vaelab.attribute(run, factor="size", labels=labels)
    return run


@pytest.fixture(scope="module")
def client(vae_run: Path) -> TestClient:
    return TestClient(vaelab.create_app(vae_run, "cpu"))


@pytest.fixture(scope="module")
def colour_client(colour_run: Path) -> TestClient:
    return TestClient(vaelab.create_app(colour_run, "cpu"))


def decoded(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def data_url_image(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    import base64

    with Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))) as image:
        return np.asarray(image)


def png_file(array: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


def test_the_explorer_starts_without_scikit_learn(vae_run: Path) -> None:
    # importing scikit-learn took about 0.8 s of the server's start on 2 cores; the anomaly ranking
    # of uploads needs only the model's reconstruction loss
    code = (
        "import sys, vaelab; vaelab.create_app(sys.argv[1], 'cpu'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(vae_run)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ---- the API, grey 28 px


def test_info_describes_the_model_and_its_latent_axes(client: TestClient, vae_run: Path) -> None:
    info = client.get("/api/info").json()
    assert (info["model"], info["latent_dim"], info["dataset"]) == ("vae", 2, "mnist-mini")
    assert info["image_shape"] == [1, 28, 28] and info["autoregressive"] is False
    assert info["class_names"] == [str(d) for d in range(10)]
    assert info["axes"]["kind"] == "coordinates"  # a 2-D latent is its own plane
    assert info["axes"]["directions"] == [[1.0, 0.0], [0.0, 1.0]]
    points = client.get("/api/points").json()
    assert len(points["x"]) == len(points["y"]) == len(points["labels"]) == info["n_points"] == 2000
    codes = embed_images(vaelab.load(vae_run), vaelab.load_images("mnist-mini", "test").images[:5])
    assert np.allclose(points["x"][:5], codes[:, 0].numpy(), atol=1e-4)  # rounded to 4 decimals
    assert np.allclose(client.get("/api/latent/3").json()["z"], codes[3].numpy(), atol=1e-6)
    # how far the test latents sit from the prior, for the note beside samples drawn from it
    test = vaelab.load_images("mnist-mini", "test").images[: latent.PRIOR_CHECK_IMAGES]
    assert info["prior_mismatch_nats"] == pytest.approx(latent.prior_mismatch(vaelab.load(vae_run), test)[0])
    assert info["prior_mismatch_limit"] == latent.PRIOR_MISMATCH_NATS
    assert set(client.get("/openapi.json").json()["paths"]) >= {
        "/api/info", "/api/decode", "/api/sample", "/api/reconstruct", "/api/traverse",
    }  # fmt: skip


def test_decode_answers_the_models_mean_image_as_png(client: TestClient, vae_run: Path) -> None:
    z = [0.5, -1.0]
    image = decoded(client.post("/api/decode", json={"z": z}))
    assert image.shape == (28, 28)
    expected = decode_latents(vaelab.load(vae_run), torch.tensor([z]))[0, 0].numpy()
    assert np.abs(image / 255.0 - expected).max() <= 0.5 / 255 + 1e-6  # only 8-bit rounding
    other = decoded(client.post("/api/decode", json={"z": [-2.0, 2.0]}))
    assert np.abs(image.astype(float) - other).mean() > 5  # another point, another image


def test_samples_scale_with_temperature_and_follow_the_seed(client: TestClient) -> None:
    one = client.post("/api/sample", json={"n": 4, "temperature": 1.0, "seed": 7}).json()
    half = client.post("/api/sample", json={"n": 4, "temperature": 0.5, "seed": 7}).json()
    assert len(one["images"]) == len(one["z"]) == 4
    assert np.allclose(np.array(half["z"]), 0.5 * np.array(one["z"]), atol=1e-6)
    assert data_url_image(one["images"][0]).shape == (28, 28)
    again = client.post("/api/sample", json={"n": 4, "temperature": 1.0, "seed": 7}).json()
    assert again == one


def test_fitting_the_mixture_does_not_hold_up_decoding(
    vae_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(vae_run, tmp_path / "vae2")  # the fit saves its mixture in the run folder
    explorer = serve_module.Explorer(tmp_path / "vae2", "cpu")
    fitting, release = threading.Event(), threading.Event()
    real = serve_module.latent_density

    def slow_fit(*args: object) -> object:  # the first "fitted" request, stopped mid-fit
        fitting.set()
        release.wait(60)
        return real(*args)

    monkeypatch.setattr(serve_module, "latent_density", slow_fit)
    with ThreadPoolExecutor(2) as pool:
        sampled = pool.submit(explorer.sample, 2, 1.0, 0, "fitted")
        try:
            assert fitting.wait(60)
            image = pool.submit(explorer.decode, torch.zeros(2)).result(timeout=30)  # meanwhile
            assert image.shape == (1, 28, 28) and not sampled.done()
        finally:
            release.set()
        assert len(sampled.result(timeout=60)["images"]) == 2


def test_an_aes_samples_follow_the_correlations_of_its_codes(ae_run: Path) -> None:
    explorer = serve_module.Explorer(ae_run, "cpu")
    assert explorer.info()["prior_mismatch_nats"] is None  # its samples do not come from N(0, I)
    codes = explorer.codes.T
    drawn = torch.tensor([z for seed in range(20) for z in explorer.sample(64, 1.0, seed)["z"]]).T.double()
    expected, got = torch.corrcoef(codes)[0, 1].item(), torch.corrcoef(drawn)[0, 1].item()
    # this AE's two coordinates are strongly correlated (measured -0.93); 1,280 draws estimate a
    # correlation to within about 0.01 (a standard error of (1 - rho^2) / sqrt(n)); independent
    # coordinates would give 0
    assert abs(expected) > 0.5 and abs(got - expected) < 0.05
    torch.testing.assert_close(drawn.mean(1), codes.mean(1), atol=0.15 * codes.std(1).max().item(), rtol=0)


def test_samples_from_the_fitted_mixture(vae_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "vae2"
    shutil.copytree(vae_run, run)
    client = TestClient(vaelab.create_app(run, "cpu"))
    assert not (run / DENSITY_FILE).exists()  # fitted on the first request that asks for it
    one = client.post("/api/sample", json={"n": 6, "temperature": 1.0, "seed": 3, "latents": "fitted"}).json()
    half = client.post(
        "/api/sample", json={"n": 6, "temperature": 0.5, "seed": 3, "latents": "fitted"}
    ).json()
    means = load_file(str(run / DENSITY_FILE))["means"].numpy()
    # the same seed picks the same Gaussians; T scales the draws around their means: 2 z_half - z_one = mean
    centres = 2 * np.array(half["z"]) - np.array(one["z"])
    assert all(np.abs(means - c).max(axis=1).min() < 1e-5 for c in centres)
    assert data_url_image(one["images"][0]).shape == (28, 28)
    response = client.post("/api/sample", json={"n": 2, "latents": "gmm"})
    assert response.status_code == 422 and "latents must be one of: prior, fitted" in response.json()["error"]


def test_reconstruct_scores_an_upload_like_the_anomaly_detector(client: TestClient, vae_run: Path) -> None:
    test_image = vaelab.load_images("mnist-mini", "test").images[10, 0].numpy()
    result = client.post("/api/reconstruct", files={"file": ("digit.png", png_file(test_image))}).json()
    assert data_url_image(result["input"]).shape == (28, 28)
    assert data_url_image(result["reconstruction"]).shape == (28, 28)
    detector = AnomalyDetector(vae_run, device="cpu").fit(
        vaelab.load_images("mnist-mini", "test").images[:50]
    )
    expected = -detector.score_samples(torch.from_numpy(test_image)[None, None])[0]
    assert math.isclose(result["anomaly"]["score"], expected, rel_tol=1e-4)
    assert 0.0 <= result["anomaly"]["share_of_test_images_reconstructed_better"] <= 1.0
    # a noise image is reconstructed worse than almost every test digit
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    noisy = client.post("/api/reconstruct", files={"file": ("noise.png", png_file(noise))}).json()
    assert noisy["anomaly"]["share_of_test_images_reconstructed_better"] > 0.95
    # any size and mode is converted: a 100 x 60 RGBA drawing becomes a 28 x 28 grey input
    drawing = np.zeros((60, 100, 4), dtype=np.uint8)
    drawing[20:40, 45:55] = 255
    converted = client.post("/api/reconstruct", files={"file": ("d.png", png_file(drawing))}).json()
    assert data_url_image(converted["input"]).shape == (28, 28)
    # a 16-bit scan of the same digit is the same input, not one clipped to white
    deep = client.post(
        "/api/reconstruct", files={"file": ("d16.png", png_file(test_image.astype(np.uint16) * 257))}
    )
    assert deep.status_code == 200 and deep.json()["z"] == result["z"]
    # so is the digit with a transparent background that hides white: read as black, as in folders
    hidden = np.stack(
        [np.where(test_image > 0, test_image, 255)] * 3 + [np.where(test_image > 0, 255, 0)], -1
    )
    response = client.post("/api/reconstruct", files={"file": ("a.png", png_file(hidden.astype(np.uint8)))})
    assert response.status_code == 200 and response.json()["z"] == result["z"]
    floats = png_file(test_image.astype(np.float32), "TIFF")  # floats read as 0-1: these run to 255
    response = client.post("/api/reconstruct", files={"file": ("f.tif", floats)})
    assert (
        response.status_code == 422 and "the upload holds floating-point pixels" in response.json()["error"]
    )


def test_traverse_answers_one_row_per_informative_coordinate(client: TestClient) -> None:
    info = client.get("/api/info").json()
    rows, steps = len(info["traversal"]["dims"]), info["traversal"]["steps"]
    image = decoded(client.post("/api/traverse", json={"z": [0.0, 0.0]}))
    assert image.shape[:2] == (rows * 29 + 1, steps * 29 + 1)  # 28 px tiles, 1 px borders


def test_bad_requests_get_one_line_4xx_and_the_server_keeps_serving(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def error(response, status: int) -> str:
        assert response.status_code == status, response.text
        message = response.json()["error"]
        assert "\n" not in message and 10 < len(message) < 200
        return message

    assert "latent has 2" in error(client.post("/api/decode", json={"z": [1.0, 2.0, 3.0]}), 422)
    assert "beyond" in error(client.post("/api/decode", json={"z": [1e6, 0.0]}), 422)
    body = b'{"z": [NaN, 0]}'
    assert "NaN" in error(
        client.post("/api/decode", content=body, headers={"content-type": "application/json"}), 422
    )
    malformed = client.post(
        "/api/decode", content=b'{"z": [1, ', headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in error(malformed, 422)
    assert "z" in error(client.post("/api/decode", json={"z": "north"}), 422)
    assert "n must be" in error(client.post("/api/sample", json={"n": 10_000}), 422)
    assert "temperature" in error(client.post("/api/sample", json={"temperature": -1}), 422)
    assert "not an image" in error(
        client.post("/api/reconstruct", files={"file": ("a.png", b"%PDF-1.4")}), 415
    )
    assert "file" in error(client.post("/api/reconstruct"), 422)
    huge = io.BytesIO()
    Image.new("1", (5000, 4000)).save(huge, format="PNG")  # a few kB that decode to 20 M pixels
    assert len(huge.getvalue()) < 100_000
    assert "pixel" in error(
        client.post("/api/reconstruct", files={"file": ("big.png", huge.getvalue())}), 413
    )
    monkeypatch.setattr(serve_module, "MAX_UPLOAD_BYTES", 1000)
    blob = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    assert "MiB" in error(client.post("/api/reconstruct", files={"file": ("n.png", png_file(blob))}), 413)
    assert "index" in error(client.get("/api/image/5000"), 404)
    assert client.get("/api/image/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)  # numbers only
    decoded(client.post("/api/decode", json={"z": [0.0, 0.0]}))  # still serving


def test_concurrent_decodes_share_forward_passes_and_each_gets_its_own_image() -> None:
    import threading

    calls: list[int] = []

    def slow_double(z: torch.Tensor) -> torch.Tensor:
        calls.append(len(z))
        time.sleep(0.05)
        if (z < 0).any():
            raise ValueError("negative")
        return z * 2

    batcher = serve_module.DecodeBatcher(slow_double)
    results: dict[int, torch.Tensor] = {}

    def ask(i: int) -> None:
        results[i] = batcher.decode(torch.full((3,), float(i)))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(results[i], torch.full((3,), 2.0 * i)) for i in range(8))
    assert sum(calls) == 8 and len(calls) <= 3  # the first alone, the rest waited and went together
    with pytest.raises(ValueError, match="negative"):  # an error reaches the request, not the worker
        batcher.decode(torch.full((3,), -1.0))
    assert torch.equal(batcher.decode(torch.ones(3)), torch.full((3,), 2.0))  # still working


# ---- colour 64 px, attributes


def test_a_colour_64px_model_is_served_the_same_way(colour_client: TestClient, colour_run: Path) -> None:
    info = colour_client.get("/api/info").json()
    assert info["image_shape"] == [3, 64, 64] and info["latent_dim"] == 8
    assert info["axes"]["kind"] == "pca" and len(info["axes"]["directions"]) == 8
    directions = np.array(info["axes"]["directions"])
    assert np.allclose(directions @ directions.T, np.eye(8), atol=1e-6)  # orthonormal principal axes
    assert list(info["attributes"]) == ["size"] and len(info["attributes"]["size"]["vector"]) == 8
    z = colour_client.get("/api/latent/0").json()["z"]
    assert decoded(colour_client.post("/api/decode", json={"z": z})).shape == (64, 64, 3)
    sample = colour_client.post("/api/sample", json={"n": 2}).json()
    assert data_url_image(sample["images"][0]).shape == (64, 64, 3)
    upload = colour_client.get("/api/image/1").content
    result = colour_client.post("/api/reconstruct", files={"file": ("s.png", upload)}).json()
    assert data_url_image(result["reconstruction"]).shape == (64, 64, 3)
    rows = len(info["traversal"]["dims"])
    assert decoded(colour_client.post("/api/traverse", json={"z": z})).shape == (rows * 65 + 1, 7 * 65 + 1, 3)


def test_a_damaged_attributes_file_is_served_without_sliders(
    colour_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(colour_run, run)
    (run / "attributes.safetensors").write_bytes(b"junk" * 3)
    with caplog.at_level("WARNING", logger="vaelab.apps.serve"):
        info = TestClient(vaelab.create_app(run, "cpu")).get("/api/info").json()
    assert info["attributes"] == {} and info["latent_dim"] == 8  # the rest is served
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"{run / 'attributes.safetensors'} is damaged (")
    assert message.endswith("save the attributes again with `vaelab attribute`; serving without attribute "
                            "sliders")  # fmt: skip


# ---- a pixel-by-pixel decoder


def test_a_pixelcnn_decoder_streams_its_progress_row_by_row() -> None:
    client = TestClient(vaelab.create_app(PIXELCNN_RUN, "cpu"))
    info = client.get("/api/info").json()
    assert info["autoregressive"] is True
    response = client.post("/api/decode/stream", json={"z": [0.0, 0.0], "seed": 3})
    lines = [json.loads(line) for line in response.text.splitlines()]
    progress = [line["rows_done"] for line in lines if "rows_done" in line]
    assert progress == sorted(progress) and progress[-1] == 28 and len(progress) >= 10
    image = data_url_image(lines[-1]["image"])
    assert image.shape == (28, 28) and set(np.unique(image)) <= {0, 255}  # drawn 0/1 pixels
    same = decoded(client.post("/api/decode", json={"z": [0.0, 0.0], "seed": 3}))
    assert np.array_equal(same, image)  # the stream and the plain answer draw the same pixels
    assert client.post("/api/sample", json={"n": 16}).status_code == 422  # too slow: at most 4
    assert client.post("/api/traverse", json={"z": [0.0, 0.0]}).status_code == 409


# ---- the real server and the page in a browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`vaelab serve RUN` in a subprocess, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, run: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vaelab", "serve", str(run), "--port", str(self.port), "--device", "cpu"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while True:
            try:
                with urllib.request.urlopen(self.url + "api/info", timeout=1) as response:
                    self.info = json.load(response)
                break
            except OSError:
                if self.process.poll() is not None:
                    raise AssertionError(f"vaelab serve exited: {self.process.stderr.read()}") from None
                if time.perf_counter() - started > 60:
                    raise AssertionError("vaelab serve did not answer within 60 s") from None
                time.sleep(0.2)
        self.start_seconds = time.perf_counter() - started

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=20)
        return self.process.returncode, err


@pytest.fixture(scope="module")
def grey_server(vae_run: Path):
    server = Server(vae_run)
    yield server
    server.stop()


def test_vaelab_serve_starts_in_seconds_binds_loopback_and_stops_on_ctrl_c(vae_run: Path) -> None:
    server = Server(vae_run)
    assert server.start_seconds < 30  # python, torch and FastAPI imports, and 2,000 test codes
    assert server.info["latent_dim"] == 2
    with urllib.request.urlopen(server.url) as response:
        assert b"vaelab explorer" in response.read()
    code, err = server.stop()
    assert code == 0, err
    bad = subprocess.run(
        [sys.executable, "-m", "vaelab", "serve", str(vae_run), "--port", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "port must be" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = subprocess.run(
            [sys.executable, "-m", "vaelab", "serve", str(vae_run), "--port", port],
            capture_output=True,
            text=True,
        )
    assert busy.returncode == 2 and "cannot listen" in busy.stderr and len(busy.stderr.splitlines()) == 1


def browser():
    """Headless Chromium through Playwright (Debian's chromium in CI)."""
    playwright = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        if os.environ.get("CI"):
            raise AssertionError("CI must install chromium (.ci/run does: apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return playwright.sync_playwright(), executable


def explore_in_browser(url: str, screenshot: Path) -> dict:
    """Load the page, draw samples, move a slider and drag on the latent plane; the digests of the
    current image before and after each step, and what the decoder scheduler did."""
    manager, executable = browser()
    with manager as p:
        chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1400, "height": 1200})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        idle = "() => !window.explorer.decoder.busy && !window.explorer.decoder.pending"
        page.wait_for_function(idle)
        digest = lambda: page.get_attribute("#current", "data-digest")  # noqa: E731
        seen = {"start": digest()}
        page.click("#sample-button")
        page.wait_for_function("document.querySelectorAll('#samples img').length === 16")
        page.click("#samples img:nth-child(3)")
        page.wait_for_function(idle)
        seen["sample"] = digest()
        page.eval_on_selector(
            "#axis-0", "s => { s.value = s.max; s.dispatchEvent(new Event('input', {bubbles: true})); }"
        )
        page.wait_for_function(idle)
        seen["slider"] = digest()
        box = page.locator("#plane").bounding_box()
        page.mouse.move(box["x"] + 40, box["y"] + 40)
        page.mouse.down()
        for step in range(30):
            page.mouse.move(box["x"] + 40 + 9 * step, box["y"] + 40 + 7 * step)
        page.mouse.up()
        page.wait_for_function(idle)
        seen["drag"] = digest()
        stats = page.evaluate(
            "({done: window.explorer.decoder.done, superseded: window.explorer.decoder.superseded})"
        )
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        chromium.close()
    return {"digests": seen, "errors": errors, **stats}


def test_the_page_in_a_real_browser_decodes_what_the_user_moves(grey_server: Server) -> None:
    result = explore_in_browser(grey_server.url, ARTIFACTS / "explorer-grey-28px.png")
    digests = result["digests"]
    assert result["errors"] == []
    assert len(set(digests.values())) == 4, digests  # every step changed the decoded image
    assert (ARTIFACTS / "explorer-grey-28px.png").stat().st_size > 20_000


def test_the_page_works_the_same_for_a_colour_64px_model(colour_run: Path) -> None:
    server = Server(colour_run)
    try:
        result = explore_in_browser(server.url, ARTIFACTS / "explorer-colour-64px.png")
    finally:
        server.stop()
    assert result["errors"] == []
    assert len(set(result["digests"].values())) == 4, result["digests"]


def test_the_page_says_a_pixelcnn_draws_pixel_by_pixel_and_shows_progress() -> None:
    server = Server(PIXELCNN_RUN)
    manager, executable = browser()
    try:
        with manager as p:
            chromium = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = chromium.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url)
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            assert page.is_visible("#ar-notice") and "pixel by pixel" in page.inner_text("#ar-notice")
            assert page.is_disabled("#traverse-button")
            page.wait_for_function("() => !window.explorer.decoder.busy && !window.explorer.decoder.pending")
            progress = page.evaluate("window.explorer.decoder.progress")  # the bar's last values
            assert progress[-1] == 1 and len(progress) >= 10 and progress == sorted(progress)
            page.click("#sample-button")
            page.wait_for_function("document.querySelectorAll('#samples img').length === 4")
            chromium.close()
    finally:
        server.stop()
    assert errors == []
