"""Built-in cloze tasks: patterns render as spec §4.1 says, real files read, bad rows fail well."""

from __future__ import annotations

import json

import pytest

from blankfill.finetune.tasks import TASKS, Cut, get_task, render_text, task_from_toml

NLI = {"premise": "A man sleeps", "hypothesis": "Someone rests.", "label": "entailment"}
CASES = [  # (task, pattern id, row, rendered text, verbalizer/candidates)
    (
        "boolq",
        0,
        {"passage": "P.", "question": "is it", "label": True},
        "P. Question: is it? Answer: __.",
        (" No", " Yes"),
    ),
    (
        "boolq",
        3,
        {"passage": "P.", "question": "is it", "label": True},
        "P. Based on the previous passage, is it? __.",
        (" false", " true"),
    ),
    (
        "boolq",
        4,
        {"passage": "P.", "question": "is it", "label": True},
        "Based on the following passage is it? __. P.",
        (" No", " Yes"),
    ),
    ("cb", 0, NLI, '"Someone rests" ? __, "A man sleeps"', (" No", " Yes", " Maybe")),
    ("cb", 1, NLI, "Someone rests? __, A man sleeps", (" No", " Yes", " Maybe")),
    ("cb", 2, NLI, '"Someone rests" ? __. "A man sleeps"', (" No", " Yes", " Maybe")),
    ("cb", 3, NLI, "Someone rests? __. A man sleeps", (" No", " Yes", " Maybe")),
    (
        "cb",
        4,
        NLI,
        "A man sleeps question: Someone rests true, false or neither? answer: __",
        (" false", " true", " neither"),
    ),
    (
        "rte",
        0,
        dict(NLI, label="not_entailment"),
        '"Someone rests" ? __, "A man sleeps"',
        (" No", " Yes"),
    ),
    (
        "rte",
        4,
        NLI,
        "A man sleeps question: Someone rests True or False? answer: __",
        (" false", " true"),
    ),
    (
        "wic",
        0,
        {"word": "bank", "sentence1": "S1.", "sentence2": "S2.", "label": False},
        '"S1." / "S2." Similar sense of "bank"? __.',
        (" No", " Yes"),
    ),
    (
        "wic",
        1,
        {"word": "bank", "sentence1": "S1.", "sentence2": "S2.", "label": False},
        "S1. S2. Does bank have the same meaning in both sentences? __",
        (" No", " Yes"),
    ),
    (
        "wic",
        2,
        {"word": "bank", "sentence1": "S1.", "sentence2": "S2.", "label": False},
        'bank . Sense (1) (a) "S1." ( __ ) "S2."',
        ("2", "b"),
    ),
    (
        "copa",
        0,
        {
            "premise": "The man fell.",
            "choice1": "He slipped.",
            "choice2": "He ate.",
            "question": "cause",
            "label": 0,
        },
        '"he slipped" or "he ate"? The man fell because __.',
        (" he slipped", " he ate"),
    ),
    (
        "copa",
        0,
        {
            "premise": "It rained.",
            "choice1": "Wet.",
            "choice2": "Dry!",
            "question": "effect",
            "label": 0,
        },
        '"wet" or "dry"? It rained, so __.',
        (" wet", " dry"),
    ),
    (
        "wsc",
        2,
        {
            "text": "Tom thanked Bob because he helped.",
            "label": True,
            "target": {"span1_text": "Bob", "span2_index": 4, "span2_text": "he"},
        },
        "Tom thanked Bob because *he* helped. Question: In the passage above, what does the "
        "pronoun '*he*' refer to? Answer: __.",
        (" Bob", " Tom"),
    ),
    (
        "sst2",
        0,
        {"sentence": "a fine film ", "label": "1"},
        "a fine film It was __.",
        (" terrible", " great"),
    ),
]


def _load_one(task, row, tmp_path, fmt="jsonl"):
    path = tmp_path / "data.jsonl"
    if fmt == "tsv":
        path.write_text("sentence\tlabel\n" + f"{row['sentence']}\t{row['label']}\n")
    else:
        path.write_text(json.dumps(row) + "\n")
    return task.load(path)


@pytest.mark.parametrize("name,pid,row,text,answers", CASES)
def test_builtin_patterns_render_as_the_spec_table(name, pid, row, text, answers, tmp_path):
    task = TASKS[name]
    (rec,) = _load_one(task, row, tmp_path, task.format)
    assert render_text(task.render(rec, pid)) == text
    assert task.candidates(rec, pid) == answers


def test_default_pattern_ids_follow_the_official_scripts():
    want = {"boolq": 4, "cb": 3, "rte": 0, "wic": 1, "multirc": 0, "copa": 0, "wsc": 2, "record": 0}
    assert {k: TASKS[k].pattern_id for k in want} == want
    assert TASKS["multirc"].batch_size == 64 and TASKS["record"].max_seq_len == 512
    assert TASKS["wsc"].max_seq_len == 128 and TASKS["boolq"].epochs == 20


