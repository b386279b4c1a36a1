"""Errors a user can act on. Each message names the file or row and says what to do."""


class SameIdError(Exception):
    """Base class: an error caused by user input or environment, reported without a traceback by the CLI."""


class ImageError(SameIdError):
    """An image that cannot be used. ``reason`` is the short code written to ``rejected.parquet``."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class MissingModelError(SameIdError):
    """A backend whose weights or package are not on this machine; the message says how to get them."""


class SchemaError(SameIdError):
    """A table (metadata, manifest) lacks a column or has a malformed value."""
