"""Errors a user can fix: the CLI prints their message (no traceback) and exits non-zero."""


class UserError(Exception):
    """Bad input or environment the user can act on; the message says what and what to do."""
