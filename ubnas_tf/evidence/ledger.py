"""The evidence ledger: one committed CSV row per finished retraining, genotypes beside it.

A row says which genotype (by hash; the JSON is ``genotypes/HASH.json`` next to the CSV) was
retrained with which recipe (a training flagfile plus overrides, and their hash) and training
seed, where the genotype came from (a search, a random draw or a hand design) and what it
reached. ``(genotype, recipe_hash, train_seed)`` identifies a retraining: the ledger holds at
most one row for each, so no experiment trains one twice. Rows are appended by rewriting the
whole file under a temporary name and renaming it into place, so a killed writer leaves the
previous ledger, never half a row.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence

from ubnas_tf.errors import LedgerError
from ubnas_tf.genotype import Genotype
from ubnas_tf.io_utils import atomic_write_text

__all__ = ["ARMS", "COLUMNS", "Ledger", "LedgerError", "Recipe", "genotype_hash"]

ARMS = ("searched", "random", "hand")
COLUMNS = ("arm", "variant", "genotype", "origin", "mops", "recipe", "recipe_hash", "train_seed",
           "test_accuracy", "final_test_accuracy", "best_val_accuracy", "wall_time_s", "commit",
           "finished_at")
# Flags of a training flagfile that say where and with which seed, not how: not the recipe.
NOT_RECIPE = frozenset({"output_dir", "genotype", "seed", "overwrite", "verbose",
                        "steps_per_execution", "jit_compile", "checkpoint_every_steps"})


def genotype_hash(genotype: Genotype) -> str:
    """12 hex digits of the SHA-1 of the genotype's canonical JSON: equal genotypes, equal hash."""
    canonical = json.dumps(genotype.to_dict(), sort_keys=True)
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


def _flag_lines(path: str) -> list[str]:
    """The ``--name[=value]`` lines of an absl flagfile (comments and blank lines dropped)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f
                if line.strip() and not line.strip().startswith(("#", "//"))]


def _flag_name(line: str) -> str:
    name = line.lstrip("-").split("=", 1)[0]
    return name[2:] if name.startswith("no") and "=" not in line else name


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A retraining recipe: a `tools/train.py` flagfile plus flag overrides (``name=value``).

    Its hash covers the flags that change what is trained (not --output_dir, --genotype,
    --seed or speed-only settings such as --jit_compile), so that rewording a comment or
    moving the output does not make a new recipe, and a changed learning rate does.
    """

    flagfile: str
    overrides: tuple[str, ...] = ()

    def __str__(self) -> str:
        return " ".join([self.flagfile, *(f"--{o}" for o in self.overrides)])

    def flags(self, root: str = ".") -> list[str]:
        """The recipe's flag lines, overrides last (as absl applies them: the last one wins)."""
        return [*_flag_lines(os.path.join(root, self.flagfile)),
                *(f"--{o}" for o in self.overrides)]

    def hash(self, root: str = ".") -> str:
        effective: dict[str, str] = {}
        for line in self.flags(root):
            effective[_flag_name(line)] = line
        kept = sorted(v for k, v in effective.items() if k not in NOT_RECIPE)
        return hashlib.sha1("\n".join(kept).encode()).hexdigest()[:10]


class Ledger:
    """The CSV at `path` and the genotype files beside it (``genotypes/HASH.json``)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.directory = os.path.dirname(self.path)

    def rows(self) -> list[dict]:
        """All rows, as strings (the report converts what it computes with)."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise LedgerError(f"{self.path} is not an evidence ledger: its header is "
                                  f"{reader.fieldnames}, expected {list(COLUMNS)}.")
            return list(reader)

    @staticmethod
    def key(row: dict) -> tuple[str, str, int]:
        return row["genotype"], row["recipe_hash"], int(row["train_seed"])

    def has(self, genotype: str, recipe_hash: str, train_seed: int) -> bool:
        return any(self.key(r) == (genotype, recipe_hash, train_seed) for r in self.rows())

    def find(self, **fields) -> list[dict]:
        """The rows whose columns equal `fields` (compared as strings)."""
        return [r for r in self.rows() if all(r[k] == str(v) for k, v in fields.items())]

    def genotype_path(self, genotype: str) -> str:
        return os.path.join(self.directory, "genotypes", f"{genotype}.json")

    def store_genotype(self, genotype: Genotype) -> str:
        """Saves the genotype beside the ledger (once); returns its hash."""
        digest = genotype_hash(genotype)
        path = self.genotype_path(digest)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            genotype.save(path)
        return digest

    def append(self, rows: Iterable[dict]) -> None:
        """Adds `rows` (a dict with every column each); refuses a retraining already held."""
        old = self.rows()
        held = {self.key(r) for r in old}
        new = []
        for row in rows:
            missing = [c for c in COLUMNS if c not in row]
            if missing or row["arm"] not in ARMS:
                raise LedgerError(f"a ledger row needs every column {list(COLUMNS)} and an arm "
                                  f"in {ARMS}; got missing {missing}, arm {row.get('arm')!r}.")
            if not os.path.exists(self.genotype_path(row["genotype"])):
                raise LedgerError(f"genotype {row['genotype']} is not stored beside the ledger "
                                  f"({self.genotype_path(row['genotype'])}).")
            key = self.key(row)
            if key in held:
                raise LedgerError(f"the ledger already holds genotype {key[0]} with recipe "
                                  f"{key[1]} and training seed {key[2]}.")
            held.add(key)
            new.append({c: _text(row[c]) for c in COLUMNS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows([*old, *new])
        os.makedirs(self.directory, exist_ok=True)
        atomic_write_text(self.path, buf.getvalue())


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) >= 1 else f"{value:.6f}"
    return str(value)


def origin_text(parts: Sequence[str]) -> str:
    """One origin string from its parts (a flagfile, overrides, a seed), space-separated."""
    return " ".join(p for p in parts if p)
