"""Global masked attention (GMA), the decoder layer of Mask2Anomaly (Rai et al., ICCV 2023).

A Mask2Former decoder layer attends from each query to the image features inside its predicted
mask only (σ(m) ≥ 0.5, "masked attention"). GMA adds a second cross-attention with its own
weights that attends to the *outside* of the mask (σ(m) ≤ 0.5); the two outputs are summed, then
residual + LayerNorm (post-norm), then self-attention and FFN as in Mask2Former. Each branch's
mask is lifted for a query that would block every position (the query then attends everywhere),
as Mask2Former does for its single branch.

The layer extends transformers' ``Mask2FormerMaskedAttentionDecoderLayer``: ``cross_attn`` is
the foreground branch (detectron2's ``multihead_attn_foreground``), ``cross_attn_background`` the
background branch. This module imports ``transformers`` and is loaded only when a model is built.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.mask2former.configuration_mask2former import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoderLayer,
)


class GlobalMaskedAttentionLayer(Mask2FormerMaskedAttentionDecoderLayer):
    """Mask2Former decoder layer with a foreground and a background cross-attention, summed.

    ``forward`` takes the same arguments as the transformers layer plus
    ``background_attention_mask``; with ``background_attention_mask=None`` the background branch
    is skipped and the layer computes standard masked attention.
    """

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)  # post-norm (config.pre_norm False), as in Mask2Anomaly
        self.cross_attn_background = nn.MultiheadAttention(
            self.embed_dim, config.num_attention_heads, config.dropout
        )
        for param in self.cross_attn_background.parameters():  # as detectron2 / transformers
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        nn.init.zeros_(self.cross_attn_background.in_proj_bias)

    def cross_attention(
        self,
        hidden_states: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        query_pos: torch.Tensor,
        foreground_mask: torch.Tensor | None,
        background_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """LayerNorm(h + attn_fg(h) + attn_bg(h)); sequences are L×N×D (nn.MultiheadAttention)."""
        query = hidden_states + query_pos
        key = memory + memory_pos
        update = self.cross_attn(query, key, memory, attn_mask=foreground_mask)[0]
        if background_mask is not None:
            update = update + self.cross_attn_background(
                query, key, memory, attn_mask=background_mask
            )[0]
        update = nn.functional.dropout(update, p=self.dropout, training=self.training)
        return self.cross_attn_layer_norm(hidden_states + update)

    def self_attention_and_ffn(self, hidden_states: torch.Tensor, query_pos: torch.Tensor):
        """The post-norm self-attention and FFN blocks that follow the cross-attention."""
        update = self.self_attn(hidden_states=hidden_states, position_embeddings=query_pos)[0]
        update = nn.functional.dropout(update, p=self.dropout, training=self.training)
        hidden_states = self.self_attn_layer_norm(hidden_states + update)
        update = self.activation_fn(self.fc1(hidden_states))
        update = nn.functional.dropout(update, p=self.activation_dropout, training=self.training)
        update = nn.functional.dropout(self.fc2(update), p=self.dropout, training=self.training)
        return self.final_layer_norm(hidden_states + update)

    def forward(
        self,
        hidden_states: torch.Tensor,
        level_index: int,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: list[torch.Tensor] | None = None,
        query_position_embeddings: torch.Tensor | None = None,
        encoder_hidden_states: list[torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        background_attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor]:
        hidden_states = self.cross_attention(
            hidden_states,
            encoder_hidden_states[level_index],
            position_embeddings[level_index],
            query_position_embeddings,
            encoder_attention_mask,
            background_attention_mask,
        )
        return (self.self_attention_and_ffn(hidden_states, query_position_embeddings),)
