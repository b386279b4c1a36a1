"""Where a Danbooru post's image lies under an image root: the folder layouts Danbooru images are published in.

A layout is one or two path patterns of a post (id, md5, file_ext), relative to the image root (docs/build.md,
"Danbooru as published"):

- ``flat``: ``<md5>.<ext>``, ``<id>.<ext>`` (a folder of downloads);
- ``original``: ``original/<bucket>/<id>.<ext>``, ``<bucket>/<id>.<ext>`` (Danbooru2019/2020/2021 full-size
  release; ``<bucket>`` is the id modulo 1000 in four digits, ``1234123`` -> ``0123``);
- ``512px``: ``512px/<bucket>/<id>.jpg``, ``<bucket>/<id>.jpg`` (the 512px release re-encodes every post as
  JPEG, whatever its ``file_ext``);
- ``cdn``: ``<md5[0:2]>/<md5[2:4]>/<md5>.<ext>`` (Danbooru's own file server).

Each layout is given both with its release folder (``original/``) and without (an image root that *is* that
folder). ``auto`` tries every pattern, most-found first: the pattern that found the most files so far is tried
first, so once the layout of a collection shows (its first post), each further post costs one ``lstat``; a
post whose file is under no pattern costs one per pattern and is reported with every path tried.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..errors import ImageError, SameIdError
from ..images import OUTSIDE_ROOT, resolve_inside

#: The values of ``--layout``; ``auto`` tries them all.
LAYOUTS = ("auto", "flat", "original", "512px", "cdn")


def _bucket(post_id: str) -> str | None:
    return f"{int(post_id) % 1000:04d}" if post_id.isascii() and post_id.isdigit() else None


# A pattern: (id, md5 or None, file_ext, bucket or None) -> a path relative to the root, or None when the post
# has no path under it (no md5, or an id that is not a number).
Pattern = Callable[[str, "str | None", str, "str | None"], "str | None"]


def _md5_name(post_id, md5, ext, bucket):
    return f"{md5}.{ext}" if md5 else None


def _id_name(post_id, md5, ext, bucket):
    return f"{post_id}.{ext}"


def _bucketed(prefix: str, jpeg: bool) -> Pattern:
    def pattern(post_id, md5, ext, bucket):
        return None if bucket is None else f"{prefix}{bucket}/{post_id}.{'jpg' if jpeg else ext}"
    return pattern


def _cdn(post_id, md5, ext, bucket):
    return f"{md5[0:2]}/{md5[2:4]}/{md5}.{ext}" if md5 and len(md5) > 4 else None


def _plain(post_id: str, md5: str | None, ext: str) -> bool:
    """Whether every pattern path of the post is already normal and inside the root (no separator in its
    fields, no ``..`` among the md5's directory parts): the common case, which needs no lexical check."""
    for text in (post_id, md5 or "", ext):
        if "/" in text or os.sep in text or (os.altsep and os.altsep in text) or "\0" in text:
            return False
    return not md5 or (md5[0:2] not in ("..", ".") and md5[2:4] not in ("..", "."))


#: (layout, pattern) in the order ``auto`` tries them before any file is found.
PATTERNS: tuple[tuple[str, Pattern], ...] = (
    ("flat", _md5_name),
    ("flat", _id_name),
    ("original", _bucketed("original/", jpeg=False)),
    ("original", _bucketed("", jpeg=False)),
    ("512px", _bucketed("512px/", jpeg=True)),
    ("512px", _bucketed("", jpeg=True)),
    ("cdn", _cdn),
)


class InsideRoot:
    """Joins relative paths to a root and refuses those that escape it, with the verdict of
    :func:`sameid.images.resolve_inside` but without resolving every path: a lexically inside path can only
    escape through a symbolic link, so only paths with a link among their components are fully resolved."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.prefix = str(self.root)
        self._directory_is_link: dict[str, bool] = {}

    def check(self, relative: str) -> str:
        """``relative`` normalised; raises ImageError(OUTSIDE_ROOT) when it leaves the root lexically."""
        normalized = os.path.normpath(relative)
        if os.path.isabs(normalized) or normalized == os.pardir or normalized.startswith(os.pardir + os.sep):
            raise ImageError(OUTSIDE_ROOT, f"{relative!r} is outside {self.prefix}")
        return normalized

    def join(self, relative: str, normal: bool = False) -> tuple[str, bool]:
        """(absolute path, whether it is an existing regular file); raises ImageError(OUTSIDE_ROOT). ``normal``:
        ``relative`` is known to be normalised and lexically inside (skips :meth:`check`)."""
        normalized = relative if normal else self.check(relative)
        path = os.path.join(self.prefix, normalized)
        directory = self.prefix
        for part in normalized.split(os.sep)[:-1]:
            directory = os.path.join(directory, part)
            is_link = self._directory_is_link.get(directory)
            if is_link is None:
                is_link = self._directory_is_link[directory] = os.path.islink(directory)
            if is_link:
                return self._resolved(relative)
        try:
            status = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the path
            return path, False
        if stat.S_ISLNK(status.st_mode):
            return self._resolved(relative)
        return path, stat.S_ISREG(status.st_mode)

    def _resolved(self, relative: str) -> tuple[str, bool]:
        resolved = resolve_inside(self.root, relative)
        return str(resolved), resolved.is_file()


class LayoutResolver:
    """Finds the file of each post under the patterns of ``layout`` (``auto``: all), most-found pattern first."""

    def __init__(self, root: str | os.PathLike, layout: str = "auto"):
        if layout not in LAYOUTS:
            raise SameIdError(f"unknown Danbooru layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        self.layout = layout
        self.inside = InsideRoot(Path(root))
        self.patterns = [pattern for name, pattern in PATTERNS if layout in ("auto", name)]
        self.found = [0] * len(self.patterns)
        self.order = list(range(len(self.patterns)))

    def find(self, post_id: str, md5: str | None, ext: str) -> tuple[str | None, list[str]]:
        """(absolute path of the post's file, []) when found, else (the absolute path under the most-found
        pattern, the relative paths tried, in the order of :data:`PATTERNS`). Raises ImageError(OUTSIDE_ROOT)
        when any of the post's paths leaves the root (metadata that points outside is not trusted at all)."""
        bucket = _bucket(post_id)
        plain = _plain(post_id, md5, ext)
        if not plain:
            for pattern in self.patterns:
                path = pattern(post_id, md5, ext, bucket)
                if path is not None:
                    self.inside.check(path)
        first = None
        for position, index in enumerate(self.order):
            relative = self.patterns[index](post_id, md5, ext, bucket)
            if relative is None:
                continue
            candidate, exists = self.inside.join(relative, normal=plain)
            if exists:
                self._count(position, index)
                return candidate, []
            first = first or candidate
        tried = [pattern(post_id, md5, ext, bucket) for pattern in self.patterns]
        return first, list(dict.fromkeys(path for path in tried if path is not None))

    def _count(self, position: int, index: int) -> None:
        self.found[index] += 1
        if position and self.found[index] > self.found[self.order[position - 1]]:
            self.order.sort(key=lambda i: (-self.found[i], i))

    def describe(self) -> str:
        """Which layouts were searched, for a message."""
        return "any Danbooru layout" if self.layout == "auto" else f"the {self.layout} layout"
