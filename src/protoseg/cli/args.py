"""Argument types that check ranges at parse time: a bad value is a one-line usage error naming the flag."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from protoseg.config_ranges import POSITIVE, Range


def int_at_least(low: int) -> Callable[[str], int]:
    """``type=`` for an integer flag that must be ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(rule: Range) -> Callable[[str], float]:
    """``type=`` for a float flag that must be finite and within ``rule`` (a ``protoseg.config_ranges`` range)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {rule.describe()}, got {text!r}") from None
        if rule.problem(value) is not None:
            raise argparse.ArgumentTypeError(f"must be a finite number {rule.describe()}, got {text}")
        return value

    parse.__name__ = f"number {rule.describe()}"
    return parse


#: ``type=`` for a float flag that must be finite and > 0 (microns per pixel, learning rates).
positive_float = float_in(POSITIVE)
