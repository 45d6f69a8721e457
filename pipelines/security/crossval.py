"""Leave-one-family-out evaluation of the input detector (issue 33), and the operating point chosen from it.

For each family (`pipelines.security.sources`: a source, or sibling sources of one origin) a head is fitted on
every other family and scores the held-out one, each text as the max over its chunks (as serving does). The
out-of-family scores of all rows then give, for one recipe:
- per benign source: the false-block rate it would see if it had never been in training;
- per attack source: the recall likewise;
- the shipped threshold: the lowest one whose out-of-family false-block rate is <= `max_fpr` on EVERY benign
  category (persona, system, code, ...), so no kind of benign traffic pays for another's recall.

The final head is then fitted on all families; the held-out figures are those of its recipe at its threshold.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from pipelines.security import features as F
from pipelines.security.detectors import Head, auroc, fit_head


def featurize(rows: list[dict], enc: F.Encoder, chunk_attacks: bool = False) -> dict:
    """Window features (training) and, for scoring, chunk features with their owners: benign rows are scored as
    serving scores them (max over every chunk), so their false-block rates are exact; attack rows, unless
    `chunk_attacks`, on their head+tail window alone (a lower bound of serving's chunk max: recall is not
    overstated, and the long jailbreaks' dozens of chunks are not encoded on a 2-core box)."""
    t0 = time.perf_counter()
    texts = [r["text"] for r in rows]
    X = F.text_features(enc, texts)
    chunked = [i for i, r in enumerate(rows) if chunk_attacks or r["label"] == 0]
    rest = [i for i, r in enumerate(rows) if not (chunk_attacks or r["label"] == 0)]
    Xc, own = F.chunked_text_features(enc, [texts[i] for i in chunked])
    Xc = np.vstack([Xc, X[rest]]) if rest else Xc
    owner = np.concatenate([np.asarray(chunked)[np.asarray(own, dtype=int)], np.asarray(rest, dtype=int)])
    return {"X": X, "Xc": Xc, "owner": owner.astype(int), "seconds": round(time.perf_counter() - t0, 1)}


def score_rows(head: Head, feats: dict, idx: np.ndarray) -> np.ndarray:
    """Chunk-max score of the rows `idx`."""
    sel = np.isin(feats["owner"], idx)
    pos = {int(i): k for k, i in enumerate(idx)}
    out = np.zeros(len(idx))
    own = np.array([pos[int(o)] for o in feats["owner"][sel]])
    np.maximum.at(out, own, head.predict(feats["Xc"][sel]))
    return out


def fit(kind: str, X: np.ndarray, y: np.ndarray, seed: int, weights: np.ndarray | None = None) -> Head:
    """`logreg` | `mlp` (sklearn, detectors.fit_head) | `mlp_torch`: 64 ReLU units, class- and source-balanced
    BCE, Adam with weight decay, fixed epochs (seconds on CPU, deterministic for a seed)."""
    if kind != "mlp_torch":
        return fit_head(kind, X, y, seed)
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a 64-unit head: threads only spin-wait on a busy box
    mean, scale = X.mean(0), X.std(0) + 1e-6
    Z = torch.tensor((X - mean) / scale, dtype=torch.float32)
    t = torch.tensor(y, dtype=torch.float32)
    w = torch.tensor(weights if weights is not None else np.ones(len(y)), dtype=torch.float32)
    w = w / w.mean()
    net = torch.nn.Sequential(torch.nn.Linear(Z.shape[1], 64), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                              torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-3)
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    for _ in range(15):
        perm = torch.randperm(n, generator=g)
        for b in range(0, n, 512):
            i = perm[b:b + 512]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(Z[i])[:, 0], t[i], weight=w[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    W0, b0 = net[0].weight.detach().numpy().T, net[0].bias.detach().numpy()
    W1, b1 = net[3].weight.detach().numpy().T, net[3].bias.detach().numpy()
    return Head(mean.astype(np.float32), scale.astype(np.float32),
                [(W0.astype(np.float32), b0.astype(np.float32)), (W1.astype(np.float32), b1.astype(np.float32))])


def balance_weights(rows: list[dict]) -> np.ndarray:
    """Each source's rows weigh as much together as sqrt(its size) rows (a big source does not drown a small
    one), and the two classes weigh the same in total."""
    n = defaultdict(int)
    for r in rows:
        n[r["source"]] += 1
    w = np.array([np.sqrt(n[r["source"]]) / n[r["source"]] for r in rows])
    y = np.array([r["label"] for r in rows])
    for c in (0, 1):
        w[y == c] *= 0.5 / w[y == c].sum()
    return w * len(rows)


def fit_rows(kind: str, rows: list[dict], feats: dict, idx: np.ndarray, seed: int) -> Head:
    y = np.array([rows[i]["label"] for i in idx])
    sub = [rows[i] for i in idx]
    return fit(kind, feats["X"][idx], y, seed, balance_weights(sub) if kind == "mlp_torch" else None)


def leave_one_family_out(rows: list[dict], feats: dict, kind: str, seed: int = 42,
                         families: list[str] | None = None) -> np.ndarray:
    """Out-of-family score of every row (NaN for rows of families not evaluated)."""
    fam = np.array([r["family"] for r in rows])
    oof = np.full(len(rows), np.nan)
    for f in families or sorted(set(fam)):
        test = np.where(fam == f)[0]
        train = np.where(fam != f)[0]
        head = fit_rows(kind, rows, feats, train, seed)
        oof[test] = score_rows(head, feats, test)
    return oof


def threshold_from_oof(rows: list[dict], oof: np.ndarray, max_fpr: float) -> float:
    """Lowest threshold at which every benign category's out-of-family false-block rate is <= max_fpr."""
    t = 0.0
    cats = defaultdict(list)
    for i, r in enumerate(rows):
        if r["label"] == 0 and not np.isnan(oof[i]):
            cats[r["category"]].append(oof[i])
    for s in cats.values():
        s = np.sort(np.asarray(s))
        k = int(np.floor(max_fpr * len(s)))
        t = max(t, float(s[len(s) - k - 1]) + 1e-6 if k < len(s) else 0.0)
    return min(t, 1.0)


def table(rows: list[dict], scores: np.ndarray, threshold: float) -> dict:
    """Per source and per category: n, flagged rate (FPR for benign, recall for attacks)."""
    out: dict = {"sources": {}, "categories": {}}
    for key, field in (("sources", "source"), ("categories", "category")):
        groups = defaultdict(list)
        for i, r in enumerate(rows):
            groups[(r[field], r["label"])].append(i)
        for (g, label), idx in sorted(groups.items()):
            s = scores[idx]
            out[key][g] = {"label": label, "n": len(idx), "flagged_rate": round(float(np.mean(s >= threshold)), 4),
                           **({"family": rows[idx[0]]["family"], "licence": rows[idx[0]]["licence"],
                               "category": rows[idx[0]]["category"]} if key == "sources" else {})}
    y = np.array([r["label"] for r in rows])
    out["auroc"] = round(auroc(y, scores) or 0, 4)
    return out
