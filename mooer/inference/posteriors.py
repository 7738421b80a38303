"""A batch's CTC log-posteriors as the host reads them: the columns of a few tokens.

Spotting a hotword list, rewriting an answer with it and aligning word times all run on the
host, and each reads the CTC head's log-posteriors [B, T, V] (blank last) at a few tokens'
columns and the blank's: the list's tokens, the answers', the candidates'. At Qwen2's 151,937
classes the posteriors of 16 utterances of 170 frames are 1.65 GB, brought to the host whole
a batch for a thousand columns or so read. `Posteriors` keeps them where the head computed
them and brings over only the columns asked for (`columns`), numbered anew with the blank
last, so that CTC code written for [T, V] with the blank last reads them as it is. On the
host they are read in place, nothing copied (`IN_PLACE`).

    posteriors = Posteriors(log_probs, lengths)
    host, columns = posteriors.columns(answers)   # [B, T, K], each answer's tokens renumbered
    spans = viterbi_batch(host, posteriors.frames, columns, host.shape[-1] - 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["IN_PLACE", "Posteriors"]

# the device types whose posteriors are read where they are (the host's: no copy to save)
IN_PLACE = frozenset({"cpu"})


class Posteriors:
    """A batch's CTC log-posteriors [B, T, V] (the blank last) and each utterance's frames,
    read on the host by the columns of the tokens asked for (`columns`)."""

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int]) -> None:
        self.log_probs = log_probs
        self.frames = [int(n) for n in lengths]
        self.blank = log_probs.shape[-1] - 1
        self.in_place = log_probs.device.type in IN_PLACE

    @classmethod
    def of(cls, ctc: Posteriors | tuple[torch.Tensor, torch.Tensor]) -> Posteriors:
        """`ctc` as Posteriors: as it is, or the (log-posteriors, frames) of
        `SpeechLLM.ctc_log_probs`."""
        return ctc if isinstance(ctc, Posteriors) else cls(*ctc)

    def columns(self, token_lists: Sequence[Sequence[int]]
                ) -> tuple[torch.Tensor, list[list[int]]]:
        """The host's log-posteriors of the batch in which every token of `token_lists` has a
        column and the blank the last one, [B, T, K], and the lists with each token
        renumbered to its column. Read in place where the posteriors are on the host (all V
        columns, the lists as they are); else only those K columns are copied."""
        lists = self._checked(token_lists)
        if self.in_place:
            return self.log_probs.float(), lists
        index, lists = self._index(lists)
        return self.log_probs.index_select(-1, index).float().cpu(), lists

    def rows(self, rows: Sequence[int], token_lists: Sequence[Sequence[int]]
             ) -> tuple[list[torch.Tensor], list[list[int]]]:
        """`columns` of some utterances, each on its own frames: [frames, K] each (in place:
        views of the batch's tensor)."""
        lists = self._checked(token_lists)
        if self.in_place:
            return [self.log_probs[r, :self.frames[r]].float() for r in rows], lists
        index, lists = self._index(lists)
        picked = torch.tensor(list(rows), dtype=torch.long, device=self.log_probs.device)
        # the columns first: a copy of [B, T, K], never of whole rows [n, T, V]
        host = self.log_probs.index_select(-1, index).index_select(0, picked).float().cpu()
        return [host[i, :self.frames[r]] for i, r in enumerate(rows)], lists

    def _checked(self, token_lists: Sequence[Sequence[int]]) -> list[list[int]]:
        lists = [list(ids) for ids in token_lists]
        filled = [ids for ids in lists if ids]
        if filled and (min(map(min, filled)) < 0 or max(map(max, filled)) >= self.blank):
            outside = next(t for ids in filled for t in ids if not 0 <= t < self.blank)
            raise ValueError(f"token {outside} has no class of its own on the CTC head "
                             f"({self.blank} classes and the blank)")
        return lists

    def _index(self, lists: list[list[int]]) -> tuple[torch.Tensor, list[list[int]]]:
        """The columns to copy (the lists' tokens in order, the blank last), and the lists
        renumbered to them."""
        wanted = sorted({t for ids in lists for t in ids})
        number = {t: k for k, t in enumerate(wanted)}
        index = torch.tensor([*wanted, self.blank], dtype=torch.long,
                             device=self.log_probs.device)
        return index, [[number[t] for t in ids] for ids in lists]
