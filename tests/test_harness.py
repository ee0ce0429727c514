"""The lm-evaluation-harness plug-in: each request type against blankfill's own scoring and
decoding, then the harness end to end on offline task YAMLs with local json data."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from blankfill import cli  # noqa: E402
from blankfill.filling import fill  # noqa: E402
from blankfill.finetune.lm import _score_rows  # noqa: E402
from blankfill.generate import InfillIds, generate  # noqa: E402
from blankfill.harness import BlankfillLM  # noqa: E402
from blankfill.model import GLM  # noqa: E402
from blankfill.pretrained import save_pretrained  # noqa: E402
from blankfill.testing import tiny_config  # noqa: E402
from blankfill.tokenizer import train_tokenizer  # noqa: E402

TEXTS = ["the cat sat on the mat.", "a dog ran in the park!", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 20, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return GLM(tiny_config(vocab_size=tok.padded_vocab_size)).eval()


@pytest.fixture(scope="module")
def lm(model, tok):
    return BlankfillLM(model=model, tokenizer=tok, batch_size=3)


def _req(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=tuple(args), idx=0)


def _brute_part_b(model, part_a, cont):
    """Log-prob of ``cont`` as Part B after ``part_a`` (blank last), one plain forward."""
    sop = 5  # trained tokenizer: <|startofpiece|>
    ids = torch.tensor([part_a + [sop] + cont[:-1]])
    n = len(part_a)
    pos = torch.tensor(
        [[list(range(n)) + [n - 1] * len(cont), [0] * n + list(range(1, len(cont) + 1))]]
    )
    with torch.no_grad():
        logp = model(ids, pos, context_len=n).float().log_softmax(-1)[0, n:]
    return float(logp.gather(1, torch.tensor(cont)[:, None]).sum())


def test_registered_under_its_model_name():
    assert get_model("blankfill") is BlankfillLM


def test_loglikelihood_is_part_b_after_context_and_gmask(lm, model, tok):
    s = tok.special
    reqs = [
        ("the cat sat on", " the mat."),
        ("the cat sat on", " the park!"),  # same context: shares Part A with the first
        ("Paris is the", " capital"),
        ("a dog ran ", "in the park"),  # the context's trailing space moves to the continuation
        ("", "the cat"),
    ]
    got = lm.loglikelihood([_req("loglikelihood", c, x) for c, x in reqs])
    for (ctx, cont), (logp, _) in zip(reqs, got, strict=True):
        if ctx.endswith(" "):
            ctx, cont = ctx[:-1], " " + cont
        a = [s.cls, *tok.encode(ctx), s.gmask] if ctx else [s.cls, s.gmask]
        c = tok.encode(cont)
        with torch.no_grad():
            own, _ = _score_rows(model, [(a, c)], tok, unidirectional=False)
        assert logp == pytest.approx(float(own[0]), abs=1e-4)
        assert logp == pytest.approx(_brute_part_b(model, a, c), abs=1e-4)


def test_is_greedy_and_logprob_agree_with_greedy_filling(lm, model, tok):
    s = tok.special
    a = [s.cls, *tok.encode("the cat sat on"), s.gmask]
    f = generate(model, [a], ids=InfillIds.from_tokenizer(tok), max_new_tokens=4)[0][0]
    (logp, greedy), (_, other) = lm.score_pairs(
        [(a[1:-1], list(f.token_ids)), (a[1:-1], list(f.token_ids[:-1]) + [f.token_ids[0] ^ 1])]
    )
    assert greedy and not other
    assert logp == pytest.approx(sum(f.logprobs), abs=1e-4)


def test_unidirectional_scores_left_to_right(model, tok):
    uni = BlankfillLM(model=model, tokenizer=tok, unidirectional="true")
    ((logp, _),) = uni.loglikelihood([_req("loglikelihood", "the cat sat", " on the mat.")])
    ids = [tok.special.cls, *tok.encode("the cat sat"), *tok.encode(" on the mat.")]
    n = 1 + len(tok.encode("the cat sat"))
    with torch.no_grad():
        lp = model(torch.tensor([ids]), context_len=1).float().log_softmax(-1)[0]
    want = sum(float(lp[i - 1, ids[i]]) for i in range(n, len(ids)))
    assert logp == pytest.approx(want, abs=1e-4)


def test_rolling_scores_every_token_once(lm, model, tok):
    short = "the cat sat on the mat."
    (roll,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", short)])
    ((whole, _),) = lm.loglikelihood([_req("loglikelihood", "", short)])
    assert roll == pytest.approx(whole, abs=1e-4)  # one window: [CLS] [gMASK] | the text
    long = " ".join(TEXTS * 6)  # longer than max_length: several windows
    ids = [tok.special.cls, *tok.encode(long)]
    assert len(ids) > 2 * lm.max_length
    small = BlankfillLM(model=model, tokenizer=tok, batch_size=2, stride=8)
    (roll,) = small.loglikelihood_rolling([_req("loglikelihood_rolling", long)])
    # by hand: windows of 8 scored tokens after up to 64 - 1 - 8 context tokens, each as Part B
    want, scored, start = 0.0, 0, 1
    while start < len(ids):
        ctx, tgt = ids[max(0, start - 55) : start], ids[start : start + 8]
        want += _brute_part_b(model, [*ctx, tok.special.gmask], tgt)
        scored += len(tgt)
        start += 8
    assert scored == len(ids) - 1
    assert roll == pytest.approx(want, rel=1e-5)


def test_generate_until_fills_the_gmask_and_cuts_at_stop_strings(lm, model, tok):
    ctx = "the cat sat on"
    want = fill(model, tok, ctx, max_new_tokens=6).fills[0].text
    got = lm.generate_until(
        [
            _req("generate_until", ctx, {"until": [], "max_gen_toks": 6}),
            _req("generate_until", ctx, {"until": [want[2:4]], "max_gen_toks": 6}),
        ]
    )
    assert got[0] == want
    assert got[1] == want[: want.index(want[2:4])]


def _write_tasks(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    choice = [
        {"question": "the cat sat on the", "choices": ["mat.", "park!", "France."], "answer": 0},
        {"question": "a dog ran in the", "choices": ["mat.", "park!"], "answer": 1},
        {"question": "Paris is the capital of", "choices": ["France.", "the mat."], "answer": 0},
    ]
    ppl = [{"text": t} for t in TEXTS]
    gen = [
        {"question": "the cat sat on", "answer": "the mat."},
        {"question": "Paris is", "answer": "x"},
    ]
    for name, rows in (("choice", choice), ("ppl", ppl), ("gen", gen)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "hf-cache"
    head = "dataset_path: json\ndataset_kwargs:\n  cache_dir: {cache}\n  data_files:\n    test: {file}\ntest_split: test\n"
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    bodies = {
        "bf_choice": """
            output_type: multiple_choice
            doc_to_text: "{{question}}"
            doc_to_choice: "{{choices}}"
            doc_to_target: "{{answer}}"
            target_delimiter: " "
            metric_list:
              - metric: acc
        """,
        "bf_ppl": """
            output_type: loglikelihood_rolling
            doc_to_text: ""
            doc_to_target: "{{text}}"
            metric_list:
              - metric: word_perplexity
              - metric: bits_per_byte
        """,
        "bf_gen": """
            output_type: generate_until
            doc_to_text: "{{question}}"
            doc_to_target: "{{answer}}"
            generation_kwargs:
              until: ["\\n"]
              max_gen_toks: 5
            metric_list:
              - metric: exact_match
        """,
    }
    files = {"bf_choice": "choice", "bf_ppl": "ppl", "bf_gen": "gen"}
    for task, body in bodies.items():
        text = f"task: {task}\n" + head.format(cache=cache, file=data / f"{files[task]}.jsonl")
        (tasks / f"{task}.yaml").write_text(text + textwrap.dedent(body))
    return tasks, choice, ppl, gen


def test_the_harness_end_to_end_on_local_tasks(tmp_path, model, tok, lm, capsys):
    tasks, choice, ppl, gen = _write_tasks(tmp_path)
    folder = save_pretrained(model, tmp_path / "model", tok)
    out = tmp_path / "results.json"
    argv = ["lm-eval", "--model", str(folder), "--tasks", "bf_choice,bf_ppl,bf_gen"]
    argv += ["--include-path", str(tasks), "--only-included", "--output", str(out)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "bf_choice" in table and "acc" in table and "word_perplexity" in table
    results = json.loads(out.read_text())["results"]
    # the harness's metrics from the plug-in's answers, recomputed here
    correct = 0
    for doc in choice:
        reqs = [_req("loglikelihood", doc["question"], " " + c) for c in doc["choices"]]
        scores = [s for s, _ in lm.loglikelihood(reqs)]
        correct += scores.index(max(scores)) == doc["answer"]
    assert results["bf_choice"]["acc,none"] == pytest.approx(correct / len(choice))
    rolled = lm.loglikelihood_rolling([_req("loglikelihood_rolling", d["text"]) for d in ppl])
    words = sum(len(d["text"].split()) for d in ppl)
    want = math.exp(-sum(rolled) / words)
    assert results["bf_ppl"]["word_perplexity,none"] == pytest.approx(want, rel=1e-4)
    outs = lm.generate_until(
        [_req("generate_until", d["question"], {"until": ["\n"], "max_gen_toks": 5}) for d in gen]
    )
    em = sum(o.strip() == d["answer"] for o, d in zip(outs, gen, strict=True)) / len(gen)
    assert results["bf_gen"]["exact_match,none"] == pytest.approx(em)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["lm-eval", "--model", str(tmp_path), "--tasks", "x", "--only-included"]) == 2
    assert "--only-included needs --include-path" in capsys.readouterr().err
    assert cli.main(["lm-eval", "--model", str(tmp_path), "--tasks", " , "]) == 2
    assert "names no task" in capsys.readouterr().err


def test_bad_model_arguments(model, tok):
    with pytest.raises(ValueError, match="either pretrained"):
        BlankfillLM()
    with pytest.raises(ValueError, match="unknown blankfill model argument"):
        BlankfillLM(model=model, tokenizer=tok, temperature=3)
    with pytest.raises(ValueError, match="true or false"):
        BlankfillLM(model=model, tokenizer=tok, unidirectional="maybe")
