"""The playground page in headless Chromium (Debian's ``chromium``), driven over the DevTools
protocol: load ``/``, type a prompt, press Fill, read the highlighted fills from the DOM, save a
screenshot. Skips with a reason when Chromium or the ``websockets`` client is absent."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
ws_client = pytest.importorskip("websockets.sync.client", reason="needs websockets (DevTools)")

from blankfill.filling import BlankFiller  # noqa: E402
from blankfill.model import GLM  # noqa: E402
from blankfill.serve import FillService, create_app  # noqa: E402
from blankfill.serve.server import BackgroundServer  # noqa: E402
from blankfill.testing import tiny_config  # noqa: E402
from blankfill.tokenizer import train_tokenizer  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
TEXTS = ["the cat sat on the mat.", "a dog ran in the park!", "Paris is the capital of France."]
PROMPT = "Paris is the [MASK] of France. The cat sat on the [sMASK]"
NOTE_COPY = os.environ.get("BLANKFILL_PLAYGROUND_PNG")  # also save the screenshot here


class DevTools:
    """The smallest DevTools client: one page, commands answered in order."""

    def __init__(self, ws_url: str) -> None:
        self._conn = ws_client.connect(ws_url, max_size=None, open_timeout=30)
        self.ws = self._conn.__enter__()
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def close(self) -> None:
        self._conn.__exit__(None, None, None)


@pytest.fixture
def chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; .ci/run installs it)")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu"]
    cmd += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    cmd += ["--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    cmd += ["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
    cmd += ["--window-size=960,720", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"chromium exited with {proc.returncode}")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            port = m and int(m.group(1))
        assert port, "chromium did not print its DevTools address"
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(p for p in pages if p["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_playground_fills_a_prompt_in_chromium(chromium, tmp_path):
    tok = train_tokenizer(TEXTS * 20, vocab_size=300)
    torch.manual_seed(0)
    filler = BlankFiller(GLM(tiny_config(vocab_size=tok.padded_vocab_size)), tok)
    want = filler.fill(PROMPT, max_new_tokens=6)
    with FillService(filler) as svc, BackgroundServer(create_app(svc)) as server:
        chromium.call("Page.enable")
        chromium.call("Page.navigate", url=server.url + "/")
        deadline = time.monotonic() + 30
        while chromium.js("document.readyState") != "complete" or not chromium.js(
            "!!document.getElementById('go')"
        ):
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.05)
        assert chromium.js("document.getElementById('form').checkValidity()"), "invalid defaults"
        chromium.js(
            f"document.getElementById('text').value = {json.dumps(PROMPT)};"
            "document.getElementById('max_new_tokens').value = '6';"
            "document.getElementById('go').click();"
        )
        deadline = time.monotonic() + 60
        while chromium.js("document.body.dataset.state") not in ("done", "error"):
            assert time.monotonic() < deadline, "no result within 60 s (is the form valid?)"
            time.sleep(0.05)
        status = chromium.js("document.getElementById('status').textContent")
        assert chromium.js("document.body.dataset.state") == "done", status
        shown = chromium.js("document.getElementById('result').textContent")
        marks = chromium.js(
            "[...document.querySelectorAll('#result mark.fill')].map(m => m.textContent)"
        )
        rows = chromium.js("document.querySelectorAll('#fills tr').length")
        shot = chromium.call("Page.captureScreenshot", format="png")
    assert shown == want.text
    assert marks == [f.text.lstrip() for f in want.fills]
    assert rows == 1 + len(want.fills)
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    (tmp_path / "playground.png").write_bytes(png)
    if NOTE_COPY:
        shutil.copyfile(tmp_path / "playground.png", NOTE_COPY)
