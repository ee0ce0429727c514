"""Generic cloze scoring (spec §4.1): one encoder and one scorer for every cloze task.

Input of a record: Part A = ``[CLS] pattern(x) [eos]`` with one ``[MASK]``. Part B holds one
*segment* per candidate answer, ``[sop] a_1 .. a_n`` with targets ``a_1 .. a_n [eop]``, every token
at the mask's position and block positions 1..n+1 (or as the model was pretrained: 1D, sentinel;
``blankfill.layout``). All candidates of a record share one row and
one Part A: the attention mask is block-diagonal (Part A sees Part A; a segment sees Part A and
itself causally, never another segment), so Part A is encoded once per record and the score of a
candidate equals that of a separate ``[Part A, segment]`` sequence (tested against brute force).

- Single-token verbalizers: one segment ``[sop]``; the score of label k is the raw logit of its
  verbalizer token at ``[sop]`` (official ``GLMForSingleTokenCloze``).
- Multi-token answers: the score is the sum of target log-probs incl. ``[eop]``, divided by
  ``len ** length_penalty`` (official ``GLMForMultiTokenCloze``).
- Cross-entropy over the candidates' scores is the loss in both cases.
- ``ClassifierHead``: the paper's ablation, tanh(Linear) -> dropout -> Linear on the [CLS] state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import PartBLayout
from ..model import rows_from
from .tasks import BLANK, ClozeTask, Cut

TWO_D = PartBLayout()  # GLM's own layout (2D positions, one [MASK])

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClozeInput:
    """One encoded record."""

    part_a: tuple[int, ...]  # [CLS] pattern(x) [eos]
    mask_pos: int  # index of the blank in part_a
    answers: tuple[tuple[int, ...], ...]  # per candidate: token ids (multi-token: ending in eop)
    target: int  # index of the correct candidate for training; -1: none


@dataclass(frozen=True, kw_only=True)
class ClozeBatch:
    """Padded rows of Part A + segments. Shapes: B rows, T tokens, C candidates (max per row)."""

    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, 2, T]
    attention_mask: torch.Tensor  # [B, 1, T, T] bool
    sop_index: torch.Tensor  # [B, C] row index of each segment's [sop]
    targets: torch.Tensor  # [B, T] next-token target at each segment position, -100 elsewhere
    candidate: torch.Tensor  # [B, T] candidate index of each segment position, -1 elsewhere
    answer_ids: torch.Tensor  # [B, C] single-token mode: each candidate's token id
    num_candidates: torch.Tensor  # [B]
    target: torch.Tensor  # [B] correct candidate, -1 for none (ignored by the loss)
    target_index: torch.Tensor  # [N] flat indices (into B*T) of the positions with a target
    first_row: int = 0  # the first row of any [sop] (host-side): the last block starts there


_WARNED: set[tuple] = set()  # (task, pattern id, answer lengths, vocabulary size) warned about


def is_single_token(task: ClozeTask, tokenizer, pattern_id: int) -> bool:
    """True when every verbalizer answer is exactly one token (then logits at [sop] are scored)."""
    if task.multi_token:
        return False
    lengths = [len(tokenizer.encode(v)) for v in task.verbalizer(pattern_id)]
    if any(n != 1 for n in lengths):
        key = (task.name, pattern_id, tuple(lengths), tokenizer.vocab_size)
        if key in _WARNED:  # called at every evaluation: say it once
            return False
        _WARNED.add(key)
        log.warning(
            "task %s: verbalizer %s is not single-token in this vocabulary (%s tokens); scoring "
            "the answers as multi-token sequences",
            task.name, task.verbalizer(pattern_id), lengths,
        )  # fmt: skip
        return False
    return True


def encode_record(
    task: ClozeTask,
    record: dict,
    tokenizer,
    *,
    pattern_id: int,
    max_seq_len: int,
    single_token: bool,
) -> ClozeInput:
    """Tokenize a record: Part A truncated to fit (shortenable fields first, longest first)."""
    sp = tokenizer.special
    answers = [tuple(tokenizer.encode(c)) for c in task.candidates(record, pattern_id)]
    if single_token:
        budget = max_seq_len - 1  # + [sop]
    else:
        answers = [a + (sp.eop,) for a in answers]
        budget = max_seq_len - max(len(a) for a in answers)  # [sop] a_1 .. a_n
    pieces: list[list[int]] = []
    cut: list[bool] = []
    rendered = task.render(record, pattern_id)
    for i, p in enumerate(rendered):
        if p == BLANK:
            pieces.append([sp.mask])
            cut.append(False)
            continue
        text = p.text if isinstance(p, Cut) else p
        if i + 1 < len(rendered) and rendered[i + 1] == BLANK:
            text = text.rstrip(" ")  # the [MASK] token stands for the space before the answer
        pieces.append(tokenizer.encode(text))
        cut.append(isinstance(p, Cut))
    excess = 2 + sum(map(len, pieces)) - budget
    while excess > 0:
        longest = max((i for i in range(len(pieces)) if cut[i]), key=lambda i: len(pieces[i]),
                      default=None)  # fmt: skip
        if longest is None or not pieces[longest]:
            raise ValueError(
                f"{record.get('_where', task.name)}: the input does not fit max_seq_len="
                f"{max_seq_len} even with its shortenable fields emptied; raise max_seq_len"
            )
        del pieces[longest][-1]
        excess -= 1
    part_a = [sp.cls] + [t for p in pieces for t in p] + [sp.eos]
    label = record.get("target", record["label"])
    return ClozeInput(
        part_a=tuple(part_a), mask_pos=part_a.index(sp.mask), answers=tuple(answers),
        target=int(label),
    )  # fmt: skip


def collate(
    inputs: Sequence[ClozeInput],
    sop: int,
    pad: int,
    single_token: bool,
    layout: PartBLayout = TWO_D,
) -> ClozeBatch:
    """Pad encoded records into one ``ClozeBatch`` (one row per record, candidates side by side).

    ``layout``: the model's Part-B position rule (``blankfill.layout``; default 2D)."""
    pieces = [[sop] if single_token else [sop, *ans[:-1]] for x in inputs for ans in x.answers]
    owner = [b for b, x in enumerate(inputs) for _ in x.answers]  # [N] record of each segment
    blank = torch.tensor([inputs[b].mask_pos for b in owner], dtype=torch.long)  # [N]
    anchor = layout.anchor(
        blank,
        torch.tensor([len(inputs[b].part_a) for b in owner], dtype=torch.long),
        torch.tensor([inputs[b].part_a[inputs[b].mask_pos] for b in owner], dtype=torch.long),
    )
    seg_pos = layout.positions(anchor, max(map(len, pieces), default=1)).tolist()  # [N][2][n]
    rows, pos, blk, seg, tgt, cand, sops = [], [], [], [], [], [], []
    k_all = 0
    for x in inputs:
        ids, p, b = list(x.part_a), list(range(len(x.part_a))), [0] * len(x.part_a)
        s, t, c, starts = [0] * len(ids), [-100] * len(ids), [-1] * len(ids), []
        for k, ans in enumerate(x.answers):
            piece, (p_k, b_k) = pieces[k_all], seg_pos[k_all]
            k_all += 1
            starts.append(len(ids))
            ids += piece
            p += p_k[: len(piece)]
            b += b_k[: len(piece)]
            s += [k + 1] * len(piece)
            t += [-100] if single_token else list(ans)
            c += [k] * len(piece)
        for lst, v in zip((rows, pos, blk, seg, tgt, cand, sops), (ids, p, b, s, t, c, starts),
                          strict=True):  # fmt: skip
            lst.append(v)
    T = max(map(len, rows))
    C = max(len(x.answers) for x in inputs)

    def pad_to(seqs, value, n):
        return torch.tensor([list(q) + [value] * (n - len(q)) for q in seqs], dtype=torch.long)

    seg_t = pad_to(seg, -1, T)  # [B, T]: 0 Part A, k+1 candidate k, -1 padding
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # [T, T]
    same = seg_t.unsqueeze(2) == seg_t.unsqueeze(1)  # [B, T(query), T(key)]
    key_in_a = (seg_t == 0).unsqueeze(1)  # [B, 1, T]
    mask = key_in_a | (same & causal & (seg_t > 0).unsqueeze(2))  # [B, T, T]
    answer_ids = pad_to([[a[0] for a in x.answers] for x in inputs], pad, C)
    return ClozeBatch(
        input_ids=pad_to(rows, pad, T),
        position_ids=torch.stack([pad_to(pos, 0, T), pad_to(blk, 0, T)], dim=1),  # [B, 2, T]
        attention_mask=mask.unsqueeze(1),
        sop_index=pad_to(sops, 0, C),
        targets=pad_to(tgt, -100, T),
        candidate=pad_to(cand, -1, T),
        answer_ids=answer_ids,
        num_candidates=torch.tensor([len(x.answers) for x in inputs]),
        target=torch.tensor([x.target for x in inputs]),
        target_index=(pad_to(tgt, -100, T).flatten() != -100).nonzero().squeeze(1),  # host-side
        first_row=min((s[0] for s in sops if s), default=0),
    )


