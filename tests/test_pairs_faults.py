"""Issue 11, pairs and audit: bad dataset dirs and bad pairs tables get one line naming the file and the rows, a
`similar` list that crosses identities is never used, the audit checks every reference's identity, and a failed
`sameid pairs` leaves nothing behind.

The dataset dirs are written here (two identities of three 48x64 colour fields), so every fault is planted exactly.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from sameid.cli import app
from sameid.errors import SameIdError
from sameid.images import perceptual_hash
from sameid.pairs.audit import audit_pairs
from sameid.pairs.dataset import PairsConfig, PairsDataset
from sameid.pairs.manifest import load_manifest

runner = CliRunner()
IDENTITIES = {"alice": 3, "bob": 3}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The CLI's error: exactly one line, starting with "error:"."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def write_dataset(root, edit=None):
    """A dataset dir of ``IDENTITIES``; ``edit(rows)`` changes the manifest rows before they are written."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for identity, count in IDENTITIES.items():
        ids = [f"{identity}_{k}" for k in range(count)]
        for identifier in ids:
            grid = rng.integers(0, 256, size=(4, 3, 3), dtype=np.uint8)
            image = Image.fromarray(grid).resize((48, 64), Image.BILINEAR)
            image.save(root / "images" / f"{identifier}.png")
            rows.append({"id": identifier, "image": f"images/{identifier}.png", "identity": identity,
                         "similar": [o for o in ids if o != identifier], "caption": identifier, "tags": ["1girl"],
                         "head_box": [16.0, 2.0, 32.0, 18.0], "mask": None, "width": 48, "height": 64,
                         "phash": perceptual_hash(image)})
    if edit is not None:
        edit(rows)
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "dataset")


# -- reading a dataset dir --------------------------------------------------------------------------------------


