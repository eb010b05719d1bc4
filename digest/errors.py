"""Errors a user or operator sees as one clear line."""


class DigestError(Exception):
    """A problem with input or configuration, reported as `digest: error: <message>`."""


class ValidationError(DigestError):
    """A value refused at the boundary, with a message naming the field and the rule."""


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message (a driver's error can run to many), else its type."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
