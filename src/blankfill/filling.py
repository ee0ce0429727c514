"""Blank filling on text: ``fill(model, tokenizer, text, **decoding)`` (``blankfill fill``).

The prompt is built as the official ``generate_samples.py`` builds it (spec §4.4): ``[CLS]`` +
the text's tokens + ``[eos]``, except that no ``[eos]`` follows a final ``[gMASK]``; a text with
no blank gets ``[gMASK]`` appended (``[MASK]`` for vocabularies without task masks). Blanks are
filled left to right by :func:`blankfill.generate.generate`; the filled text replaces each blank
marker (and the whitespace it absorbed) with its fill.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DecodingConfig
from .folder import check_compatible
from .generate import Fill, InfillIds, decoding_config, decoding_layout_, generate
from .model import GLM
from .quantize import DecodingPrecision, decoding_precision_
from .tokenizer import ROLE_TEXT, Tokenizer


@dataclass(frozen=True, kw_only=True)
class FillResult:
    """One prompt, filled."""

    prompt: str  # the text as given
    text: str  # the text with every blank replaced by its fill
    fills: tuple[Fill, ...]  # one per blank, left to right (``Fill.text`` is set)
    prompt_ids: tuple[int, ...]  # Part A as fed to the model ([CLS] ... [eos])
    around: tuple[str, ...] = ()  # the prompt's text around the blanks (len(fills) + 1 pieces)
    absorbed: tuple[str, ...] = ()  # the whitespace before each blank that its fill replaces

    def marked(self, open_: str = "[", close: str = "]") -> str:
        """The filled text with each fill between ``open_`` and ``close``, e.g. "the [cat] sat"."""
        return _render(self.around, self.absorbed, [f.text for f in self.fills], open_, close)


def blank_pattern(tokenizer: Tokenizer) -> re.Pattern[str]:
    """Regex of a blank marker as typed in text, with the whitespace it absorbs (official lstrip)."""
    roles = [r for r in ("mask", "smask", "gmask") if getattr(tokenizer.special, r) is not None]
    texts = {ROLE_TEXT[r] for r in roles}
    texts |= {alias for text, alias in tokenizer.aliases.items() if text in texts}
    alternatives = "|".join(map(re.escape, sorted(texts, key=len, reverse=True)))
    return re.compile(rf"(\s*)(?:{alternatives})")


def build_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Part A of ``text``, built as the official code builds it (see the module docstring)."""
    s = tokenizer.special
    ids = tokenizer.encode(text)
    if not set(tokenizer.mask_ids).intersection(ids):
        ids.append(s.gmask if s.gmask is not None else s.mask)
    return [s.cls, *ids] + ([] if s.gmask is not None and ids[-1] == s.gmask else [s.eos])


def _segments(tokenizer: Tokenizer, text: str, n_blanks: int) -> tuple[list[str], list[str]]:
    """The text around the blanks, and the whitespace each blank absorbed."""
    parts, spaces, last = [], [], 0
    for m in blank_pattern(tokenizer).finditer(text):
        parts.append(text[last : m.start()])
        spaces.append(m.group(1))
        last = m.end()
    parts.append(text[last:])
    if not spaces:  # no blank typed: the appended one fills the end
        return [text, ""], [" " if text and not text[-1].isspace() else ""]
    if len(spaces) != n_blanks:
        raise ValueError(
            f"found {len(spaces)} blank marker(s) in the text but {n_blanks} blank token(s) after "
            "tokenizing it; write blanks as [MASK], [sMASK] or [gMASK]"
        )
    return parts, spaces


def _join(space: str, fill_text: str) -> str:
    """A fill that brings its own leading space (byte-level BPE) replaces the absorbed one."""
    return fill_text if fill_text[:1].isspace() else space + fill_text


def _render(
    around: Sequence[str], absorbed: Sequence[str], fills: Sequence[str], open_="", close=""
) -> str:
    """Text around the blanks joined with the fills (each between ``open_`` and ``close``)."""
    out = around[0]
    for space, text, part in zip(absorbed, fills, around[1:], strict=True):
        joined = _join(space, text)
        lead = joined[: len(joined) - len(joined.lstrip())]
        out += lead + open_ + joined[len(lead) :] + close + part
    return out


