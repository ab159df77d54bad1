"""A synthetic editing trace shaped like the automerge-perf / crdt-benchmarks B4 trace.

B4 is the keystroke-by-keystroke history of writing one LaTeX paper: 259,778
single-character operations, 182,315 insertions and 77,463 deletions, leaving 104,852
characters. No npm or PyPI package ships it (it lives in a git repository only), so the
benchmarks generate a trace of the same shape from a seeded random generator instead of
storing data: the same counts and final length, mostly sequential typing in runs,
backspacing over recent typing, and now and then the cursor jumping elsewhere in the
document (most jumps near the end, where the writing goes on; some anywhere, to revise).

An operation is ``(position, deleted, inserted)`` as in crdt-benchmarks: ``(p, 0, "x")``
inserts one character at ``p``; ``(p, 1, "")`` deletes the character at ``p``. Positions
count characters (all ASCII). The same seed gives the same trace on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

B4_INSERTS = 182_315
B4_DELETES = 77_463
B4_OPERATIONS = B4_INSERTS + B4_DELETES  # 259,778
B4_FINAL_LENGTH = B4_INSERTS - B4_DELETES  # 104,852
SEED = 4

# Mean run lengths: characters typed before a pause, characters backspaced at once.
TYPING_RUN = 14.0
DELETE_RUN = 4.0
# Chance that a run starts somewhere else than the cursor, and, for a jump, that it goes
# near the end of the document rather than anywhere in it.
JUMP = 0.06
JUMP_NEAR_END = 0.6
# A paper's letters, roughly by frequency, with spaces and line breaks.
ALPHABET = "eeeeeeetttttaaaaooooiiiinnnnsssshhhrrrdddlllcuummwfgypbvk  \n\n\\{}$.,"

Operation = tuple[int, int, str]


@dataclass(frozen=True)
class Trace:
    operations: list[Operation]
    final_text: str

    @property
    def inserts(self) -> int:
        return sum(1 for _, deleted, _ in self.operations if not deleted)

    @property
    def deletes(self) -> int:
        return sum(deleted for _, deleted, _ in self.operations)


def _run_length(rng: random.Random, mean: float) -> int:
    """A geometric run length of at least 1 with the given mean."""
    return 1 + int(rng.expovariate(1.0 / max(mean - 1.0, 0.01)))


def generate(inserts: int = B4_INSERTS, deletes: int = B4_DELETES, *, seed: int = SEED) -> Trace:
    """A trace of exactly ``inserts`` insertions and ``deletes`` deletions of one character
    each (``deletes`` must not exceed ``inserts``), and the text it leaves."""
    if deletes > inserts or inserts < 1 or deletes < 0:
        raise ValueError(f"inserts ({inserts}) must be at least 1 and at least deletes ({deletes})")
    rng = random.Random(seed)
    text = bytearray()
    operations: list[Operation] = []
    cursor = 0
    inserts_left, deletes_left = inserts, deletes
    while inserts_left or deletes_left:
        # Runs of deletion are chosen so that, by run lengths, the remaining deletions and
        # insertions come out in their remaining proportion.
        share = deletes_left / (inserts_left + deletes_left)
        p_delete = share * TYPING_RUN / (share * TYPING_RUN + (1 - share) * DELETE_RUN) if share < 1 else 1.0
        deleting = bool(deletes_left) and text and (not inserts_left or rng.random() < p_delete)
        if rng.random() < JUMP and text:
            if rng.random() < JUMP_NEAR_END:
                cursor = max(0, len(text) - int(rng.expovariate(1 / 200)))
            else:
                cursor = rng.randint(0, len(text))
        if deleting:
            for _ in range(min(_run_length(rng, DELETE_RUN), deletes_left)):
                if not text:
                    break
                if cursor == 0:
                    at = 0  # nothing to backspace over: delete forward
                else:
                    cursor -= 1
                    at = cursor
                del text[at]
                operations.append((at, 1, ""))
                deletes_left -= 1
        else:
            # Typing never leaves fewer characters than the deletions still to come need.
            for _ in range(min(_run_length(rng, TYPING_RUN), inserts_left)):
                character = rng.choice(ALPHABET)
                text.insert(cursor, ord(character))
                operations.append((cursor, 0, character))
                cursor += 1
                inserts_left -= 1
        cursor = min(cursor, len(text))
    return Trace(operations=operations, final_text=text.decode("ascii"))


def b4_shaped(*, seed: int = SEED) -> Trace:
    """The full-size trace: 259,778 operations leaving 104,852 characters."""
    return generate(B4_INSERTS, B4_DELETES, seed=seed)


def scaled(operations: int, *, seed: int = SEED) -> Trace:
    """A smaller trace in B4's proportions (for smoke tests)."""
    inserts = max(1, round(operations * B4_INSERTS / B4_OPERATIONS))
    return generate(inserts, operations - inserts, seed=seed)
