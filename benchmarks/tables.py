"""Printing a benchmark's results as a Markdown table, ready for BENCHMARKS.md."""

from __future__ import annotations

import sys


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()