def fill(
    model: GLM,
    tokenizer: Tokenizer,
    text: str | Sequence[str],
    decoding: DecodingConfig | None = None,
    *,
    on_token: Callable[[int, int, list[int]], None] | None = None,
    **overrides: Any,
) -> FillResult | list[FillResult]:
    """Fill every blank of ``text`` (or of each text of a list, decoded as one padded batch).

    Args:
        model: a GLM whose vocabulary is the tokenizer's (checked).
        tokenizer: its tokenizer.
        text: a prompt, or a list of prompts.
        decoding: decoding settings; ``overrides`` replace fields (``strategy="beam"``, ...).
        on_token: streaming callback ``(prompt index, blank index, new token ids)``.

    Returns:
        A ``FillResult`` (a list of them for a list of texts).
    """
    check_compatible(model, tokenizer)
    texts = [text] if isinstance(text, str) else list(text)
    prompts = [build_prompt(tokenizer, t) for t in texts]
    cfg = decoding_config(decoding, **overrides)
    was_training = model.training
    model.eval()
    try:
        rows = generate(
            model, prompts, ids=InfillIds.from_tokenizer(tokenizer), decoding=cfg, on_token=on_token
        )
    finally:
        model.train(was_training)
    results = []
    for t, p, row in zip(texts, prompts, rows, strict=True):
        parts, spaces = _segments(tokenizer, t, len(row))
        fills = tuple(
            dataclasses.replace(f, text=tokenizer.decode(f.token_ids, skip_special_tokens=True))
            for f in row
        )
        out = _render(parts, spaces, [f.text for f in fills])
        results.append(
            FillResult(
                prompt=t,
                text=out,
                fills=fills,
                prompt_ids=tuple(p),
                around=tuple(parts),
                absorbed=tuple(spaces),
            )
        )
    return results[0] if isinstance(text, str) else results


class BlankFiller:
    """A model and its tokenizer, checked to belong together: ``BlankFiller(m, t).fill(text)``.

    ``precision`` converts the model in place for decoding (``blankfill.quantize``): "auto" (the
    default: bf16 on a GPU with bf16 or a CPU with native bf16 where it measures faster, fp32
    elsewhere), "fp32" (exact fills), "bf16" or "int8" (weight-only); all but fp32 can change
    fills.
    """

    def __init__(
        self, model: GLM, tokenizer: Tokenizer, *, precision: DecodingPrecision = "auto"
    ) -> None:
        check_compatible(model, tokenizer)
        model = decoding_precision_(decoding_layout_(model.eval()), precision)
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        tokenizer: str | Path | None = None,
        *,
        precision: DecodingPrecision = "auto",
    ) -> BlankFiller:
        """Load a model folder (``save_pretrained``) and its tokenizer (or the one at ``tokenizer``)."""
        from .folder import load_model_and_tokenizer

        return cls(*load_model_and_tokenizer(path, tokenizer), precision=precision)

    def fill(self, text: str | Sequence[str], decoding: DecodingConfig | None = None, **kw: Any):
        """``blankfill.fill`` with this model and tokenizer."""
        return fill(self.model, self.tokenizer, text, decoding, **kw)


class Streamer:
    """Writes one prompt's filled text as its tokens arrive (held back mid multi-byte character)."""

    def __init__(
        self, tokenizer: Tokenizer, text: str, n_blanks: int, out: Any, mark: tuple[str, str]
    ) -> None:
        self.tok, self.out, (self.open, self.close) = tokenizer, out, mark
        self.parts, self.spaces = _segments(tokenizer, text, n_blanks)
        self.blank, self.ids, self.shown, self.opened = -1, [], "", False

    def _show(self, final: bool) -> None:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return  # wait for the rest of a multi-byte character
        new = text[len(self.shown) :] if text.startswith(self.shown) else ""
        if new and not self.shown:
            new = _join(self.spaces[self.blank], new)
        elif final and not text:
            new = self.spaces[self.blank]
        if not self.opened and (new or final):  # the mark goes after the fill's leading space
            lead = new[: len(new) - len(new.lstrip())]
            new, self.opened = lead + self.open + new[len(lead) :], True
        self.out.write(new)
        self.out.flush()
        self.shown = text

    def _close(self) -> None:
        if self.blank >= 0:
            self._show(final=True)
            self.out.write(self.close + self.parts[self.blank + 1])

    def token(self, blank: int, ids: list[int]) -> None:
        if self.blank < 0:  # nothing is written before decoding has started (errors come first)
            self.out.write(self.parts[0])
        while self.blank < blank:
            self._close()
            self.blank, self.ids, self.shown, self.opened = self.blank + 1, [], "", False
        self.ids += ids
        self._show(final=False)

    def finish(self) -> None:
        self.token(len(self.spaces) - 1, [])
        self._close()
        self.out.write("\n")
        self.out.flush()
