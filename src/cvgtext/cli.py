"""What the entry points share: one clear message for a user's mistake instead of a traceback."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

from cvgtext.errors import CVGTextError


def user_message(error: BaseException) -> str:
    """The message of an error, without the traceback a DataLoader worker wraps around it."""
    message = str(error)
    if "Original Traceback" in message:
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(": ", 1)[-1] if last.startswith(type(error).__module__) else last
    return message


def reports_user_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Print a :class:`CVGTextError` as one line and exit with status 1.

    ``HYDRA_FULL_ERROR=1`` keeps the full traceback, as it does for Hydra's own errors.
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except CVGTextError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {user_message(error)}", file=sys.stderr)
            sys.exit(1)

    return wrapper
