"""Per-image attribute labels from a CSV, laid out as CelebA's attribute list: the image file name
first, then one column per attribute: numbers (CelebA writes 1 / -1; a decimal comma where commas
do not separate the columns), or yes / no, true / false (read as 1 / 0); an empty cell is an
unknown value (NaN). UTF-8 or Windows-1252 text. Columns are separated by
commas, semicolons, tabs or spaces (whichever the header uses), and CelebA's own
``list_attr_celeba.txt`` reads as it is: a line with the number of images, a line of attribute
names, then a row per image, separated by spaces.

Names match an image by its path relative to the folder (``faces/0001.jpg``) or, when that is
unambiguous, by its file name alone (``0001.jpg``). Images the CSV does not list get NaN.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vaelab.data.folder import list_images
from vaelab.errors import VaelabError


def read_labels_csv(path: str | Path, image_paths: list[str], folder: str | Path) -> dict[str, np.ndarray]:
    """The attribute columns of `path` for the images `image_paths` (files under `folder`), as
    name -> float array [N] (NaN where an image is not listed)."""
    path, folder = Path(path), Path(folder).expanduser()
    if not path.is_file():
        raise VaelabError(f"labels file {path} does not exist; give a CSV of file name, then attributes")
    rows, separator = _read_rows(path)
    decimal_comma = separator != ","  # 0,5 for 0.5, as spreadsheets in many locales write it
    if len(rows) < 2 or len(rows[0]) < 2:
        raise VaelabError(f"{path} needs a header and rows of: file name, then one column per attribute")
    header, rows = [h.strip() for h in rows[0]], rows[1:]
    files = [p.relative_to(folder).as_posix() for p in list_images(folder)]
    by_name: dict[str, str] = {}
    for relative in files:
        by_name.setdefault(Path(relative).name, relative)
        by_name[relative] = relative
    index: dict[str, list[float]] = {}
    missing = []
    for row in rows:
        name = row[0].strip().replace("\\", "/")
        if name not in by_name:
            missing.append(name)
            continue
        if by_name[name] in index:
            raise VaelabError(f"{path} has two rows for {name}; keep one row per image")
        if len(row) != len(header):
            raise VaelabError(f"{path}: the row of {name} has {len(row)} columns, the header {len(header)}")
        index[by_name[name]] = [
            _value(cell, path, name, column, decimal_comma) for cell, column in zip(row[1:], header[1:])
        ]
    if missing:
        if len(missing) == len(rows):
            raise VaelabError(
                f"{path}: no row names an image of {folder} (first column {header[0]!r}, e.g. {missing[0]!r}); "
                "the first column must be the image file name"
            )
        raise VaelabError(
            f"{path} names {len(missing)} files that are not in {folder} (e.g. {missing[0]!r}); "
            "remove those rows or add the images"
        )
    table = np.full((len(image_paths), len(header) - 1), np.nan)
    for i, image in enumerate(image_paths):
        values = index.get(Path(image).resolve().relative_to(folder.resolve()).as_posix())
        if values is not None:
            table[i] = values
    return {name: table[:, j] for j, name in enumerate(header[1:])}


YES_NO = {"yes": 1.0, "y": 1.0, "true": 1.0, "t": 1.0, "no": 0.0, "n": 0.0, "false": 0.0, "f": 0.0}


def _value(cell: str, path: Path, name: str, column: str, decimal_comma: bool = False) -> float:
    """One attribute value: a number (with a decimal comma too, where commas do not separate
    columns), yes / no or true / false (1 / 0), or empty (NaN: unknown)."""
    cell = cell.strip()
    if not cell:
        return float("nan")
    if cell.lower() in YES_NO:
        return YES_NO[cell.lower()]
    if decimal_comma and cell.count(",") == 1 and "." not in cell:
        cell = cell.replace(",", ".")
    try:
        return float(cell)
    except ValueError:
        raise VaelabError(
            f"{path}: {column} of {name} is {cell!r}; attribute values must be numbers, yes / no or "
            "true / false (one column per category for names)"
        ) from None


def _read_rows(path: Path) -> tuple[list[list[str]], str]:
    """The header and rows of a labels file, split by the separator its header uses (returned
    too, " " for spaces); CelebA's list_attr_celeba.txt (a count line, attribute names without a
    name column) gets one. UTF-8 (with or without Excel's byte-order mark), else Windows-1252,
    the other encoding spreadsheets save CSV in."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            raise VaelabError(
                f"{path} is neither UTF-8 nor Windows-1252 text; save it as UTF-8 CSV"
            ) from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) >= 2 and lines[0].strip().isdigit():  # CelebA's layout
        rows = [line.split() for line in lines[2:]]
        if int(lines[0]) != len(rows):
            raise VaelabError(
                f"{path} says it lists {int(lines[0])} images but has {len(rows)} rows; restore the file"
            )
        return [["image_id", *lines[1].split()], *rows], " "
    separator = next((c for c in ",;\t" if c in lines[0]), None) if lines else ","
    if separator is None:  # spaces
        return [line.split() for line in lines], " "
    return [
        [cell.strip() for cell in row] for row in csv.reader(lines, delimiter=separator) if row
    ], separator
