"""The one atomic writer: the finished file has a plain file's mode, a failed write leaves the old file."""

from __future__ import annotations

import os
import stat

import pytest

from sameid.atomic import is_temporary, write_text_atomic


def test_written_file_has_the_mode_a_plain_open_gives(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_text_atomic(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(os.stat(written).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    from sameid.atomic import write_atomic

    target = write_text_atomic(tmp_path / "data.txt", "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(target, broken)
    assert target.read_text() == "old"
    assert not any(is_temporary(p.name) for p in tmp_path.iterdir())
