"""Reading length-prefixed records from stored files, every length checked first.

A stored file is untrusted input: anyone who can write the store can craft one and
fix up its checksums. So before a reader allocates or reads what a length field
claims, the length is checked against the record type's limit and against the bytes
the file still holds; a violation is an IntegrityError naming the file and the offset.

The stream of a stored file (backstop.tasks.packaging.CheckedStream) tells its `name`
and, as `remaining`, how many decompressed bytes it holds after what was read (the
manifest's raw_bytes minus the bytes read so far); any other binary stream works
too, checked against the limits only.
"""

from __future__ import annotations

from typing import BinaryIO

from backstop.drivers.errors import IntegrityError

READ_BLOCK = 1 << 20


def stream_name(stream: object) -> str:
    """The stored file's name, for messages."""
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) and name else "stored file"


def bytes_left(stream: object) -> int | None:
    """Decompressed bytes the file holds after what was read from it; None: unknown."""
    left = getattr(stream, "remaining", None)
    return left if isinstance(left, int) else None


def check_length(
    stream: object,
    error: type[IntegrityError],
    what: str,
    length: int,
    limit: int,
    at: int,
    buffered: int = 0,
) -> None:
    """Refuse `what` at byte `at` claiming `length` bytes, `buffered` of them already
    in memory, when that exceeds `limit` or what the file still holds."""
    if not 0 <= length <= limit:
        raise error(
            f"{stream_name(stream)}: {what} at byte {at} claims {length:,} bytes "
            f"(at most {limit:,} allowed): the file is damaged or crafted"
        )
    left = bytes_left(stream)
    if left is not None and length - buffered > left:
        raise error(
            f"{stream_name(stream)}: {what} at byte {at} claims {length:,} bytes but the "
            f"file holds only {buffered + left:,} more (truncated or crafted)"
        )


class RecordReader:
    """Buffered reads of length-prefixed fields from a stream.

    The buffer is refilled by joining what is left of it with the blocks read (one
    copy per refill, never one per field), and each length is checked before reading.
    """

    def __init__(self, stream: BinaryIO, error: type[IntegrityError] = IntegrityError) -> None:
        self._stream = stream
        self._error = error
        self._buf = b""
        self._pos = 0
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self.name = stream_name(stream)

    @property
    def offset(self) -> int:
        """The stream offset of the next byte to be taken."""
        return self._base + self._pos

    def fail(self, message: str, at: int | None = None) -> IntegrityError:
        """An error naming the file and the offset (default: the current one)."""
        return self._error(f"{self.name}: {message} at byte {self.offset if at is None else at}")

    def _fill(self, n: int) -> bool:
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        parts = [self._buf[self._pos :]] if have else []
        self._base += self._pos
        while have < n and not self._eof:
            block = self._stream.read(max(READ_BLOCK, n - have))
            if not block:
                self._eof = True
                break
            parts.append(block)
            have += len(block)
        self._buf, self._pos = b"".join(parts), 0
        return have >= n

    def take(self, n: int, what: str, limit: int) -> bytes:
        """The next `n` bytes, holding `what`, after checking `n` against `limit` and
        the bytes the file still holds."""
        if len(self._buf) - self._pos < n:
            check_length(
                self._stream, self._error, what, n, limit, self.offset, len(self._buf) - self._pos
            )
            if not self._fill(n):
                raise self.fail(f"file ends inside {what} (truncated)")
        elif n > limit:
            check_length(self._stream, self._error, what, n, limit, self.offset)
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def text(self, n: int, what: str, limit: int) -> str:
        """The next `n` bytes as UTF-8 text."""
        at = self.offset
        try:
            return self.take(n, what, limit).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8", at) from None

    def at_end(self) -> bool:
        return not self._fill(1)
