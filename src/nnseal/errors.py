"""Exceptions nnseal raises on bad input; the CLI turns each into a one-line message."""


class NnsealError(Exception):
    """Base class: every error a user can cause by what they pass in."""


class DataError(NnsealError):
    """A dataset file is missing, truncated, or not in the expected format."""


class ModelError(NnsealError):
    """A model file or configuration cannot be loaded or is invalid."""


class FingerprintError(NnsealError):
    """A fingerprint file is corrupt, edited, unsigned when required, or from a future version."""


class TargetError(NnsealError):
    """A black-box target could not be opened or answered with malformed output.

    ``kind`` names the problem in a few words (``timeout``, ``http-503``, ``malformed-json``, ``nan``,
    ``unknown-label`` …) so a verdict can count failures by cause.
    """

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind
