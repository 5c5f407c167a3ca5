"""Token ids to answer text, piece by piece, the same for streaming and non-streaming answers.

Both kinds of answer are built by one :class:`TextAssembler`: a streamed answer is its pieces,
a non-streamed one their concatenation, so the two are equal by construction. The final text
is what :class:`~longllava_sdk.pipeline.Pipeline` answers for the same ids (decoded, special
and image tokens skipped, surrounding whitespace stripped), cut before the first stop string.

Decoding is incremental: only a short window of ids is decoded per step, and a piece is
released only once it is stable (it does not end in an incomplete UTF-8 sequence, shown by
the tokenizer as U+FFFD), trailing whitespace is held back (the final answer is stripped),
and so is any ending that could be the start of a stop string.
"""

from __future__ import annotations

from typing import Callable, Sequence

Decode = Callable[[Sequence[int]], str]


class TextAssembler:
    """Accumulates generated ids and releases the answer text in pieces.

    Args:
        decode: ids to text (the processor's ``decode``: special and image tokens skipped).
        stop: stop strings; the answer ends before the first one found.
    """

    def __init__(self, decode: Decode, stop: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.stopped = False  # a stop string was found: the answer is complete
        self._text = ""  # decoded text, append-only
        self._prefix = 0  # ids[_prefix:_read] were decoded last step: the window's context
        self._read = 0
        self._released = 0  # characters of the answer handed out

    def push(self, token_id: int) -> str:
        """Add one generated id; the piece of answer that became final (possibly empty)."""
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        before = self.decode(self.ids[self._prefix:self._read])
        now = self.decode(self.ids[self._prefix:])
        # Decoding a window (not the last id alone) keeps word-boundary spaces right.
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._text += now[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the answer once generation ended (incomplete characters included)."""
        if not self.stopped and self._read < len(self.ids):
            before = self.decode(self.ids[self._prefix:self._read])
            now = self.decode(self.ids[self._prefix:])
            self._text += now[len(before):]
            self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        answer = self._text.lstrip()
        found = [i for i in (answer.find(s) for s in self.stop) if i >= 0]
        if found:
            answer, final = answer[:min(found)], True
            self.stopped = True
        end = len(answer.rstrip())
        if not final:
            end = min(end, self._stop_prefix_start(answer))
        piece = answer[self._released:end]
        self._released = max(self._released, end)
        return piece

    def _stop_prefix_start(self, answer: str) -> int:
        """Where the longest ending of ``answer`` that begins a stop string starts (``len`` if none)."""
        for start in range(max(0, len(answer) - max((len(s) for s in self.stop), default=0) + 1), len(answer)):
            tail = answer[start:]
            if any(s.startswith(tail) for s in self.stop):
                return start
        return len(answer)
