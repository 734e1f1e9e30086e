"""Stop strings on a stream: hold back what could still become a stop string, cut at one."""

from __future__ import annotations


class StopText:
    """Feed characters one at a time; get back what is safe to send and whether a stop matched.

    A character that could be the start of a stop string is held until it is clear either way,
    so a streamed text never shows part of a stop string and the text ends just before it.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held, self.held_lp = "", []  # text not yet sent, and its logprob entries

    def feed(self, ch: str, lp=None) -> tuple[str, list, bool]:
        """Add ``ch`` → (text to send now, its logprob entries, whether a stop string matched)."""
        self.held += ch
        if lp is not None:
            self.held_lp.append(lp)
        if not self.stops:
            return self.flush() + (False,)
        for s in self.stops:
            at = self.held.find(s)
            if at >= 0:  # send what came before the stop string, drop the rest
                text, entries = self.held[:at], self.held_lp[:at]
                self.held, self.held_lp = "", []
                return text, entries, True
        cut = self._safe_prefix()
        text, entries = self.held[:cut], self.held_lp[:cut]
        self.held, self.held_lp = self.held[cut:], self.held_lp[cut:]
        return text, entries, False

    def flush(self) -> tuple[str, list]:
        """Everything still held (the text ended without a stop string)."""
        text, entries = self.held, self.held_lp
        self.held, self.held_lp = "", []
        return text, entries

    def _safe_prefix(self) -> int:
        """Length of the held text's longest prefix whose rest could still start a stop string."""
        for cut in range(len(self.held)):
            rest = self.held[cut:]
            if any(s.startswith(rest) for s in self.stops):
                return cut
        return len(self.held)
