"""Cloze tasks as data (spec §4.1): a task is a reader + pattern templates + verbalizer + metric.

A *pattern* is a template string: ``{field}`` is replaced by a record's field and ``__`` is the one
blank (the ``[MASK]`` the answer fills). Fields named in ``cut`` are shortenable: when the input is
too long they lose tokens from their end, longest first (the official ``shortenable``).
A *record* is one scored example: a dict of text fields plus ``label`` (gold index, -1 if none) and,
for multi-token tasks, ``candidates`` (answer texts, encoded as written, so they carry their
leading space). The *verbalizer* gives the answer text of each label, per pattern id.

Adding a task means adding one ``ClozeTask(...)`` entry to ``TASKS``; nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import read_toml
from . import readers

BLANK = "__"
Metric = Literal["accuracy", "f1_macro", "multirc", "record", "wsc"]
_SLOT = re.compile(r"(\{\w+\}|__)")


@dataclass(frozen=True)
class Cut:
    """A shortenable piece of a rendered pattern (passage, premise)."""

    text: str


# A rendered pattern: text pieces, shortenable ``Cut`` pieces and exactly one ``BLANK``.
Pieces = tuple["str | Cut", ...]


@dataclass(frozen=True, kw_only=True)
class ClozeTask:
    """One cloze task. Defaults follow the official task scripts (spec §4.1)."""

    name: str
    fields: tuple[str, ...]  # input fields every data row must have
    patterns: tuple[str, ...]  # templates, indexed by pattern id
    verbalizers: tuple[tuple[str, ...], ...] = ()  # per pattern id: answer text per label
    labels: tuple[Any, ...] = ()  # raw label values, in verbalizer order
    cut: tuple[str, ...] = ()  # shortenable fields
    prepare: Callable[[dict], list[dict]] | None = None  # a data row -> records (default: itself)
    metric: Metric = "accuracy"
    pattern_id: int = 0  # the official default pattern
    epochs: int = 50  # official epochs (non-10B)
    batch_size: int = 16
    max_seq_len: int = 256
    format: Literal["jsonl", "tsv", "csv"] = "jsonl"

    @property
    def multi_token(self) -> bool:
        """Answers are per-record candidate texts (COPA, WSC, ReCoRD), not a fixed verbalizer."""
        return not self.verbalizers

    def verbalizer(self, pattern_id: int) -> tuple[str, ...]:
        if self.multi_token:
            raise ValueError(f"task {self.name} has per-example candidates, not a verbalizer")
        return self.verbalizers[min(pattern_id, len(self.verbalizers) - 1)]

    def check_pattern_id(self, pattern_id: int) -> None:
        if not 0 <= pattern_id < len(self.patterns):
            raise ValueError(
                f"task {self.name} has pattern ids 0..{len(self.patterns) - 1}, got {pattern_id}"
            )

    def render(self, record: dict, pattern_id: int | None = None) -> Pieces:
        """The pattern filled with ``record``: pieces with one ``BLANK``."""
        pid = self.pattern_id if pattern_id is None else pattern_id
        self.check_pattern_id(pid)
        pieces: list[str | Cut] = []
        for part in _SLOT.split(self.patterns[pid]):
            if part == BLANK:
                pieces.append(BLANK)
            elif part.startswith("{") and part.endswith("}"):
                name = part[1:-1]
                value = str(record[name])
                pieces.append(Cut(value) if name in self.cut else value)
            elif part:
                pieces.append(part)
        merged: list[str | Cut] = []  # join adjacent plain text, so it is encoded as one string
        for p in pieces:
            if (
                merged
                and type(p) is str
                and p != BLANK
                and type(merged[-1]) is str
                and merged[-1] != BLANK
            ):
                merged[-1] += p
            else:
                merged.append(p)
        return tuple(merged)

    def candidates(self, record: dict, pattern_id: int | None = None) -> tuple[str, ...]:
        if self.multi_token:
            return tuple(record["candidates"])
        return self.verbalizer(self.pattern_id if pattern_id is None else pattern_id)

    def load(self, path: str | Path) -> list[dict]:
        """Read a data file into records; a bad row raises ValueError naming file and line."""
        records = []
        for where, row in readers.read_rows(path, self.format):
            for name in self.fields:
                if name not in row or row[name] is None:
                    raise ValueError(f"{where}: missing field {name!r} (task {self.name})")
            row = dict(row, _where=where)
            if self.labels:
                raw = row.get("label")
                if raw is None:
                    row["label"] = -1
                else:
                    row["label"] = readers.label_index(raw, self.labels, where)
            for rec in self.prepare(row) if self.prepare else [row]:
                records.append(rec)
        return records


def render_text(pieces: Pieces, blank: str = BLANK) -> str:
    """A rendered pattern as one string (for reading and tests)."""
    return "".join(blank if p == BLANK else p.text if isinstance(p, Cut) else p for p in pieces)


_CB_PATTERNS = (
    '"{hypothesis}" ? __, "{premise}"',
    "{hypothesis}? __, {premise}",
    '"{hypothesis}" ? __. "{premise}"',
    "{hypothesis}? __. {premise}",
)


TASKS: dict[str, ClozeTask] = {
    t.name: t
    for t in (
        ClozeTask(
            name="boolq",
            fields=("passage", "question"),
            labels=(False, True),
            cut=("passage",),
            patterns=("{passage} Question: {question}? Answer: __.",) * 2
            + ("{passage} Based on the previous passage, {question}? __.",) * 2
            + ("Based on the following passage {question}? __. {passage}",) * 2,
            verbalizers=((" No", " Yes"), (" false", " true")) * 3,
            pattern_id=4,
            epochs=20,
        ),
        ClozeTask(
            name="cb",
            fields=("premise", "hypothesis"),
            prepare=readers.nli_records,
            cut=("premise", "hypothesis"),
            labels=("contradiction", "entailment", "neutral"),
            metric="f1_macro",
            pattern_id=3,
            patterns=_CB_PATTERNS
            + ("{premise} question: {hypothesis} true, false or neither? answer: __",),
            verbalizers=((" No", " Yes", " Maybe"),) * 4 + ((" false", " true", " neither"),),
        ),
        ClozeTask(
            name="rte",
            fields=("premise", "hypothesis"),
            prepare=readers.nli_records,
            cut=("premise", "hypothesis"),
            labels=("not_entailment", "entailment"),
            patterns=_CB_PATTERNS + ("{premise} question: {hypothesis} True or False? answer: __",),
            verbalizers=((" No", " Yes"),) * 4 + ((" false", " true"),),
        ),
        ClozeTask(
            name="wic",
            fields=("word", "sentence1", "sentence2"),
            labels=(False, True),
            patterns=(
                '"{sentence1}" / "{sentence2}" Similar sense of "{word}"? __.',
                "{sentence1} {sentence2} Does {word} have the same meaning in both sentences? __",
                '{word} . Sense (1) (a) "{sentence1}" ( __ ) "{sentence2}"',
            ),
            verbalizers=((" No", " Yes"), (" No", " Yes"), ("2", "b")),
            cut=("sentence1", "sentence2"),
            pattern_id=1,
            epochs=30,
        ),
        ClozeTask(
            name="multirc",
            fields=("idx", "passage"),
            prepare=readers.multirc_records,
            cut=("passage",),
            labels=(0, 1),
            metric="multirc",
            epochs=15,
            batch_size=64,
            max_seq_len=512,
            patterns=(
                "{passage}. Question: {question}? Is it {answer}? __.",
                '{passage}. Question: {question}? Is the correct answer "{answer}"? __.',
                '{passage}. Based on the previous passage, {question}? Is "{answer}" a '
                "correct answer? __.",
                "{passage} {question}- [__] {answer}",
            ),
            verbalizers=((" No", " Yes"),) * 3 + ((" False", " True"),),
        ),
        ClozeTask(
            name="copa",
            fields=("premise", "choice1", "choice2", "question"),
            labels=(0, 1),
            prepare=readers.copa_records,
            patterns=('"{choice1}" or "{choice2}"? {premise}{connector} __.',),
        ),
        ClozeTask(
            name="wsc",
            fields=("text", "target"),
            labels=(False, True),
            prepare=readers.wsc_records,
            metric="wsc",
            pattern_id=2,
            max_seq_len=128,
            cut=("text",),
            patterns=(
                "{text} The pronoun '*{pronoun}*' refers to __.",
                "{text} In the previous sentence, the pronoun '*{pronoun}*' refers to __.",
                "{text} Question: In the passage above, what does the pronoun '*{pronoun}*' "
                "refer to? Answer: __.",
            ),
        ),
        ClozeTask(
            name="record",
            fields=("passage", "qas"),
            prepare=readers.record_records,
            metric="record",
            epochs=5,
            batch_size=64,
            max_seq_len=512,
            cut=("passage",),
            patterns=("{passage} {left} __{right}",),
        ),
        ClozeTask(
            name="sst2",
            fields=("sentence",),
            prepare=lambda r: [dict(r, sentence=r["sentence"].strip())],
            labels=("0", "1"),
            format="tsv",
            cut=("sentence",),
            patterns=("{sentence} It was __.",) * 2,
            verbalizers=((" terrible", " great"), (" bad", " good")),
            epochs=3,
            batch_size=32,
            max_seq_len=128,
        ),
    )
}


def task_from_toml(path: str | Path) -> ClozeTask:
    """A user task from TOML: ``name``, ``format`` (jsonl|csv|tsv), ``fields``, ``pattern``
    (or ``patterns``), ``[verbalizer]`` label -> answer text; optional ``cut``, ``metric``,
    ``epochs``, ``batch_size``, ``max_seq_len``.
    """
    path = Path(path)
    data = read_toml(path)
    allowed = {
        "name",
        "format",
        "fields",
        "pattern",
        "patterns",
        "verbalizer",
        "cut",
        "metric",
        "epochs",
        "batch_size",
        "max_seq_len",
    }
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(allowed)}")
    patterns = tuple(data.get("patterns") or [data.get("pattern", "")])
    verb = data.get("verbalizer")
    if not all(p.count(BLANK) == 1 for p in patterns) or not patterns[0]:
        raise ValueError(f"{path}: each pattern needs exactly one blank '__'")
    if not isinstance(verb, dict) or len(verb) < 2:
        raise ValueError(f"{path}: [verbalizer] must map each label to its answer text (>= 2)")
    fields = tuple(data.get("fields") or sorted(set(re.findall(r"\{(\w+)\}", " ".join(patterns)))))
    return ClozeTask(
        name=data.get("name", path.stem),
        fields=fields,
        patterns=patterns,
        labels=tuple(verb),
        verbalizers=(tuple(verb.values()),),
        cut=tuple(data.get("cut", ())),
        metric=data.get("metric", "accuracy"),
        format=data.get("format", "jsonl"),
        **{k: data[k] for k in ("epochs", "batch_size", "max_seq_len") if k in data},
    )


def get_task(name: str) -> ClozeTask:
    """A built-in task by name, or a user task from a ``.toml`` path."""
    if name.endswith(".toml"):
        return task_from_toml(name)
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; built in: {', '.join(TASKS)} (or a task .toml)")
    return TASKS[key]


__all__ = [
    "BLANK",
    "TASKS",
    "ClozeTask",
    "Cut",
    "get_task",
    "render_text",
    "task_from_toml",
]
