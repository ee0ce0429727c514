"""Data-file readers and per-task record preparation for the cloze tasks (spec §4.1).

``read_rows`` yields ("file:line", row) so every error can name where it happened. The ``_task``
functions turn one official SuperGLUE row into flat records (see ``tasks.py`` for the record form).
"""

from __future__ import annotations

import csv
import io
import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def label_index(raw: Any, labels: tuple[Any, ...], where: str) -> int:
    for i, lab in enumerate(labels):
        if raw == lab and type(raw) is type(lab) or str(raw).strip() == str(lab):
            return i
    raise ValueError(
        f"{where}: unknown label {raw!r}; expected one of {', '.join(map(repr, labels))}"
    )


def read_utf8(path: str | Path) -> str:
    """A text file's contents; bytes that are not UTF-8 are a one-line error naming file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8"
        ) from None


def read_rows(path: str | Path, fmt: str = "jsonl") -> Iterator[tuple[str, dict]]:
    """Yield ("file:line", row) from a jsonl, tsv (with header) or csv (with header) file."""
    path = Path(path)
    with io.StringIO(read_utf8(path), newline="") as f:
        if fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: expected a JSON object per line")
                yield f"{path}:{n}", row
        else:
            reader = csv.DictReader(
                f,
                delimiter="\t" if fmt == "tsv" else ",",
                quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
            )
            try:
                for row in reader:
                    if None in row.values():
                        raise ValueError(f"{path}:{reader.line_num}: fewer fields than the header")
                    yield f"{path}:{reader.line_num}", {k.strip(): v for k, v in row.items() if k}
            except csv.Error as e:
                raise ValueError(f"{path}:{reader.line_num}: not valid {fmt} ({e})") from None


# --------------------------------------------------------------------------------------------
# Per-task record preparation (only where a row is not already one flat record)
# --------------------------------------------------------------------------------------------


def _strip_punc(text: str) -> str:
    return text.rstrip(string.punctuation)


def copa_records(row: dict) -> list[dict]:
    # PET/GLM: choices with a lowercased first letter and no final punctuation.
    choices = [_strip_punc(c[:1].lower() + c[1:]) for c in (row["choice1"], row["choice2"])]
    connector = {"cause": " because", "effect": ", so"}.get(row["question"])
    if connector is None:
        raise ValueError(f"{row['_where']}: COPA question must be 'cause' or 'effect'")
    return [
        dict(
            row,
            choice1=choices[0],
            choice2=choices[1],
            premise=_strip_punc(row["premise"]),
            connector=connector,
            candidates=[" " + c for c in choices],
        )
    ]


# Negative candidates for WSC (the official code mines noun phrases with spaCy; this is a
# dependency-free stand-in): "the/a/an <word>" phrases and capitalised words.
_NOUNISH = re.compile(r"\b(?:[Tt]he|[Aa]n?) [a-z][\w-]*|\b[A-Z][\w'-]+")
_STOP = {
    "The",
    "A",
    "An",
    "He",
    "She",
    "It",
    "They",
    "We",
    "I",
    "You",
    "His",
    "Her",
    "Their",
    "But",
    "And",
    "So",
    "When",
    "Then",
    "This",
    "That",
    "There",
    "If",
    "As",
    "After",
    "Because",
}


def wsc_records(row: dict) -> list[dict]:
    # The pronoun is marked *like this*; span1 is candidate 0, the target when the label is true.
    target = row["target"]
    words = row["text"].split()
    i = target.get("span2_index") if isinstance(target, dict) else None
    if i is None or not 0 <= i < len(words) or "span1_text" not in target:
        raise ValueError(f"{row['_where']}: WSC target needs span1_text and a valid span2_index")
    pronoun = target.get("span2_text", words[i])
    words[i] = "*" + words[i] + "*"
    answer = target["span1_text"].strip()

    def key(s: str) -> str:
        return re.sub(r"^(the|an?) ", "", s.lower())

    seen, negatives = {key(answer), key(pronoun)}, []
    for m in _NOUNISH.finditer(row["text"]):
        w = m.group(0)
        if w not in _STOP and key(w) not in seen and len(key(w)) > 2:
            seen.add(key(w))
            negatives.append(w)
    return [
        dict(
            row,
            text=" ".join(words),
            pronoun=pronoun,
            target=0 if row["label"] == 1 else -1,
            target_text=answer,
            candidates=[" " + answer] + [" " + n for n in negatives[:4]],
        )
    ]


def multirc_records(row: dict) -> list[dict]:
    where, passage = row["_where"], row["passage"]
    if not isinstance(passage, dict) or "text" not in passage or "questions" not in passage:
        raise ValueError(f"{where}: MultiRC passage needs 'text' and 'questions'")
    records = []
    for q in passage["questions"]:
        for a in q.get("answers", []):
            if "text" not in a:
                raise ValueError(f"{where}: MultiRC answer without 'text'")
            label = a.get("label")
            if label not in (0, 1, None):
                raise ValueError(f"{where}: unknown label {label!r}; expected one of 0, 1")
            records.append(
                {
                    "passage": passage["text"],
                    "question": q["question"],
                    "answer": a["text"],
                    "label": -1 if label is None else label,
                    "group": f"{row['idx']}-{q.get('idx', len(records))}",
                    "_where": where,
                }
            )
    return records


def record_records(row: dict) -> list[dict]:
    where, passage = row["_where"], row["passage"]
    if not isinstance(passage, dict) or "text" not in passage or "entities" not in passage:
        raise ValueError(f"{where}: ReCoRD passage needs 'text' and 'entities'")
    text = passage["text"]
    entities = []
    for e in passage["entities"]:  # SuperGLUE ReCoRD spans are [start, end] inclusive
        ent = text[e["start"] : e["end"] + 1]
        if ent not in entities:
            entities.append(ent)
    records = []
    for q in row["qas"]:
        if "@placeholder" not in q["query"]:
            raise ValueError(f"{where}: ReCoRD query without @placeholder")
        left, right = q["query"].split("@placeholder", 1)
        gold = [a["text"] for a in q.get("answers", [])]
        label = next((i for i, e in enumerate(entities) if e in gold), -1)
        records.append(
            {
                "passage": text.replace("@highlight\n", "- "),
                "left": left.rstrip(),
                "right": right,
                "candidates": [" " + e for e in entities],
                "gold": gold,
                "label": label,
                "group": str(q.get("idx", len(records))),
                "_where": where,
            }
        )
    return records


def nli_records(row: dict) -> list[dict]:
    return [dict(row, hypothesis=_strip_punc(row["hypothesis"]))]  # PET strips the final ? or .
