"""Errors a user or operator sees as one clear line."""


class DigestError(Exception):
    """A problem with input or configuration, reported as `digest: error: <message>`."""


class ValidationError(DigestError):
    """A value refused at the boundary, with a message naming the field and the rule."""
