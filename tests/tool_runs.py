"""What the subprocess tests keep of a finished command (shared by the tool and benchmark tests)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def output(self) -> str:
        return self.stderr + "\n" + self.stdout

    def __str__(self) -> str:
        return (f"exit {self.returncode} after {self.elapsed:.1f} s\n--- stderr (tail) ---\n"
                f"{self.stderr[-3000:]}\n--- stdout (tail) ---\n{self.stdout[-3000:]}")
