"""Bearer tokens, checked the same way on devices and coordinators."""

from __future__ import annotations

__all__ = ["checked_token"]


def checked_token(token: str | None) -> str | None:
    """A token without its surrounding whitespace; ``None`` stays ``None`` (no token).

    A token read from a file ends with a newline: it is stripped on both sides
    (``serve`` and ``Remote``), so both compare the same characters. Error
    messages never show the token.

    Raises:
        ValueError: the token is not a string, is empty or whitespace only, or
            contains control characters or non-ASCII characters (an HTTP header
            carries printable ASCII only).
    """
    if token is None:
        return None
    if not isinstance(token, str):
        raise ValueError(f"token must be a string, got {type(token).__name__}; e.g. token=os.environ['FEDSYNC_TOKEN']")
    stripped = token.strip()
    if not stripped:
        raise ValueError(
            "token is empty or only whitespace: a device with an empty token would let anyone in; give a secret "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())'), or token=None for no token"
        )
    bad = [i for i, c in enumerate(stripped) if not " " <= c <= "~"]
    if bad:
        raise ValueError(
            f"token has a control or non-ASCII character at position {bad[0]} (the token is not shown); "
            "use printable ASCII only (e.g. from secrets.token_urlsafe()) and check how the token was read"
        )
    return stripped
