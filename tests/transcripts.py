"""What is said in the speech fixtures (tests/fixtures/audio/README.md), and word error rate."""

from __future__ import annotations

import re

SAID = {
    "jfk.wav": "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country.",
    "harvard_16k.wav": "The birch canoe slid on the smooth planks. Glue the sheet to the dark "
    "blue background. It's easy to tell the depth of a well. Four hours of steady work "
    "faced us.",
    "big_dog_8k.wav": "The big dog loved to chew on the old rag doll.",
    "cross_8k.wav": "They took the cross town bus.",
    "front_center_48k.wav": "Front center.",
}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def edits(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level edit distance: the insertions, deletions and substitutions that make
    ``hypothesis`` of ``reference``."""
    row = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance over the reference's length."""
    ref = words(reference)
    return edits(ref, words(hypothesis)) / max(1, len(ref))
