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


def test_demo_runs_every_stage_and_says_where(tmp_path):
    args = ["demo", "--out", str(tmp_path / "demo"), "--workers", "2", "--steps", "1", "--inference-steps", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for stage in ("1/6 sample", "3/6 audit", "4/6 train", "6/6 eval"):
        assert stage in result.output
    assert f"report: {tmp_path / 'demo' / 'eval' / 'report.html'}" in result.output
    assert (tmp_path / "demo" / "dataset" / "manifest.parquet").is_file()
    # a second run replaces the demo's own outputs instead of refusing
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output


def test_demo_refuses_outputs_it_did_not_write(tmp_path):
    (tmp_path / "demo" / "run").mkdir(parents=True)
    (tmp_path / "demo" / "run" / "mine.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--steps", "1"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (tmp_path / "demo" / "run" / "mine.txt").read_text() == "mine"


def test_export_into_a_non_empty_folder_is_refused_before_any_work(tmp_path, sample):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["build", str(sample.metadata), "--image-root", str(sample.image_root), "--out",
                                 str(tmp_path / "o"), "--export-hf", str(target), "--quiet"])
    assert result.exit_code == 2 and "--export-hf" in result.output
    assert not (tmp_path / "o" / ".work" / "annotations").exists()
    assert (target / "keep.txt").read_text() == "mine"
