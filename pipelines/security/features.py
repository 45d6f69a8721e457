"""Features of the detectors: MiniLM sentence embeddings (pipelines.embeddings.encoder) of the normalized text,
plus cheap lexical features; pairs (request, response) get both embeddings, their product and the response's
refusal/compliance cues.

The text embedded is the normalized view (`pipelines.security.normalize`) cut to a head + tail window of
`window_chars`: a jailbreak's ask often sits at the end of a long wrapper, and MiniLM reads 256 word pieces.
Embeddings go through an in-process LRU (the guard scores the same prompt for several policies) and, in training,
the platform's content-addressed cache (`pipelines.embeddings.cache`).
"""
from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from pipelines.security.normalize import normalize

WINDOW_CHARS = 512

# Lower-cased phrases: (name, regex). One count feature each (log1p).
_INJECTION_CUES = [
    ("ignore_instructions", r"\b(ignore|disregard|forget|override|bypass)\b.{0,40}\b(instruction|prompt|rule|guideline|direction|polic)"),
    ("previous_above", r"\b(previous|prior|above|earlier|preceding|initial|original)\b.{0,20}\b(instruction|prompt|text|message|rule)"),
    ("persona", r"\b(you are now|from now on|pretend|act as|roleplay|role-play|stay in character|you will be|simulate)\b"),
    ("dan", r"\b(dan|jailbreak|jailbroken|developer mode|do anything now|unfiltered|uncensored|no restrictions|stan|dude|aim)\b"),
    ("system_prompt", r"\b(system prompt|initial prompt|your instructions|hidden prompt|pre-prompt|above text|configuration)\b"),
    ("reveal", r"\b(reveal|print|repeat|output|show|display|say|tell me)\b.{0,30}\b(prompt|instruction|password|secret|access code|verbatim)"),
    ("access", r"\b(access granted|password|access code|admin|sudo|root)\b"),
    ("policy", r"\b(openai|content polic|ethical|moral|guidelines|filter|censor)"),
    ("imperative_caps", r"\b[A-Z]{4,}\b"),
]
_REFUSAL_CUES = [
    ("refuse", r"\b(i can'?t|i cannot|i won'?t|i will not|i'?m sorry|i am sorry|i apologi[sz]e|unable to|not able to|i must decline|i refuse|can'?t help|cannot help|cannot assist|can'?t assist|not something i can)\b"),
    ("safety", r"\b(illegal|unethical|harmful|dangerous|unsafe|against .{0,10}polic|professional help|authorities)\b"),
    ("comply", r"\b(sure|of course|certainly|absolutely|here is|here'?s|here are|step \d|step one|first,|follow these)\b"),
    ("steps", r"(^|\n)\s*(\d+[.)]|-|\*)\s+\w"),
    ("code", r"```|\bdef |\bimport |\bfunction\b"),
]
_COMPILED_INJ = [(n, re.compile(p, re.IGNORECASE if n != "imperative_caps" else 0)) for n, p in _INJECTION_CUES]
_COMPILED_REF = [(n, re.compile(p, re.IGNORECASE)) for n, p in _REFUSAL_CUES]
FLAG_NAMES = ("zero_width", "homoglyph", "nfkc", "base64", "rot13", "leetspeak", "tag_smuggling")


def window(text: str, chars: int = WINDOW_CHARS) -> str:
    if len(text) <= chars:
        return text
    head = int(chars * 0.6)
    return text[:head] + " ... " + text[-(chars - head):]


def lexical(text: str, flags: tuple[str, ...] = ()) -> list[float]:
    """Injection cues, refusal/compliance cues, obfuscation flags, length and character mix."""
    n = len(text)
    feats = [math.log1p(len(p.findall(text))) for _, p in _COMPILED_INJ]
    feats += [math.log1p(len(p.findall(text))) for _, p in _COMPILED_REF]
    feats += [float(f in flags) for f in FLAG_NAMES]
    letters = sum(c.isalpha() for c in text) or 1
    feats += [
        math.log1p(n) / 10,
        sum(c.isupper() for c in text) / letters,
        sum(ord(c) > 127 for c in text) / max(n, 1),
        sum(c in "{}[]<>|\\`#=*" for c in text) / max(n, 1),
        text.count("\n") / max(n / 80, 1),
    ]
    return feats


LEXICAL_NAMES = ([n for n, _ in _INJECTION_CUES] + [n for n, _ in _REFUSAL_CUES] + list(FLAG_NAMES)
                 + ["log_len", "upper_ratio", "non_ascii_ratio", "markup_ratio", "newline_density"])


