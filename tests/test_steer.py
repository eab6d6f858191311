"""Traversals, attribute vectors and edits on a small colour model trained on a folder of
generated shapes (with a CelebA-style labels CSV), and the disentanglement score it gets."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaelab
from conftest import png, run_cli, write_shapes_folder
from vaelab import checkpoint
from vaelab.apps.steer import current_attributes, load_attributes
from vaelab.cli import main
from vaelab.config import PLAIN_TRAINING
from vaelab.data import shapes
from vaelab.data.labels import read_labels_csv
from vaelab.errors import VaelabError
from vaelab.latent import embed_images

N_IMAGES, SIZE = 2000, 16


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """N_IMAGES shapes as 16 px PNGs, with labels.csv: file name, big (1 / -1), size, rotation, x."""
    columns = {
        "big": lambda f, i: 1 if f["size"][i] > 0.16 else -1,
        "size": lambda f, i: f"{f['size'][i]:.5f}",
        "rotation": lambda f, i: f"{f['rotation'][i]:.3f}",
        "x": lambda f, i: f"{f['x'][i]:.5f}",
    }
    return write_shapes_folder(tmp_path_factory.mktemp("shapes"), N_IMAGES, SIZE, columns)


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory: pytest.TempPathFactory, shapes_folder: tuple[Path, Path]) -> Path:
    """A 6-D VAE with the discretized logistic likelihood, 16 px colour shapes, 20 epochs (seconds)."""
    run = tmp_path_factory.mktemp("runs") / "colour"
    settings = {**PLAIN_TRAINING, "loss": "dlogistic", "batch_size": 32}
    vaelab.train(run, dataset=f"folder:{shapes_folder[0]}", image_size=SIZE, latent_dim=6, epochs=20,
                 device="cpu", progress=False, **settings)  # fmt: skip
    return run


def test_traverse_shows_the_most_informative_coordinates_first(colour_run: Path, tmp_path: Path) -> None:
    result = vaelab.traverse(colour_run, out=tmp_path / "t.png", rows=4, steps=5)
    kl = result["kl_per_dim"]
    assert len(result["dims"]) == 4 == len(set(result["dims"])) and kl == sorted(kl, reverse=True)
    assert kl[0] > 0.5  # the model uses its latent
    picture = png(result["out"])
    assert picture.shape[0] > 4 * SIZE and picture.std() > 10  # four rows of images, not a blank
    assert result["values"] == pytest.approx([-3, -1.5, 0, 1.5, 3])


def test_traverse_of_an_ae_covers_every_coordinate(ae_run: Path, tmp_path: Path) -> None:
    result = vaelab.traverse(ae_run, out=tmp_path / "t.png", steps=3)
    assert result["dims"] == [0, 1] and result["kl_per_dim"] is None


def test_attribute_vectors_are_the_mean_difference_or_the_regression_direction(
    colour_run: Path, shapes_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, labels = shapes_folder
    train = vaelab.load_images(f"folder:{folder}", "train", image_size=SIZE)
    codes = embed_images(vaelab.load(colour_run), train.images).double().numpy()
    table = read_labels_csv(labels, train.paths, folder)
    binary = vaelab.attribute(colour_run, factor="big", labels=labels)
    big = table["big"] > 0
    assert (
        binary["kind"] == "binary" and binary["n_with"] == big.sum() and binary["n_without"] == (~big).sum()
    )
    size = vaelab.attribute(colour_run, factor="x", labels=labels, name="right")
    assert size["kind"] == "continuous" and 0 < size["r2"] < 1
    vectors, meta = load_attributes(colour_run)
    assert set(vectors) == {"big", "right"} and meta["right"]["factor"] == "x"
    # Amount 1 of a yes/no attribute takes the mean latent without it to the mean latent with it.
    np.testing.assert_allclose(codes[big].mean(0), codes[~big].mean(0) + vectors["big"].numpy(), atol=1e-5)
    # The continuous direction is each coordinate's slope regressed on x: amount 1 is the average
    # move of the latent when x grows by one unit; projections on it rise with x.
    direction = vectors["right"].double().numpy()
    slopes = np.array([np.polyfit(table["x"], codes[:, j], 1)[0] for j in range(codes.shape[1])])
    np.testing.assert_allclose(direction, slopes, rtol=1e-4, atol=1e-6)
    assert np.corrcoef(codes @ direction, table["x"])[0, 1] > 0
    edit = vaelab.edit(colour_run, attribute="right", amount=0.2, steps=3, n_images=8, out=tmp_path / "e.png")
    assert edit["amounts"] == pytest.approx([-0.2, 0, 0.2]) and png(edit["out"]).std() > 10


def test_attributes_of_earlier_weights_are_refused_and_left_out(
    colour_run: Path, shapes_folder: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Trained further (--resume), a run's latent space moves: an attribute vector found before
    # points elsewhere, and edits along it changed the wrong thing without a word
    _, labels = shapes_folder
    run = tmp_path / "colour"
    shutil.copytree(colour_run, run)
    (run / "attributes.safetensors").unlink(missing_ok=True)  # other tests add theirs to colour_run
    vaelab.attribute(run, factor="big", labels=labels)
    assert current_attributes(run)[2] == []
    settings = {**PLAIN_TRAINING, "loss": "dlogistic", "batch_size": 32}
    vaelab.train(run, resume=True, epochs=22, device="cpu", progress=False, **settings)
    assert checkpoint.weights_epoch(run) > 20  # newer best weights
    with pytest.raises(
        VaelabError, match=r"'big' .*earlier weights \(epoch 20\).*vaelab attribute .* --factor big"
    ):
        vaelab.edit(run, attribute="big", out=tmp_path / "e.png")
    vectors, _, stale = current_attributes(run)
    assert vectors == {} and stale == ["big"]
    with caplog.at_level("WARNING"):
        vaelab.create_app(run, "cpu")  # the explorer offers no slider for it
    assert "attribute vectors found for earlier weights left out: big" in caplog.text
    vaelab.attribute(run, factor="x", labels=labels, name="right")  # found again: used
    assert list(current_attributes(run)[0]) == ["right"]
    vaelab.edit(run, attribute="right", amount=0.2, steps=3, n_images=2, out=tmp_path / "e.png")
    html = Path(vaelab.report(run, out=tmp_path / "r.html", progress=False)["out"]).read_text()
    assert "Left out, found for earlier weights: big" in html


def test_edit_on_an_input_file_and_the_cli(colour_run: Path, shapes_folder: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    folder, labels = shapes_folder
    code, result, _ = run_cli(["attribute", str(colour_run), "--factor", "rotation", "--labels", str(labels),
                               "--name", "turn"], capsys)  # fmt: skip
    assert code == 0 and result["name"] == "turn"
    # Without --json it says what it found and an edit to try: 2 standard deviations of a
    # continuous factor, in its units; amount 1 of a yes/no one.
    assert main(["attribute", str(colour_run), "--factor", "rotation", "--labels", str(labels), "--name", "turn",
                 "--quiet"]) == 0  # fmt: skip
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(
        f"saved attribute 'turn' in {colour_run / 'attributes.safetensors'} (continuous: "
    )
    assert f"predicts rotation linearly with R² = {result['r2']:.2f})" in said[0]
    amount = float(said[1].split("--amount ")[1].split()[0])
    assert amount == pytest.approx(2 * result["factor_std"], rel=0.01) and 10 < amount < 200  # degrees
    assert main(["attribute", str(colour_run), "--factor", "big", "--labels", str(labels), "--quiet"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert re.fullmatch(
        r"saved attribute 'big' in .* \(binary: [\d,]+ images with it, [\d,]+ without\)", said[0]
    )
    assert said[1].startswith(f"try: vaelab edit {colour_run} --attribute big --amount 1  (")
    out = tmp_path / "edit.png"
    code, result, _ = run_cli(["edit", str(colour_run), "--input", str(folder / "0003.png"), "--attribute", "turn",
                               "--amount", "30", "-o", str(out)], capsys)  # fmt: skip
    assert code == 0 and result["n_images"] == 1 and out.exists()


def test_labels_separated_otherwise_or_in_celebas_own_layout_read_alike(
    shapes_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, labels = shapes_folder
    paths = [str(p) for p in sorted(folder.glob("*.png"))]
    expected = read_labels_csv(labels, paths, folder)
    rows = [line.split(",") for line in labels.read_text().splitlines()]
    semicolons, celeba = tmp_path / "labels.csv", tmp_path / "list_attr_celeba.txt"
    semicolons.write_text("".join(";".join(row) + "\n" for row in rows))
    celeba.write_text(f"{len(rows) - 1}\n" + " ".join(rows[0][1:]) + " \n" + "".join(
        f"{row[0]}  " + "  ".join(row[1:]) + "\n" for row in rows[1:]
    ))  # fmt: skip
    for other in (semicolons, celeba):
        table = read_labels_csv(other, paths, folder)
        assert list(table) == ["big", "size", "rotation", "x"]
        assert all(np.array_equal(table[name], expected[name]) for name in table)
    assert set(np.unique(expected["big"])) == {-1.0, 1.0} and not np.isnan(expected["x"]).any()


def test_labels_say_yes_or_no_in_words_and_may_leave_cells_empty(
    shapes_folder: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = shapes_folder[0]
    paths = [str(p) for p in sorted(folder.glob("*.png"))[:5]]
    words = tmp_path / "words.csv"
    words.write_text(
        "file,smiling,glasses\n0000.png,yes,True\n0001.png,No,false\n0002.png, Y ,\n0003.png,0.5,F\n"
    )
    table = read_labels_csv(words, paths, folder)
    np.testing.assert_array_equal(table["smiling"], [1, 0, 1, 0.5, np.nan])  # 0004.png: not listed
    np.testing.assert_array_equal(table["glasses"], [1, 0, np.nan, 0, np.nan])
    hair = tmp_path / "hair.csv"
    hair.write_text("file,hair\n0000.png,1\n0001.png,blond\n")
    with pytest.raises(
        VaelabError, match="hair of 0001.png is 'blond'; attribute values must be numbers, yes / no"
    ):
        read_labels_csv(hair, paths, folder)
    extra = tmp_path / "extra.csv"
    extra.write_text("file,big\n0000.png,1,2\n")
    with pytest.raises(VaelabError, match="the row of 0000.png has 3 columns, the header 2"):
        read_labels_csv(extra, paths, folder)


def test_labels_saved_by_a_spreadsheet_read_in_either_encoding_with_decimal_commas(tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    for name in ("café.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / name)
    paths = [str(folder / name) for name in ("b.png", "c.png", "café.png")]
    text = "image;âge;smiling\ncafé.png;0,5;yes\nb.png;1,25;0\n"
    for name, data in (("win.csv", text.encode("cp1252")), ("utf8.csv", b"\xef\xbb\xbf" + text.encode())):
        (tmp_path / name).write_bytes(data)
        table = read_labels_csv(tmp_path / name, paths, folder)
        assert list(table) == ["âge", "smiling"]
        np.testing.assert_array_equal(table["âge"], [1.25, np.nan, 0.5])
    # where commas separate the columns, a quoted "1,5" may be a thousands separator: not a number
    (tmp_path / "commas.csv").write_text('image,size\nb.png,"1,5"\n')
    with pytest.raises(VaelabError, match="size of b.png is '1,5'"):
        read_labels_csv(tmp_path / "commas.csv", paths, folder)
    (tmp_path / "binary.csv").write_bytes(b"image,size\n\x81\x8d.png,1\n")
    with pytest.raises(VaelabError, match="is neither UTF-8 nor Windows-1252 text; save it as UTF-8 CSV"):
        read_labels_csv(tmp_path / "binary.csv", paths, folder)


def test_a_damaged_attributes_file_is_one_line(colour_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(colour_run, run)
    (run / "attributes.safetensors").write_bytes(b"junk" * 3)
    assert main(["edit", str(run), "--attribute", "big", "--amount", "1", "-o", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run / 'attributes.safetensors'} is damaged (" in err  # then safetensors' own words
    assert err.endswith("; delete it and save the attributes again with `vaelab attribute`")
    assert len(err.splitlines()) == 1 and not (tmp_path / "e.png").exists()


def test_steering_refuses_bad_input_with_one_line(
    colour_run: Path, shapes_folder: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = shapes_folder[1]
    with pytest.raises(VaelabError, match="no factor or attribute 'smile'; known: big, size, rotation, x"):
        vaelab.attribute(colour_run, factor="smile", labels=labels)
    with pytest.raises(VaelabError, match="has no known factors"):
        vaelab.attribute(colour_run, factor="size")
    with pytest.raises(VaelabError, match="has no attribute 'nope'"):
        vaelab.edit(colour_run, attribute="nope")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("image_id,big\nmissing.png,1\n0001.png,1\n")
    with pytest.raises(VaelabError, match="names 1 files that are not in"):
        vaelab.attribute(colour_run, factor="big", labels=wrong)
    twice = tmp_path / "twice.csv"
    twice.write_text("image_id,big\n0001.png,1\n0002.png,1\n0001.png,-1\n")
    with pytest.raises(VaelabError, match="has two rows for 0001.png; keep one row per image"):
        vaelab.attribute(colour_run, factor="big", labels=twice)
    short = tmp_path / "list_attr.txt"
    short.write_text("3\nbig\n0001.png 1\n0002.png -1\n")
    with pytest.raises(VaelabError, match="says it lists 3 images but has 2 rows"):
        vaelab.attribute(colour_run, factor="big", labels=short)
    nameless = tmp_path / "nameless.csv"
    nameless.write_text("big,size\n1,0.2\n-1,0.1\n")
    with pytest.raises(VaelabError, match="the first column must be the image file name"):
        vaelab.attribute(colour_run, factor="big", labels=nameless)
    code, _, err = run_cli(
        ["attribute", str(colour_run), "--factor", "smile", "--labels", str(labels)], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_attribute_on_shapes_factors_and_the_disentanglement_score(colour_run: Path) -> None:
    # The run's 16 px images match shapes rendered at 16 px, so its factors are at hand.
    red = vaelab.attribute(colour_run, factor="hue=0.92:0.08", name="red", dataset="shapes", n_images=3000)
    assert red["kind"] == "binary" and 0.1 < red["n_with"] / red["n_images"] < 0.22  # 16% of hues
    ellipse = vaelab.attribute(colour_run, factor="shape=ellipse", dataset="shapes", n_images=3000)
    assert 0.25 < ellipse["n_with"] / ellipse["n_images"] < 0.42
    result = vaelab.evaluate(colour_run, k=5, n_images=400, dataset="shapes", quality=False, progress=False)
    assert 0 <= result["mig"] <= 1 and set(result["mig_per_factor"]) <= set(shapes.FACTOR_NAMES)
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (3 * SIZE * SIZE * np.log(2)))
    assert 0 < result["png_bits_per_dim"] < 8 and 0 < result["ssim"] <= 1


def test_categorical_values_are_named_and_a_wrong_name_lists_them(colour_run: Path, tmp_path: Path) -> None:
    run = shutil.copytree(colour_run, tmp_path / "run")  # the attributes it saves stay out of the fixture
    names = list(shapes.BACKGROUNDS)
    white = int((shapes.factor_table("train")["background"][:500] == names.index("white")).sum())
    for condition in ("white", "1"):  # a value by its name or by its number
        found = vaelab.attribute(run, factor=f"background={condition}", dataset="shapes", n_images=500)
        assert found["n_with"] == white and found["n_images"] == 500
    with pytest.raises(VaelabError, match="its values: black, white, grey, second colour"):
        vaelab.attribute(run, factor="background=whit", dataset="shapes", n_images=500)
    assert shapes.load_shapes("test", 8).factor_value_names["background"] == names


def test_the_class_of_a_labelled_dataset_is_an_attribute(vae_run: Path, tmp_path: Path, capsys) -> None:
    run = shutil.copytree(vae_run, tmp_path / "run")  # the attributes it saves stay out of the fixture
    seven = vaelab.attribute(run, factor="class=7")
    embedded = np.load(vaelab.embed(run, out=tmp_path / "e.npz", split="train")["out"])
    latents, labels = embedded["latents"], embedded["labels"]
    assert seven["kind"] == "binary" and seven["n_with"] == int((labels == 7).sum()) > 0
    expected = latents[labels == 7].mean(0) - latents[labels != 7].mean(0)  # by another path: embed
    assert np.allclose(load_attributes(run)[0]["class=7"].numpy(), expected, atol=1e-4)
    with pytest.raises(VaelabError, match=r"class is a category, not an amount; give one of its values: class=1 "
                       r"\(its values: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9\)"):  # fmt: skip
        vaelab.attribute(run, factor="class")
    code, result, _ = run_cli(
        ["edit", str(run), "--attribute", "class=7", "-o", str(tmp_path / "e.png")], capsys
    )
    assert code == 0 and png(result["out"]).std() > 10
