"""Text normalization used to decide that two records say the same thing."""
from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")


def normalize_text(text: str | None) -> str:
    """NFKC, lowercase, collapse whitespace runs to one space, strip: full-width, case and spacing noise vanish."""
    if text is None:
        return ""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()
