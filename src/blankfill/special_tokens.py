"""GLM's command tokens (spec §2): their roles, texts in each vocabulary, and ``SpecialTokens``.

The table of roles is in ``blankfill.tokenizer``'s docstring; every name here is re-exported there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ROLES = ("pad", "eos", "cls", "mask", "smask", "gmask", "sop", "eop", "sep", "unk")
# Text of each role as GLM writes it (official CommandToken names).
ROLE_TEXT = {
    "pad": "<|endoftext|>",
    "eos": "<|endoftext|>",
    "cls": "[CLS]",
    "mask": "[MASK]",
    "smask": "[sMASK]",
    "gmask": "[gMASK]",
    "sop": "<|startofpiece|>",
    "eop": "<|endofpiece|>",
    "sep": "[SEP]",
    "unk": "[UNK]",
}
# Token order of a trained BPE: these take ids 0..8 (pad = eos = 0, so zero padding is eos).
TRAINED_SPECIALS = tuple(dict.fromkeys(ROLE_TEXT[r] for r in ("eos", *ROLES[2:])))
# Role -> its text in each official vocabulary, where it differs from GLM's (spec §2 table).
_VOCAB_TEXT: dict[str, dict[str, str]] = {
    "bert": {**ROLE_TEXT, "pad": "[PAD]", "eos": "[PAD]"},
    "gpt2": ROLE_TEXT,
    "roberta": {
        **ROLE_TEXT,
        "pad": "</s>",
        "eos": "</s>",
        "sep": "</s>",
        "cls": "<s>",
        "mask": "<mask>",
        "unk": "<unk>",
    },
}
_LSTRIP = frozenset({"[MASK]", "[sMASK]", "[gMASK]", "<mask>"})  # official lstrip=True
TOKENIZER_FILE = "tokenizer.json"
SPECIAL_FILE = "special_tokens.json"
FORMAT = "blankfill-tokenizer/1"


@dataclass(frozen=True, kw_only=True)
class SpecialTokens:
    """Ids of GLM's command tokens (spec §2); ``smask``/``gmask`` are None without task masks."""

    pad: int  # padding id (rows are padded with it after Part B)
    eos: int  # end of document
    cls: int  # first token of Part A (official ENC)
    mask: int  # [MASK]: token-level blank
    sop: int  # <|startofpiece|>: opens a span in Part B
    eop: int  # <|endofpiece|>: closes a span in Part B
    sep: int  # [SEP]
    unk: int  # [UNK]
    smask: int | None = None  # [sMASK]: sentence-level blank
    gmask: int | None = None  # [gMASK]: document-level blank

    @property
    def mask_ids(self) -> tuple[int, ...]:
        """The blank ids present, in the order [MASK], [sMASK], [gMASK]."""
        return tuple(i for i in (self.mask, self.smask, self.gmask) if i is not None)

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)
