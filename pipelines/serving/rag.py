"""RAG as a served mode: top-k chunks from the versioned index fill a versioned prompt template.

Templates are Jinja files in `pipelines/serving/prompts/` (`serve.rag.template` names one); their combined sha256
(`pipelines.models.registry.prompt_templates_sha256`) is recorded as a tag of each registered model version, and
/health reports both the hash the served version was registered with and the hash of the templates running now.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

from pipelines.models.registry import PROMPTS_DIR

TEMPLATE_DIR = PROMPTS_DIR


def template_env():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment
    from jinja2 import FileSystemLoader

    return SandboxedEnvironment(loader=FileSystemLoader(str(TEMPLATE_DIR)), undefined=StrictUndefined,
                                autoescape=False, keep_trailing_newline=True)


class Rag:
    """Lazy retriever + template; `build(question)` -> (user prompt, contexts)."""

    def __init__(self, index_dir: str | Path, top_k: int, template: str, max_context_tokens: int, embedder=None):
        self.index_dir = Path(index_dir)
        self.top_k = top_k
        self.template_name = template
        path = TEMPLATE_DIR / template
        if not path.exists():
            raise FileNotFoundError(f"serve.rag.template: no prompt template {path}")
        self.template_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.template = template_env().get_template(template)
        self.max_context_tokens = max_context_tokens
        self.embedder = embedder
        self._retriever = None
        self._lock = threading.Lock()

    def available(self) -> bool:
        return (self.index_dir / "index.faiss").exists()

    def retriever(self):
        with self._lock:
            if self._retriever is None:
                from pipelines.embeddings.retrieval import Retriever

                self._retriever = Retriever(self.index_dir, model=self.embedder)
            return self._retriever

    def build(self, question: str, tokenizer) -> tuple[str, list[dict[str, Any]]]:
        hits = self.retriever().search(question, self.top_k)
        contexts, used = [], 0
        for h in hits:
            n = len(tokenizer.encode(h.text, add_special_tokens=False))
            if contexts and used + n > self.max_context_tokens:
                break
            used += n
            contexts.append({"doc_id": h.doc_id, "chunk_id": h.chunk_id, "score": round(float(h.score), 4),
                             "text": h.text})
        return self.template.render(contexts=contexts, question=question), contexts
