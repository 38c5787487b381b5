"""The one error ``lab-data`` raises for bad input: it names the problem and the fix."""

from __future__ import annotations


class PrepareError(ValueError):
    """Bad input to ``lab-data prepare`` (inputs, columns, tokenizer, output directory)."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        super().__init__(f"{problem}. Fix: {fix}")
