"""The demo end to end."""

from __future__ import annotations

from pathlib import Path

from conftest import png, run_cli


def test_demo_writes_every_figure_and_an_index(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    code, result, _ = run_cli(["demo", "--out", str(out), "--epochs", "1", "--device", "cpu"], capsys)
    assert code == 0 and Path(result["index"]).is_file()
    html = Path(result["index"]).read_text()
    for name, path in result["figures"].items():
        if name != "loss_curves":
            assert Path(path).name in html
        assert png(path).std() > 10, name
    assert set(result["runs"]) == {"ae-2d", "vae-2d", "vae-16d"}
    for name, report in result["reports"].items():  # each model's full report, linked from the index
        assert Path(report) == out / "runs" / name / "report.html" and Path(report).stat().st_size > 50_000
        assert f"href='runs/{name}/report.html'" in html
    # a second demo into the same folder replaces it; a foreign non-empty folder is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run_cli(["demo", "--out", str(other), "--epochs", "1"], capsys)
    assert code == 2 and "not empty" in err and (other / "notes.txt").read_text() == "mine"
