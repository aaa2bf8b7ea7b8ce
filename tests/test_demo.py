"""`nnseal demo` end to end, at the settings the README's first command uses."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nnseal.cli import main


def test_demo_runs_end_to_end_and_every_verdict_is_as_expected(tmp_path) -> None:
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    results = json.loads((out / "results.json").read_text())
    by_copy = {row["copy"]: row for row in results["rows"]}
    assert by_copy["original (torch)"]["status"] == "intact"
    onnx = by_copy["exported ONNX in ONNX Runtime"]
    assert onnx["status"] == "intact" and onnx["verdicts"]["top1"]["status"] == "intact"
    tampered = [row for row in results["rows"] if row["expected"] == "tampered"]
    assert len(tampered) >= 5 and all(row["status"] == "tampered" for row in tampered)
    for name in ("model.safetensors", "model.onnx", "fingerprint.nnseal", "fingerprint.png", "report.md"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "![fingerprint](fingerprint.png)" in report and "| one head weight +1%" in report
    assert (out / "fingerprint.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert len({line.replace("\\|", "").count("|") for line in rows}) == 1  # no cell splits its row
    assert "(largest \\|w\\|)" in report


def test_markdown_cells_cannot_split_a_row_and_grids_are_labelled() -> None:
    import numpy as np

    from nnseal.report import image_grid, markdown_table

    table = markdown_table(["a", "b"], [["x | y", 1]])
    assert table.splitlines()[2] == "| x \\| y | 1 |"
    imgs = np.zeros((3, 1, 8, 8), np.float32)
    plain = image_grid([imgs, imgs], scale=2)
    labelled = image_grid([imgs, imgs], scale=2, labels=["seeds", "sensitive samples"])
    assert labelled.height == plain.height and labelled.width > plain.width
    margin = np.asarray(labelled)[:, : labelled.width - plain.width]
    assert (margin < 128).any()  # text was drawn in the margin
    with pytest.raises(ValueError, match="2 labels for 1 rows"):
        image_grid([imgs], labels=["a", "b"])
