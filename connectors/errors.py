"""Re-export of the root exception (defined in schemas/errors.py, the lowest layer)."""

from schemas.errors import SluicegateError

__all__ = ["SluicegateError"]
