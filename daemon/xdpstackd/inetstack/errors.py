"""The one error family the wire parsers raise, so callers catch exactly one thing."""


class ParseError(ValueError):
    """A frame or header is truncated, inconsistent or otherwise malformed.

    ``reason`` is a short snake_case token suitable as a drop-counter suffix.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class ChecksumError(ParseError):
    """The header or segment checksum does not verify."""
