"""Output directory safety and near-duplicate cleaning."""

import pandas as pd
import pytest

from sameid.dataset.clean import NO_DISTINCT_SIBLING, SINGLE_IMAGE, drop_unreferenceable
from sameid.dataset.writer import prepare_output_dir
from sameid.errors import SameIdError


def test_output_dir_is_never_clobbered(tmp_path):
    out = tmp_path / "ds"
    prepare_output_dir(out, {"a": 1}, resume=False, overwrite=False)
    (out / "manifest.parquet").write_text("old")
    with pytest.raises(SameIdError, match="--resume"):
        prepare_output_dir(out, {"a": 1}, resume=False, overwrite=False)
    with pytest.raises(SameIdError, match="a changed"):
        prepare_output_dir(out, {"a": 2}, resume=True, overwrite=False)
    prepare_output_dir(out, {"a": 1}, resume=True, overwrite=False)
    assert (out / "manifest.parquet").read_text() == "old"
    (out / "my_notes.txt").write_text("precious")
    with pytest.raises(SameIdError, match="did not write"):
        prepare_output_dir(out, {"a": 1}, resume=False, overwrite=True)
    assert (out / "my_notes.txt").read_text() == "precious"
    (out / "my_notes.txt").unlink()
    prepare_output_dir(out, {"a": 3}, resume=False, overwrite=True)
    assert not (out / "manifest.parquet").exists()


def test_near_duplicates_are_marked_and_unreferenceable_rows_rejected():
    frame = pd.DataFrame({
        "id": ["a1", "a2", "a3", "b1", "b2", "c1"],
        "identity": ["a", "a", "a", "b", "b", "c"],
        # a1/a2 differ by 1 bit: near-duplicates; a3 is distinct; b1/b2 near-duplicates only; c alone
        "phash": ["ffff000000000000", "ffff000000000001", "0000ffffffff0000", "00000000000000ff",
                  "00000000000000fe", "1234123412341234"],
    })
    kept, rejected = drop_unreferenceable(frame, max_bits=6)
    assert kept["id"].tolist() == ["a1", "a2", "a3"]
    assert kept["near_duplicates"].tolist() == [["a2"], ["a1"], []]
    reasons = dict(zip(rejected["id"], rejected["reason"]))
    assert reasons == {"b1": NO_DISTINCT_SIBLING, "b2": NO_DISTINCT_SIBLING, "c1": SINGLE_IMAGE}


def test_overwrite_is_staged_beside_the_earlier_build_and_swapped_in(tmp_path):
    from sameid.dataset.writer import plan_output, staging_dir

    out = tmp_path / "ds"
    plan_output(out, {"a": 1}, resume=False, overwrite=False).start()
    (out / "manifest.parquet").write_text("old")
    plan = plan_output(out, {"a": 2}, resume=False, overwrite=True)
    assert plan.staged and plan.build_dir == staging_dir(out) and not plan.build_dir.exists()
    plan.start()
    (plan.build_dir / "manifest.parquet").write_text("new, half done")
    assert (out / "manifest.parquet").read_text() == "old"  # untouched until the new build is complete
    with pytest.raises(SameIdError, match="a changed"):
        plan_output(out, {"a": 3}, resume=True, overwrite=False)
    resumed = plan_output(out, {"a": 2}, resume=True, overwrite=False)
    assert resumed.build_dir == staging_dir(out)
    resumed.start()
    resumed.finish()
    assert (out / "manifest.parquet").read_text() == "new, half done"
    assert not staging_dir(out).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_a_readme_a_build_did_not_write_is_not_overwritten(tmp_path):
    from sameid.dataset.writer import plan_output

    out = tmp_path / "ds"
    out.mkdir()
    (out / "README.md").write_text("# my notes\n")
    with pytest.raises(SameIdError, match="did not write"):
        plan_output(out, {}, resume=False, overwrite=True)
    (out / "README.md").write_text("---\ntags:\n- sameid\n---\n")
    assert plan_output(out, {}, resume=False, overwrite=True).staged
