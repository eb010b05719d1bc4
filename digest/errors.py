"""Errors a user or operator sees as one clear line."""


class DigestError(Exception):
    """A problem with input or configuration, reported as `digest: error: <message>`."""
