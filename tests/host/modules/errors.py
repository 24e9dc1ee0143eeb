"""Mirrors modules/errors.py: `report` logs an exception and carries on (the WebUI never crashes)."""

import sys
import traceback

reported: list[str] = []


def report(message: str, *, exc_info: bool = False) -> None:
    text = message + ("\n" + traceback.format_exc() if exc_info else "")
    reported.append(text)
    print("*** " + text, file=sys.stderr)
