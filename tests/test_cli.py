"""The command line: help for every option, and one clear line (exit code 2) for user errors."""

from typer.testing import CliRunner

from sameid.cli import app

runner = CliRunner()


def test_help_lists_the_build_options():
    result = runner.invoke(app, ["build", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--image-root", "--grouping", "--vqa", "--resume", "--engine", "--export-hf"):
        assert option in result.output


def test_missing_source_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["build", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "absent.jsonl" in result.output and "Traceback" not in result.output


def test_unknown_backend_names_the_choices(tmp_path, sample):
    result = runner.invoke(app, ["build", str(sample.metadata), "--image-root", str(sample.image_root), "--out", str(tmp_path / "o"), "--vqa", "oracle",
                                 "--workers", "1", "--quiet"])
    assert result.exit_code == 2
    assert "pixel-colors" in result.output and "transformers" in result.output


def test_wrong_image_root_is_one_clear_line(tmp_path, sample):
    result = runner.invoke(app, ["build", str(sample.metadata), "--image-root", str(tmp_path), "--out",
                                 str(tmp_path / "o"), "--workers", "1", "--quiet"])
    assert result.exit_code == 2
    assert "--image-root" in result.output


def test_demo_builds_the_sample_and_says_where(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "demo" / "dataset") in result.output
    manifest = tmp_path / "demo" / "dataset" / "manifest.parquet"
    assert manifest.is_file()
    # a second run replaces the demo's own outputs instead of refusing
    again = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--workers", "2"])
    assert again.exit_code == 0, again.output


def test_export_into_a_non_empty_folder_is_refused_before_any_work(tmp_path, sample):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["build", str(sample.metadata), "--image-root", str(sample.image_root), "--out",
                                 str(tmp_path / "o"), "--export-hf", str(target), "--quiet"])
    assert result.exit_code == 2 and "--export-hf" in result.output
    assert not (tmp_path / "o" / ".work" / "annotations").exists()
    assert (target / "keep.txt").read_text() == "mine"
