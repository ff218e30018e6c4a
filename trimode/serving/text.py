"""From committed token ids to response text: incremental detokenisation and stop strings.

Byte-level BPE tokens may end in the middle of a UTF-8 character, so text is
released only once it decodes cleanly (the prefix/read offset scheme of
text-generation-inference): each push decodes a short window, never the
whole sequence. Stop strings are searched in the released text; text that
could still be the start of a stop string is held back until it is not, so
a stream never shows a stop string or a part of one.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextAssembler:
    """Accumulates one choice's tokens; ``push`` returns the newly releasable text."""

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids up to here are already turned into text
        self.text = ""  # decoded so far (before stop handling)
        self._released = 0  # characters of self.text already handed out
        self.stopped = False  # a stop string was found; the text ends before it

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, tokens: list[int]) -> str:
        if self.stopped:
            return ""
        self.ids.extend(tokens)
        before = self._decode(self.ids[self._prefix: self._read])
        after = self._decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Everything still held (an incomplete character decodes as U+FFFD here)."""
        if not self.stopped:
            before = self._decode(self.ids[self._prefix: self._read])
            after = self._decode(self.ids[self._prefix:])
            self.text += after[len(before):]
            self._prefix = self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stop:
            cut = min((i for i in (self.text.find(s, max(0, self._released - len(s) + 1)) for s in self.stop)
                       if i >= 0), default=-1)
            if cut >= 0:
                self.stopped = True
                self.text = self.text[:cut]
                out, self._released = self.text[self._released:], len(self.text)
                return out
            if not final:
                end = len(self.text) - _held(self.text, self.stop)
                end = max(end, self._released)
                out, self._released = self.text[self._released:end], end
                return out
        out, self._released = self.text[self._released:], len(self.text)
        return out


def _held(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
