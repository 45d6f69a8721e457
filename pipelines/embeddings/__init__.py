"""Embeddings for RAG: a sentence-transformers encoder run as a Ray Data actor, a FAISS index, and search."""
