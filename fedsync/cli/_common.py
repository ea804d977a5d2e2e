"""What every ``fedsync`` subcommand shares: exit codes, its errors, the help formatter."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = [
    "EXIT_FAILED",
    "device_url",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_BROKEN_PIPE",
    "CommandError",
    "UsageError",
    "Formatter",
    "configure_logging",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`


class CommandError(Exception):
    """A command failed; the message is printed as one line, without a traceback."""

    code = EXIT_FAILED


class UsageError(CommandError):
    """The command was asked for something that cannot be (unknown module or attribute)."""

    code = EXIT_USAGE


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and shows each option's default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def configure_logging(verbose: bool) -> None:
    """A device command's logs on stderr: INFO (DEBUG with ``-v``), urllib3's retries only with ``-v``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("urllib3").setLevel(logging.WARNING)


def device_url(text: str) -> str:
    """A device's base URL as a person types it: ``host:port`` gains ``http://``; a trailing ``/`` or ``/info`` goes."""
    url = text if "://" in text else f"http://{text}"
    url = url.rstrip("/")
    return url[: -len("/info")] if url.endswith("/info") else url
