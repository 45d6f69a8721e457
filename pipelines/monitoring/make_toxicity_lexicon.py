"""Derive the placeholder toxicity lexicon from the Davidson et al. (2017) tweets (run once by a maintainer; the
output, the module `pipelines/monitoring/toxicity_lexicon.py`, is committed: a Python module, so the drift stage's
generated DVC code deps cover it and a new lexicon reruns the stage).

Usage: python pipelines/monitoring/make_toxicity_lexicon.py [DAVIDSON_CSV]
(default: ../shared/data/toxicity/davidson/data/labeled_data.csv; MIT, Copyright (c) 2017 Tom Davidson).

Words are ranked by the log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008) of
appearing in tweets labelled hate/offensive (class 0 or 1) versus "neither" (class 2); a word is kept when its
z-score is high, it occurs in enough tweets, and at least `MIN_PRECISION` of the tweets containing it are toxic.
Deterministic: the same CSV gives the same file.

This is a PLACEHOLDER until issue 15's trained toxicity classifier exists: a word list cannot see context
("kill the process"), misses anything not spelled like a 2013 tweet, and over-counts reclaimed terms.
"""
from __future__ import annotations

import csv
import math
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "toxicity_lexicon.py"
MIN_DOCS = 15  # tweets containing the word
MIN_PRECISION = 0.97  # share of those tweets labelled hate or offensive (base rate 0.83)
MIN_Z = 4.0
MAX_WORDS = 200
PRIOR_SCALE = 0.01
_TOKEN = re.compile(r"[a-z][a-z']+")
_NOISE = re.compile(r"(@\w+|https?://\S+|&\w+;|#)")
# Slang that is offensive in the tweets but ordinary in the instruction/code text this lexicon scores.
STOP = {"fat", "dumb", "aint", "rt", "lol", "lmao", "ya", "yo", "gon", "ain't", "u", "im", "dat", "dis", "da", "wit"}


def tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(_NOISE.sub(" ", text.lower())))


def main(csv_path: Path) -> None:
    toxic, clean = Counter(), Counter()
    n_toxic = n_clean = 0
    with open(csv_path, encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            words = tokens(row["tweet"])
            if row["class"] in ("0", "1"):
                toxic.update(words)
                n_toxic += 1
            else:
                clean.update(words)
                n_clean += 1
    prior = toxic + clean
    a0 = sum(prior.values())
    t_total, c_total = sum(toxic.values()), sum(clean.values())
    scored = []
    for word, a in prior.items():
        docs = toxic[word] + clean[word]
        if docs < MIN_DOCS or word in STOP or toxic[word] / docs < MIN_PRECISION:
            continue
        a_w = a * PRIOR_SCALE  # the pooled counts, scaled down, as the prior
        lt = math.log((toxic[word] + a_w) / (t_total + a0 * PRIOR_SCALE - toxic[word] - a_w))
        lc = math.log((clean[word] + a_w) / (c_total + a0 * PRIOR_SCALE - clean[word] - a_w))
        var = 1 / (toxic[word] + a_w) + 1 / (clean[word] + a_w)
        z = (lt - lc) / math.sqrt(var)
        if z >= MIN_Z:
            scored.append((round(z, 3), word, toxic[word], clean[word]))
    scored.sort(key=lambda r: (-r[0], r[1]))
    kept = scored[:MAX_WORDS]
    lines = [
        '"""Placeholder toxicity lexicon (replaced by issue 15\'s trained classifier). GENERATED: do not edit.',
        "",
        "Derived by pipelines/monitoring/make_toxicity_lexicon.py from Davidson et al. 2017,",
        "t-davidson/hate-speech-and-offensive-language (MIT, Copyright (c) 2017 Tom Davidson):",
        f"{n_toxic} hate/offensive vs {n_clean} neither tweets; min_docs={MIN_DOCS}, min_precision={MIN_PRECISION},",
        f"min_z={MIN_Z}, max_words={MAX_WORDS}. WARNING: offensive words by design. word -> log-odds z-score.",
        '"""',
        "",
        "WORDS: dict[str, float] = {",
    ]
    lines += [f"    {w!r}: {z}," for z, w, _, _ in kept]
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(kept)} words -> {OUT}")


if __name__ == "__main__":
    default = HERE.parents[2] / "shared" / "data" / "toxicity" / "davidson" / "data" / "labeled_data.csv"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