def test_multirc_and_record_expand_rows(tmp_path):
    multirc = {
        "idx": 3,
        "passage": {
            "text": "Sky.",
            "questions": [
                {
                    "question": "Colour",
                    "idx": 7,
                    "answers": [{"text": "blue", "label": 1}, {"text": "red", "label": 0}],
                }
            ],
        },
    }
    recs = _load_one(TASKS["multirc"], multirc, tmp_path)
    assert [r["label"] for r in recs] == [1, 0] and {r["group"] for r in recs} == {"3-7"}
    assert render_text(TASKS["multirc"].render(recs[1])) == "Sky.. Question: Colour? Is it red? __."
    record = {
        "passage": {
            "text": "Ann met Bo.\n@highlight\nBo won",
            "entities": [{"start": 0, "end": 2}, {"start": 8, "end": 9}, {"start": 23, "end": 24}],
        },
        "qas": [{"query": "Later @placeholder left.", "idx": 1, "answers": [{"text": "Bo"}]}],
    }
    (rec,) = _load_one(TASKS["record"], record, tmp_path)
    assert rec["candidates"] == [" Ann", " Bo"] and rec["label"] == 1
    assert render_text(TASKS["record"].render(rec)) == "Ann met Bo.\n- Bo won Later __ left."
    pieces = TASKS["record"].render(rec)
    assert isinstance(pieces[0], Cut)  # the passage is the shortenable part


FILES = {
    "boolq": ["superglue/BoolQ/val.jsonl", "fewglue/BoolQ/train.jsonl"],
    "cb": ["superglue/CB/train.jsonl", "superglue/CB/val.jsonl", "fewglue/CB/dev32.jsonl"],
    "copa": ["superglue/COPA/train.jsonl", "superglue/COPA/val.jsonl"],
    "rte": ["fewglue/RTE/train.jsonl", "fewglue/RTE/dev32.jsonl"],
    "wic": ["fewglue/WiC/train.jsonl", "fewglue/WiC/dev32.jsonl"],
    "wsc": ["fewglue/WSC/train.jsonl", "fewglue/WSC/dev32.jsonl"],
    "multirc": ["fewglue/MultiRC/train.jsonl", "fewglue/MultiRC/dev32.jsonl"],
    "record": ["fewglue/ReCoRD/train.jsonl", "fewglue/ReCoRD/dev32.jsonl"],
    "sst2": ["glue-sst2/dev.tsv"],
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_builtin_task_reads_the_real_benchmark_files(name, benchmarks_dir):
    task = TASKS[name]
    for rel in FILES[name]:
        records = task.load(benchmarks_dir / rel)
        assert records, rel
        for rec in records:
            text = render_text(task.render(rec))
            assert text.count("__") >= 1
            cands = task.candidates(rec)
            assert len(cands) >= 2 or name == "wsc"
            if name == "wsc":
                assert rec["label"] in (0, 1) and cands[0].strip() == rec["target_text"]
            elif name == "record":
                assert rec["label"] == -1 or rec["candidates"][rec["label"]].strip() in rec["gold"]
            else:
                assert 0 <= rec["label"] < len(cands)
    if name == "cb":
        assert len(task.load(benchmarks_dir / FILES["cb"][1])) == 56
    if name == "sst2":
        assert len(records) == 872 and sum(r["label"] for r in records) == 444


@pytest.mark.parametrize(
    "name,row,message",
    [
        ("cb", {"premise": "x", "label": "entailment"}, "missing field 'hypothesis'"),
        ("cb", {"premise": "x", "hypothesis": "y", "label": "maybe"}, "unknown label 'maybe'"),
        ("boolq", {"passage": "x", "question": "y", "label": "yes"}, "unknown label 'yes'"),
        (
            "copa",
            {"premise": "x", "choice1": "a", "choice2": "b", "question": "why", "label": 0},
            "'cause' or 'effect'",
        ),
    ],
)
def test_bad_rows_name_file_and_line(name, row, message, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {**row, "label": "neutral"} if name == "cb" else {**row, "label": 1}
    good = {"premise": "p", "hypothesis": "h", "label": "neutral"} if name == "cb" else good
    good = (
        {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 1}
        if name == "copa"
        else good
    )
    good = {"passage": "p", "question": "q", "label": True} if name == "boolq" else good
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:3: .*{message}"):
        TASKS[name].load(path)


def test_bad_tsv_row_and_bad_json_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    with pytest.raises(ValueError, match=r"bad.tsv:3: unknown label '7'"):
        TASKS["sst2"].load(path)
    path = tmp_path / "broken.jsonl"
    path.write_text('{"premise": "p"\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:1: not valid JSON"):
        TASKS["cb"].load(path)


def test_user_task_from_toml(tmp_path):
    spec = tmp_path / "topic.toml"
    spec.write_text(
        'name = "topic"\nformat = "csv"\npattern = "{text} Topic: __."\n'
        'cut = ["text"]\n[verbalizer]\nsport = " sports"\nbiz = " business"\n'
    )
    task = get_task(str(spec))
    data = tmp_path / "d.csv"
    data.write_text('text,label\n"Goal, late",sport\nStocks fell,biz\nOdd,weather\n')
    with pytest.raises(ValueError, match=r"d.csv:4: unknown label 'weather'"):
        task.load(data)
    data.write_text('text,label\n"Goal, late",sport\nStocks fell,biz\n')
    recs = task.load(data)
    assert [r["label"] for r in recs] == [0, 1]
    assert render_text(task.render(recs[0])) == "Goal, late Topic: __."
    assert task.candidates(recs[0]) == (" sports", " business")
    spec.write_text('pattern = "{text} no blank"\n[verbalizer]\na = "x"\nb = "y"\n')
    with pytest.raises(ValueError, match="exactly one blank"):
        task_from_toml(spec)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
