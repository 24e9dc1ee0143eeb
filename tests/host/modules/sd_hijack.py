"""Mirrors modules/sd_hijack.py (`model_hijack`) and modules/textual_inversion's embedding database: an
embedding is found at a token position by the token ids of its name."""

from __future__ import annotations

import ldm.modules.diffusionmodules.openaimodel
import torch
from modules import sd_hijack_unet

# As the host does when modules/sd_hijack.py is imported: sizes in steps of 8 pixels.
ldm.modules.diffusionmodules.openaimodel.th = sd_hijack_unet.th


class Embedding:
    def __init__(self, vec: torch.Tensor, name: str):
        self.vec = vec
        self.name = name
        self.vectors = vec.shape[0]
        self.shape = vec.shape[-1]


class EmbeddingDatabase:
    def __init__(self):
        self.word_embeddings: dict[str, Embedding] = {}
        self.ids_lookup: dict[int, list] = {}

    def register_embedding(self, embedding: Embedding, model) -> None:
        self.word_embeddings[embedding.name] = embedding
        ids = model.cond_stage_model.tokenize([embedding.name])[0]
        bucket = self.ids_lookup.setdefault(ids[0], [])
        bucket.append((ids, embedding))
        bucket.sort(key=lambda x: len(x[0]), reverse=True)

    def find_embedding_at_position(self, tokens, offset):
        token = tokens[offset]
        for ids, embedding in self.ids_lookup.get(token, []):
            if tokens[offset : offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, None


class StableDiffusionModelHijack:
    def __init__(self):
        self.fixes = None
        self.comments: list[str] = []
        self.extra_generation_params: dict = {}
        self.embedding_db = EmbeddingDatabase()

    def clear_comments(self):
        self.comments = []
        self.extra_generation_params = {}


model_hijack = StableDiffusionModelHijack()