class Encoder:
    """MiniLM with an in-process LRU of vectors (thread-safe), and optionally the on-disk content cache."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, lru_size: int = 4096,
                 cache_dir: str | Path | None = None, max_seq_length: int = 128, quantization: str | None = None,
                 backend: str = "torch", onnx_dir: str | Path | None = None):
        from pipelines.embeddings import encoder

        if quantization not in (None, "int8"):
            raise ValueError(f"encoder quantization must be null or 'int8', not {quantization!r}")
        if backend not in ("torch", "onnx"):
            raise ValueError(f"encoder backend must be 'torch' or 'onnx', not {backend!r}")
        if backend == "onnx" and (quantization or not onnx_dir):
            raise ValueError("the onnx encoder backend runs the fp32 model (quantization null) and needs onnx_dir, "
                             "where the exported model is kept")
        self.backend = backend
        self.model_dir = str(model_dir)
        self.quantization = quantization
        self.model = encoder.load_model(model_dir, threads)
        if quantization == "int8":
            # Dynamic int8 Linear layers: ~2.5x faster per pass on CPU (bench/results/guard.md), but the vectors
            # differ from fp32 (cosine 0.87-0.96), so detectors are trained and served on the same setting.
            import torch

            self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model.max_seq_length = min(self.model.max_seq_length or 128, max_seq_length)
        self._encode = encoder.encode
        if backend == "onnx":
            # the same fp32 vectors (within 2e-7), so detectors trained on torch features serve unchanged
            from pipelines.embeddings.cache import model_fingerprint
            from pipelines.embeddings.onnx_backend import OnnxEncoder

            onnx = OnnxEncoder(self.model, model_dir, onnx_dir, model_fingerprint(model_dir), threads)
            self._encode = lambda _model, texts, batch_size, progress=False: onnx.encode(texts, batch_size)
            self.model = None  # exported: ONNX Runtime holds its own weights, the torch copy (~90 MB) goes
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lru_size = lru_size
        self._lock = threading.Lock()
        self._disk = None
        self._fp = None
        if cache_dir:
            from pipelines.embeddings.cache import EmbeddingCache, content_key, model_fingerprint

            self._fp = model_fingerprint(model_dir)
            if quantization:  # int8 vectors are not fp32 vectors: their own cache entries
                import hashlib

                self._fp = hashlib.sha256(f"{self._fp}|{quantization}".encode()).hexdigest()
            self._disk = EmbeddingCache(cache_dir, self._fp, dim=384)
            self._key = content_key

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out: list[np.ndarray | None] = [None] * len(texts)
        missing: dict[str, list[int]] = {}
        with self._lock:
            for i, t in enumerate(texts):
                v = self._lru.get(t)
                if v is not None:
                    self._lru.move_to_end(t)
                    out[i] = v
                else:
                    missing.setdefault(t, []).append(i)
        if missing and self._disk is not None:
            keys = {t: self._key(self._fp, t) for t in missing}
            found = self._disk.lookup(list(keys.values()))
            for t in list(missing):
                v = found.get(keys[t])
                if v is not None:
                    for i in missing.pop(t):
                        out[i] = v
        if missing:
            todo = list(missing)
            vecs = self._encode(self.model, todo, batch_size, progress=len(todo) >= 2000)  # bulk: training
            if self._disk is not None:
                self._disk.add([self._key(self._fp, t) for t in todo], vecs)
            for t, v in zip(todo, vecs):
                for i in missing[t]:
                    out[i] = v
            with self._lock:
                for t, v in zip(todo, vecs):
                    self._lru[t] = v
                while len(self._lru) > self._lru_size:
                    self._lru.popitem(last=False)
        return np.stack(out) if out else np.zeros((0, 384), dtype=np.float32)


def chunks(text: str, chars: int = WINDOW_CHARS, max_chunks: int = 12) -> list[str]:
    """Windows a long text is scored on (the detector takes the max): the head+tail window, then overlapping
    windows across the whole text (evenly spaced when there would be more than `max_chunks`), so an injection
    buried in the middle of a retrieved document is read too."""
    if len(text) <= chars:
        return [text]
    stride = chars * 3 // 4
    starts = list(range(0, max(len(text) - chars, 0) + 1, stride))
    if starts[-1] + chars < len(text):
        starts.append(len(text) - chars)
    if len(starts) > max_chunks:
        starts = [starts[round(i * (len(starts) - 1) / (max_chunks - 1))] for i in range(max_chunks)]
    return [window(text, chars)] + [text[a:a + chars] for a in starts]


def chunked_text_features(enc: Encoder, texts: list[str], max_chunks: int = 12) -> tuple[np.ndarray, list[int]]:
    """Features of every chunk of every text, and each chunk's text index."""
    norms = [normalize(t, max_chars=20000) for t in texts]
    views, owner, flags = [], [], []
    for i, n in enumerate(norms):
        # the text as read (with decoded payloads appended), then each decoded payload alone: a base64 or rot13
        # wrapper's cover text must not dilute what it hides
        for c in chunks(n.text, max_chunks=max_chunks) + [window(d) for d in n.decoded if d.strip()]:
            views.append(c)
            owner.append(i)
            flags.append(n.flags)
    emb = enc.encode(views)
    lex = np.array([lexical(v, f) for v, f in zip(views, flags)], dtype=np.float32)
    return np.hstack([emb, lex]).astype(np.float32), owner


def text_features(enc: Encoder, texts: list[str]) -> np.ndarray:
    norms = [normalize(t, max_chars=20000) for t in texts]
    views = [window(n.text) for n in norms]
    emb = enc.encode(views)
    lex = np.array([lexical(v, n.flags) for v, n in zip(views, norms)], dtype=np.float32)
    return np.hstack([emb, lex]).astype(np.float32)


def pair_features(enc: Encoder, requests: list[str], responses: list[str]) -> np.ndarray:
    reqs = [window(normalize(t, max_chars=20000).text) for t in requests]
    resps = [window(normalize(t, max_chars=20000).text) for t in responses]
    er, es = enc.encode(reqs), enc.encode(resps)
    cos = np.sum(er * es, axis=1, keepdims=True)
    lex = np.array([lexical(t) for t in resps], dtype=np.float32)
    return np.hstack([er, es, er * es, cos, lex]).astype(np.float32)
