"""Stop sequences matched on decoded text (OpenAI `stop`): the output is cut before the first match and the
request ends with finish_reason "stop". While streaming, text that could be the start of a match is held back
until it is known not to be one, so no stop sequence (or a piece of one) is ever sent to the client.

`StopMatcher(stops).feed(text)` takes the next piece of decoded text and returns (safe_text, stopped): the text that
can be sent now, and whether a stop sequence was found (then safe_text ends right before it and nothing more comes).
`flush()` returns the held-back tail at the end of a generation that stopped for another reason.
"""
from __future__ import annotations

MAX_STOPS = 4  # OpenAI's limit: a string or up to 4 strings
MAX_STOP_CHARS = 128  # longest stop sequence accepted (a bound on the held-back text)


class StopMatcher:
    def __init__(self, stops: list[str] | tuple[str, ...]):
        self.stops = [s for s in stops if s]
        self.text = ""  # everything fed so far (the part before any match)
        self.sent = 0  # how much of `text` was returned as safe
        self.cut: int | None = None  # position of the first match in `text`

    def _held(self) -> int:
        """Length of the longest suffix of the unsent text that is a proper prefix of a stop sequence."""
        tail = self.text[self.sent:]
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(tail)), best, -1):
                if tail.endswith(s[:k]):
                    best = k
                    break
        return best

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.cut is not None:
            return "", True
        start = max(0, len(self.text) - max((len(s) for s in self.stops), default=0))
        self.text += piece
        if not self.stops:
            out, self.sent = self.text[self.sent:], len(self.text)
            return out, False
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.cut = min(hits)
            out = self.text[self.sent:self.cut] if self.cut > self.sent else ""
            self.text = self.text[:self.cut]
            self.sent = len(self.text)
            return out, True
        safe = len(self.text) - self._held()
        out = self.text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out, False

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out

    @property
    def stopped(self) -> bool:
        return self.cut is not None
