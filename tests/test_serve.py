"""``blankfill serve``: the real server on 127.0.0.1, talked to over HTTP (fills, streaming,
errors, batching, a busy model that does not block /healthz)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from blankfill import cli  # noqa: E402
from blankfill.filling import BlankFiller  # noqa: E402
from blankfill.model import GLM  # noqa: E402
from blankfill.serve import FillService, Limits, create_app  # noqa: E402
from blankfill.serve.server import BackgroundServer  # noqa: E402
from blankfill.testing import tiny_config  # noqa: E402
from blankfill.tokenizer import train_tokenizer  # noqa: E402

TEXTS = ["the cat sat on the mat.", "a dog ran in the park!", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def filler() -> BlankFiller:
    tok = train_tokenizer(TEXTS * 20, vocab_size=300)
    torch.manual_seed(0)
    return BlankFiller(GLM(tiny_config(vocab_size=tok.padded_vocab_size)), tok)


@pytest.fixture(scope="module")
def server(filler):
    with FillService(filler, max_batch=8, wait_ms=20, limits=Limits(max_new_tokens=32)) as svc:
        with BackgroundServer(create_app(svc, max_body_bytes=4096)) as s:
            s.service = svc
            yield s


def _post(server, body, **kw):
    return httpx.post(server.url + "/v1/fill", json=body, timeout=60, **kw)


def test_fill_returns_the_same_as_the_library(server, filler):
    body = {"text": "the cat [MASK] on the [sMASK]", "decoding": {"max_new_tokens": 5}}
    r = _post(server, body)
    assert r.status_code == 200, r.text
    got = r.json()
    want = filler.fill(body["text"], max_new_tokens=5)
    assert got["text"] == want.text
    assert got["marked"] == want.marked()
    assert [f["token_ids"] for f in got["fills"]] == [list(f.token_ids) for f in want.fills]
    assert got["fills"][0]["logprobs"] == pytest.approx(list(want.fills[0].logprobs), abs=1e-5)
    assert got["prompt_tokens"] == len(want.prompt_ids)


def test_streaming_sends_each_token_then_the_result(server, filler):
    body = {"text": "a dog [MASK] in the [MASK]", "decoding": {"max_new_tokens": 6}, "stream": True}
    with httpx.stream("POST", server.url + "/v1/fill", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = []
    for block in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    names = [e for e, _ in events]
    assert names[0] == "start" and names[-1] == "done" and set(names[1:-1]) == {"token"}
    done = events[-1][1]
    want = filler.fill(body["text"], max_new_tokens=6)
    assert done["text"] == want.text
    for blank, fill in enumerate(done["fills"]):
        streamed = [i for e, d in events if e == "token" and d["blank"] == blank for i in d["ids"]]
        assert streamed == fill["token_ids"]
        text = "".join(d["text"] for e, d in events if e == "token" and d["blank"] == blank)
        assert text == fill["text"]
    assert events[0][1]["around"] == done["around"]


@pytest.mark.parametrize(
    ("kwargs", "code", "needle"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON"),
        ({"json": ["a list"]}, 400, "object"),
        ({"json": {"decoding": {}}}, 422, "'text'"),
        ({"json": {"text": "   "}}, 422, "'text'"),
        ({"json": {"text": "a [MASK]", "decoding": {"top_p": 1.5}}}, 422, "top_p"),
        ({"json": {"text": "a [MASK]", "decoding": {"temperature": 0}}}, 422, "temperature"),
        ({"json": {"text": "a [MASK]", "decoding": {"max_new_tokens": 500}}}, 422, "at most 32"),
        ({"json": {"text": "a [MASK]", "decoding": {"warmth": 1}}}, 422, "warmth"),
        ({"json": {"text": "a [MASK]", "decoding": [1]}}, 422, "decoding"),
        ({"json": {"text": "a [MASK]", "stream": "yes"}}, 422, "stream"),
        ({"json": {"text": "a [MASK]", "prompt": "x"}}, 422, "prompt"),
        ({"json": {"text": "the cat sat. " * 100}}, 422, "max_sequence_length"),
        ({"json": {"text": "x" * 5000}}, 413, "limit"),
    ],
)
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, kwargs, code, needle):
    r = httpx.post(server.url + "/v1/fill", timeout=60, **kwargs)
    assert r.status_code == code, r.text
    err = r.json()["error"]
    assert err["code"] == code and needle in err["message"]
    assert _post(server, {"text": "a [MASK]", "decoding": {"max_new_tokens": 2}}).status_code == 200


def test_unknown_route_and_method_are_json(server):
    r = httpx.get(server.url + "/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = httpx.get(server.url + "/v1/fill", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_playground_page_is_self_contained(server):
    r = httpx.get(server.url + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "/v1/fill" in page and "[gMASK]" in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page


class _HeldFiller:
    """The filler, whose first ``fill`` waits until ``ready()`` (or 30 s): requests pile up."""

    def __init__(self, filler, ready):
        self.model, self.tokenizer, self.real, self.ready = (
            filler.model,
            filler.tokenizer,
            filler,
            ready,
        )
        self.calls: list[int] = []

    def fill(self, texts, *a, **kw):
        deadline = time.monotonic() + 30
        while not self.calls and not self.ready() and time.monotonic() < deadline:
            time.sleep(0.005)
        self.calls.append(len(texts))
        return self.real.fill(texts, *a, **kw)


def test_concurrent_requests_are_batched_and_each_gets_its_own_fill(filler):
    texts = [f"{t} [MASK]" for t in TEXTS] * 4  # 12 requests, 3 distinct prompt lengths
    svc = FillService(filler, max_batch=8, wait_ms=5)
    held = _HeldFiller(filler, lambda: svc.stats.requests + svc.pending >= len(texts))
    svc.filler = held
    out: dict[int, dict] = {}
    with svc, BackgroundServer(create_app(svc)) as s:

        def one(i: int) -> None:
            out[i] = _post(s, {"text": texts[i], "decoding": {"max_new_tokens": 4}}).json()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, text in enumerate(texts):  # padded batches give each row its own fill
        assert out[i]["text"] == filler.fill(text, max_new_tokens=4).text
    # while the first batch ran, the others queued; then they went in full batches of 8
    rest = len(texts) - held.calls[0]
    assert held.calls[1:] == [8] * (rest // 8) + ([rest % 8] if rest % 8 else []), held.calls
    assert svc.stats.requests == len(texts) and svc.stats.largest_batch > 1


def test_a_long_generation_does_not_block_healthz(filler):
    gate = threading.Event()
    slow = FillService(filler, max_batch=1, wait_ms=0)
    real_fill = filler.fill

    class Gated:  # the model call waits until the health check has answered
        model, tokenizer = filler.model, filler.tokenizer

        def fill(self, *a, **kw):
            gate.wait(30)
            return real_fill(*a, **kw)

    slow.filler = Gated()
    with slow, BackgroundServer(create_app(slow)) as s:
        pending: dict = {}
        t = threading.Thread(
            target=lambda: pending.update(r=_post(s, {"text": "a [MASK]", "decoding": {}}))
        )
        t.start()
        deadline = time.monotonic() + 10
        while slow.stats.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.stats.requests == 1, "the fill did not reach the model"
        start = time.monotonic()
        h = httpx.get(s.url + "/healthz", timeout=5)
        assert h.status_code == 200 and h.json()["status"] == "ok"
        assert time.monotonic() - start < 5
        assert "r" not in pending  # the fill is still running
        gate.set()
        t.join(60)
        assert pending["r"].status_code == 200


def test_seeded_samples_are_not_batched_and_repeat(server):
    body = {
        "text": "the [MASK]",
        "decoding": {"strategy": "sample", "seed": 7, "max_new_tokens": 4},
    }
    a, b = _post(server, body).json(), _post(server, body).json()
    assert a["fills"][0]["token_ids"] == b["fills"][0]["token_ids"]


def test_service_rejects_bad_settings_and_finishes_queued_work_on_close(filler):
    with pytest.raises(ValueError, match="max_batch"):
        FillService(filler, max_batch=0)
    svc = FillService(filler, max_batch=4, wait_ms=50).start()
    futures = [svc.submit(svc.check(f"{t} [MASK]", {"max_new_tokens": 3})) for t in TEXTS]
    svc.close()
    assert [f.result(0).fills[0].token_ids for f in futures] == [
        filler.fill(f"{t} [MASK]", max_new_tokens=3).fills[0].token_ids for t in TEXTS
    ]
    with pytest.raises(RuntimeError, match="not running"):
        svc.submit(svc.check("a [MASK]"))


def test_cli_serve_help_and_bad_flags(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "127.0.0.1" in out and "--precision" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--model", "x", "--precision", "fp8"])
    assert e.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "x", "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err


def test_healthz_says_503_when_the_worker_is_gone(filler):
    svc = FillService(filler)
    with BackgroundServer(create_app(svc)) as s:  # never started
        h = httpx.get(s.url + "/healthz", timeout=10)
        assert h.status_code == 503 and h.json()["status"] == "stopped"
        r = _post(s, {"text": "a [MASK]"})
        assert r.status_code == 500 and "not running" in r.json()["error"]["message"]


def test_cli_serves_a_model_folder(filler, tmp_path):
    import socket
    import subprocess
    import sys

    from blankfill.pretrained import save_pretrained

    folder = save_pretrained(filler.model, tmp_path / "m", filler.tokenizer)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "blankfill", "serve", "--model", str(folder), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "blankfill serve did not come up"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {"text": "the cat [MASK] on the mat.", "decoding": {"max_new_tokens": 3}}
        r = httpx.post(url + "/v1/fill", json=body, timeout=60)
        assert r.status_code == 200
        assert r.json()["text"] == filler.fill(body["text"], max_new_tokens=3).text
    finally:
        proc.terminate()
        proc.wait(30)
    assert f"127.0.0.1:{port}" in proc.stderr.read()


def test_streamed_text_holds_back_half_characters_and_adds_up(filler):
    from blankfill.serve.app import _Increments

    tok = filler.tokenizer
    ids = tok.encode("é日")  # byte-level: 2 + 3 byte tokens, none merged in this vocabulary
    assert len(ids) == 5
    inc = _Increments(tok)
    assert [inc.add(0, [i]) for i in ids[:4]] == ["", "é", "", ""]  # a character with its last byte
    whole = tok.decode(ids[:4], skip_special_tokens=True)  # "é" and half of "日"
    assert inc.rest() == [(0, whole[1:])] and whole[1:].startswith("\ufffd")
    assert inc.rest() == []  # nothing left once flushed