def to_device(batch: ClozeBatch, device: torch.device | str) -> ClozeBatch:
    fields = {k: getattr(batch, k) for k in batch.__dataclass_fields__}
    return ClozeBatch(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in fields.items()})


class ClassifierHead(nn.Module):
    """tanh(Linear) -> dropout -> Linear on the [CLS] output (official GLMForSequenceClassification)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        """[B, D] -> label scores [B, num_labels]."""
        return self.out_proj(self.dropout(torch.tanh(self.dense(cls_hidden))))


def score(
    model,
    batch: ClozeBatch,
    *,
    single_token: bool,
    length_penalty: float = 0.0,
    head: ClassifierHead | None = None,
) -> torch.Tensor:
    """Candidate scores [B, C]; padding candidates are -inf.

    Args:
        model: a GLM.
        batch: from ``collate``.
        single_token: score verbalizer logits at [sop] (else summed log-probs incl. eop).
        length_penalty: multi-token scores are divided by ``len ** length_penalty``.
        head: a ``ClassifierHead``: score from the [CLS] state instead of the LM.
    """
    first = 0 if head is not None else batch.first_row  # the head reads [CLS] (row 0)
    h = model.hidden(batch.input_ids, batch.position_ids, attention_mask=batch.attention_mask,
                     first_row=first)  # [B, T - first, D]  # fmt: skip
    B, C = batch.sop_index.shape
    valid = torch.arange(C, device=h.device) < batch.num_candidates.unsqueeze(1)  # [B, C]
    if head is not None:
        out = head(h[:, 0])  # [B, num_labels]
    elif single_token:
        h_sop = h[torch.arange(B, device=h.device), batch.sop_index[:, 0] - first]  # [B, D]
        logits = model.logits(h_sop)  # [B, V]
        out = logits.gather(1, batch.answer_ids)  # [B, C]
    else:
        sel = batch.target_index  # [N], computed in collate: no read-back of a device mask
        rows = rows_from(sel, batch.input_ids.shape[1], first)
        logp = F.log_softmax(model.logits(h.flatten(0, 1)[rows]).float(), dim=-1)  # [N, V]
        tok = logp.gather(1, batch.targets.flatten()[sel].unsqueeze(1)).squeeze(1)  # [N]
        flat = (torch.arange(B, device=h.device).unsqueeze(1) * C + batch.candidate).flatten()[sel]
        out = torch.zeros(B * C, device=h.device).index_add(0, flat, tok).view(B, C)
        if length_penalty:
            n = torch.zeros(B * C, device=h.device).index_add(0, flat, torch.ones_like(tok))
            out = out / n.view(B, C).clamp(min=1) ** length_penalty
    return out.float().masked_fill(~valid, float("-inf"))


def loss_fn(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over candidates; rows with target -1 do not count."""
    if not (target >= 0).any():
        return scores.sum() * 0.0
    return F.cross_entropy(scores, target, ignore_index=-1)