def test_a_garbage_or_truncated_manifest_is_one_line_and_pairs_writes_nothing(dataset, tmp_path):
    manifest = dataset / "manifest.parquet"
    whole = manifest.read_bytes()
    for broken in (b"this is not parquet", whole[: len(whole) // 2]):
        manifest.write_bytes(broken)
        with pytest.raises(SameIdError, match=r"manifest\.parquet: not a readable parquet file.*sameid build"):
            load_manifest(dataset)
        out = tmp_path / "pairs.parquet"
        line = error_line(invoke("pairs", dataset, "--out", out))
        assert "not a readable parquet file" in line
        assert list(tmp_path.glob("pairs*")) == []


def set_value(identifier, column, value):
    def edit(rows):
        for row in rows:
            if row["id"] in identifier:
                row[column] = value
    return edit


@pytest.mark.parametrize("column, value, message", [
    ("width", None, r"column 'width' is not a positive whole number of pixels in 2 rows \('alice_1', 'bob_2'\)"),
    ("height", 0, r"column 'height' is not a positive whole number of pixels in 2 rows"),
    ("image", None, r"column 'image' is empty in 2 rows \('alice_1', 'bob_2'\)"),
    ("identity", None, r"column 'identity' is empty in 2 rows"),
])
def test_a_null_required_value_names_the_column_and_the_rows(tmp_path, column, value, message):
    dataset = write_dataset(tmp_path / "d", set_value(("alice_1", "bob_2"), column, value))
    with pytest.raises(SameIdError, match=message) as caught:
        load_manifest(dataset)
    assert str(dataset / "manifest.parquet") in str(caught.value) and "\n" not in str(caught.value)
    line = error_line(invoke("audit", dataset))
    assert column in line and "alice_1" in line


def test_a_null_id_names_the_row_number(tmp_path):
    dataset = write_dataset(tmp_path / "d", set_value(("bob_0",), "id", None))
    with pytest.raises(SameIdError, match=r"column 'id' is empty in row number 3"):
        load_manifest(dataset)


def test_similar_naming_unknown_ids_lists_the_first_rows(tmp_path):
    def edit(rows):
        for row in rows[:4]:
            row["similar"] = list(row["similar"]) + [f"ghost_{row['id']}"]
    dataset = write_dataset(tmp_path / "d", edit)
    with pytest.raises(SameIdError, match=r"column 'similar' names ids that are not in the manifest \(row 'alice_0' "
                                          r"names 'ghost_alice_0', .* and 1 more\)"):
        load_manifest(dataset)


def test_a_missing_required_column_is_named(tmp_path):
    dataset = write_dataset(tmp_path / "d", lambda rows: [row.pop("phash") for row in rows])
    assert "missing required column 'phash'" in error_line(invoke("pairs", dataset, "--out", tmp_path / "p.parquet"))


# -- `similar` across identities ----------------------------------------------------------------------------------


def crossing(rows):
    """alice_0 lists bob_1, and bob_2 lists alice_2: both break the contract."""
    rows[0]["similar"] = list(rows[0]["similar"]) + ["bob_1"]
    rows[5]["similar"] = list(rows[5]["similar"]) + ["alice_2"]


def test_similar_naming_another_identity_is_dropped_with_one_warning(tmp_path, caplog):
    dataset = write_dataset(tmp_path / "d", crossing)
    with caplog.at_level(logging.WARNING, logger="sameid"):
        manifest = load_manifest(dataset)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 2 'similar' entries" in warnings[0]
    assert manifest.cross_identity_similar == [("alice_0", "bob_1"), ("bob_2", "alice_2")]
    examples = PairsDataset(manifest, PairsConfig(n_references=4, shortfall="repeat"))
    frame = examples.pairs_frame(epochs=20)  # 4 references from 2 eligible: every eligible one is drawn
    identity_of = dict(zip(manifest.ids, manifest.identities))
    assert all(identity_of[ref] == identity_of[target]
               for target, refs in zip(frame["target_id"], frame["reference_ids"]) for ref in refs)
    assert audit_pairs(manifest, frame).identity_errors.empty

    result = invoke("audit", dataset, "--n-references", 2, "--epochs", 5, "--fail-on-leak")
    assert result.exit_code == 0, result.output
    assert "another identity than the target's: 0 in 0 pair(s)" in result.output
    assert "manifest 'similar' entries naming another identity (dropped, never sampled): 2" in result.output


def test_audit_reports_a_pairs_table_that_pairs_a_target_with_another_identity(dataset, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    assert invoke("pairs", dataset, "--out", pairs, "--n-references", 2).exit_code == 0
    frame = pd.read_parquet(pairs)
    clean = invoke("audit", dataset, "--pairs", pairs, "--fail-on-leak")
    assert clean.exit_code == 0 and "another identity than the target's: 0 in 0 pair(s)" in clean.output

    target = frame["target_id"] == "alice_1"
    frame.loc[target, "reference_ids"] = pd.Series([["alice_0", "bob_1"]] * int(target.sum()),
                                                   index=frame.index[target])
    frame.to_parquet(pairs)
    report = tmp_path / "audit.json"
    result = invoke("audit", dataset, "--pairs", pairs, "--json", report, "--fail-on-leak")
    assert result.exit_code == 1, result.output
    assert "0 leaking pair(s)" in result.output  # not a leak: the wrong subject
    assert "another identity than the target's: 1 in 1 pair(s)" in result.output
    assert "reference bob_1 is bob" in result.output
    written = json.loads(report.read_text())
    assert written["summary"]["wrong_identity_references"] == 1
    assert written["identity_errors"][0]["reference_id"] == "bob_1"
    assert invoke("audit", dataset, "--pairs", pairs).exit_code == 0  # reported, not failed, without the flag


def test_a_pairs_table_with_null_references_is_one_line(dataset, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    pd.DataFrame({"target_id": ["alice_0", "bob_0"], "reference_ids": [["alice_1"], None]}).to_parquet(pairs)
    assert "'reference_ids' is not a list of ids" in error_line(invoke("audit", dataset, "--pairs", pairs))


# -- outputs ------------------------------------------------------------------------------------------------------


def test_pairs_leaves_nothing_behind_when_an_image_cannot_be_read(dataset, tmp_path):
    (dataset / "images" / "alice_1.png").unlink()  # pairs are planned from the manifest; the sheet reads pixels
    out = tmp_path / "out" / "pairs.parquet"
    line = error_line(invoke("pairs", dataset, "--out", out, "--n-references", 2))
    assert "alice_1.png" in line
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_audit_json_to_an_unwritable_path_is_refused_before_the_audit(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("user data")
    missing_dataset = tmp_path / "nowhere"  # the audit would fail on it: the --json check comes first
    line = error_line(invoke("audit", missing_dataset, "--json", blocker / "report.json"))
    assert line.startswith("error: --json") and "is a file, not a folder" in line
    line = error_line(invoke("audit", missing_dataset, "--json", tmp_path))
    assert line.startswith("error: --json") and "is a folder" in line
    assert blocker.read_text() == "user data"


@pytest.mark.parametrize("command", ["pairs", "audit"])
@pytest.mark.parametrize("epochs", [0, -2])
def test_epochs_below_one_is_refused(dataset, tmp_path, command, epochs):
    extra = ("--out", tmp_path / "p.parquet") if command == "pairs" else ()
    line = error_line(invoke(command, dataset, *extra, "--epochs", epochs))
    assert f"--epochs must be at least 1, got {epochs}" in line
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize("command", ["pairs", "audit"])
def test_dataset_dir_that_is_missing_a_file_or_without_manifest(tmp_path, command):
    extra = ("--out", tmp_path / "p.parquet") if command == "pairs" else ()
    assert "no such folder" in error_line(invoke(command, tmp_path / "nowhere", *extra))
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in error_line(invoke(command, tmp_path / "file", *extra))
    (tmp_path / "empty").mkdir()
    assert "manifest.parquet not found" in error_line(invoke(command, tmp_path / "empty", *extra))