@torch.no_grad()
def score_all(
    model,
    inputs: Sequence[ClozeInput],
    *,
    sop: int,
    pad: int,
    single_token: bool,
    batch_size: int = 32,
    length_penalty: float = 0.0,
    head: ClassifierHead | None = None,
    progress: Callable[[int], None] | None = None,
    run: Callable | None = None,
    device: torch.device | str | None = None,
    layout: PartBLayout = TWO_D,
) -> list[list[float]]:
    """Scores of every record's candidates, in order (model in eval mode during the call).

    ``run(fn, batch)`` computes ``fn(glm, head, batch)`` (the training engine's wrapped module,
    ``EvalContext.run``); by default ``model`` and ``head`` are called directly. ``layout``: the
    model's Part-B positions (``blankfill.layout.model_layout``)."""
    if run is None:
        was_training = model.training
        model.eval()
        if head is not None:
            head.eval()
        try:
            return score_all(model, inputs, sop=sop, pad=pad, single_token=single_token,
                             batch_size=batch_size, length_penalty=length_penalty,
                             progress=progress, device=next(model.parameters()).device,
                             run=lambda fn, b: fn(model, head, b), layout=layout)  # fmt: skip
        finally:
            model.train(was_training)
            if head is not None:
                head.train(was_training)

    def scores_of(glm, head_, batch) -> torch.Tensor:
        return score(glm, batch, single_token=single_token, length_penalty=length_penalty,
                     head=head_)  # fmt: skip

    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i].part_a))  # less padding
    by_index: dict[int, list[float]] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = to_device(collate([inputs[i] for i in idx], sop, pad, single_token, layout),
                          device)  # fmt: skip
        s = run(scores_of, batch).float().cpu()
        for row, i in enumerate(idx):
            by_index[i] = s[row, : len(inputs[i].answers)].tolist()
        if progress is not None:
            progress(len(idx))
    return [by_index[i] for i in range(len(inputs))]
