"""Ranking-model families, each built as user_encoder + scorer + fused sharing one set of layers.

The fused model is flat (no nested models) so tfmot can prune it layer by layer and the
converters see one graph. The user encoder's outputs are named ``user_*``; the scorer takes
them as inputs of the same names, so ``scorer(user_encoder(x)) == fused(x)`` by construction.

The user encoder computes everything that does not depend on the candidate: besides the state
(and mask), the attention families carry the key half of the target attention's first layer
(``user_keys``) and the masked mean of the state (``user_pooled``). The scorer takes the user
outputs with a batch of 1 against N candidates (or N rows each): it broadcasts them in the graph
(`layers.BroadcastRows`, arithmetic broadcasting inside `layers.TargetAttention`), so serving
feeds one user's state once instead of repeated N times.

In the fused model history and candidate ids go through ONE item lookup (``AppendCandidate``
-> ``item_embedding`` [-> frozen ``item_content`` + projection] -> ``SplitLast``). Two lookups
of one table become two Gathers in TFLite; full-integer int8 then stores the table twice with
different scales (one of them set by a downstream Concatenate), which almost doubled the file
and cost accuracy. The split parts each need their own table anyway and keep two lookups.

Families:
    din: item embeddings -> DIN target attention against the candidate -> MLP.
    gru: item embeddings -> GRU (`ProjectedGRU`: Keras-GRU weights, unrolled into TFLite builtins
         with the input projection done once, small in int8) final state -> MLP with the
         candidate. The sequence is left-padded, so the state ends on the latest item.
    lstm: as gru with an LSTM (`ProjectedLSTM`: Keras-LSTM weights, the same unrolled layout; one
         ONNX ``LSTM`` node through its twin) whose final hidden state feeds the MLP.
    bst: item embeddings + positions -> transformer encoder block(s) -> target attention -> MLP.
    context: DIN over [item embedding, projected content vector] + an embedding per
         ``spec.context`` field + ``dense`` features -> MLP. The candidate's content vector is
         its frozen table row, or for an OOV candidate (a cold-start item) the fed
         ``cand_content`` [B, Dc] (`edgerec.runtime.contract.CAND_CONTENT`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgerec.runtime.contract import CAND_CONTENT, FAMILIES, USER_KEYS, USER_MASK, USER_POOLED, USER_STATE
from edgerec.runtime.errors import SpecError, expected
from edgerec.runtime.spec import CAND_ITEM, DENSE, HIST_ITEMS, OOV_INDEX, FeatureSpec

from .config import ModelConfig, ModelParts

# Families whose user state is a recurrent layer's last state over the raw item embeddings (no
# mask: left padding puts the latest item last), scored against the candidate without attention.
RECURRENT_FAMILIES = ("gru", "lstm")


@dataclass
class ContentParts:
    """A pre-trained content encoder and its per-item vector table ``[item_vocab.size, dim]``."""

    encoder: Any
    table: np.ndarray


class _FamilyBuilder:
    """Creates the shared layers once; `user` and `score` apply them to any input tensors."""

    def __init__(self, family: str, spec: FeatureSpec, config: ModelConfig, content: ContentParts | None):
        from . import layers as L
        from . import recurrent as R

        self.L, self.keras = L, L.tf_keras
        self.family, self.spec, self.config = family, spec, config
        layers = self.keras.layers
        regularizer = self.keras.regularizers.L2(config.l2) if config.l2 else None
        self.item_embedding = layers.Embedding(spec.item_vocab.size, config.embedding_dim,
                                               embeddings_regularizer=regularizer, name="item_embedding")
        self.content = content
        if content is not None:
            table = np.asarray(content.table, dtype=np.float32)
            if table.ndim != 2 or table.shape[0] != spec.item_vocab.size:
                raise SpecError(expected(f"a content table of shape [{spec.item_vocab.size}, dim]", table.shape))
            if np.any(table[OOV_INDEX] != 0):
                raise SpecError(expected("a content table whose OOV row is zeros (cand_content replaces it)",
                                         "a non-zero OOV row"))
            self.content_lookup = layers.Embedding(table.shape[0], table.shape[1], trainable=False,
                                                   name="item_content")
            self.content_projection = layers.Dense(config.embedding_dim, name="content_projection")
            # Cold start with builtin layers only: a frozen 0/1 lookup marks OOV candidates, whose
            # (zero) table row is then topped up with the fed cand_content; known rows add zero.
            self.content_width = int(table.shape[1])
            self.cand_is_oov = layers.Embedding(table.shape[0], 1, trainable=False, name="cand_is_oov")
            self.cand_content_gate = layers.Multiply(name="cand_content_gate")
            self.cand_content_merge = layers.Add(name="cand_content_merge")
            self.cand_content_row = layers.Reshape((1, self.content_width), name="cand_content_row")
            self.cand_content_pad = layers.ZeroPadding1D((spec.max_seq_len, 0), name="cand_content_pad")
            self.joint_content_merge = layers.Add(name="joint_content_merge")
            self._cand_content_of = {}      # id(cand_item input) -> (that input, its cand_content input)
        self.uses_context = family == "context"
        self.context_embeddings = {
            f.name: layers.Embedding(f.size, config.context_dim, name=f"context_{f.name}")
            for f in (spec.context if self.uses_context else ())}
        self.uses_dense = self.uses_context and bool(spec.dense)
        self.recurrent = family in RECURRENT_FAMILIES
        if self.recurrent:
            cell, units = ((R.ProjectedGRU, config.gru_units) if family == "gru"
                           else (R.ProjectedLSTM, config.lstm_units))
            self.sequence_encoder = cell(units, name=USER_STATE)
            self.cand_projection = layers.Dense(units, name="cand_projection")
            self.broadcast_state = L.BroadcastRows(name="broadcast_" + USER_STATE)
        else:
            self.mask = L.SequenceMask(name=USER_MASK)
            self.state = layers.Activation("linear", name=USER_STATE)
            self.attention = L.TargetAttention(config.attention_units, name="target_attention")
            self.mean_pool = L.MaskedMeanPooling(name="mean_pool")
            self.keys = layers.Activation("linear", name=USER_KEYS)
            self.pooled = layers.Activation("linear", name=USER_POOLED)
            self.broadcast_pooled = L.BroadcastRows(name="broadcast_" + USER_POOLED)
        if family == "bst":
            self.positions = L.PositionalEmbedding(spec.max_seq_len, name="positions")
            self.blocks = [L.TransformerEncoder(config.num_heads, config.ff_dim, config.dropout,
                                                name=f"transformer_{i}") for i in range(config.num_blocks)]
        self.mlp = []
        for i, units in enumerate(config.hidden_units):
            self.mlp.append(layers.Dense(units, activation="relu", name=f"mlp_{i}"))
            if config.dropout:
                self.mlp.append(layers.Dropout(config.dropout, name=f"mlp_dropout_{i}"))
        self.out = layers.Dense(1, activation="sigmoid", name="score")
        self.append_candidate = L.AppendCandidate(name="append_candidate")
        self.split_candidate = L.SplitLast(name="split_candidate")

    # -- inputs ----------------------------------------------------------------------------
    def candidate_inputs(self) -> dict:
        Input = self.keras.Input
        inputs = {CAND_ITEM: Input(shape=(), dtype="int32", name=CAND_ITEM)}
        if self.content is not None:
            inputs[CAND_CONTENT] = Input(shape=(self.content_width,), dtype="float32", name=CAND_CONTENT)
            self._cand_content_of[id(inputs[CAND_ITEM])] = (inputs[CAND_ITEM], inputs[CAND_CONTENT])
        for name in self.context_embeddings:
            inputs[name] = Input(shape=(), dtype="int32", name=name)
        if self.uses_dense:
            inputs[DENSE] = Input(shape=(len(self.spec.dense),), dtype="float32", name=DENSE)
        return inputs

    def history_input(self):
        return self.keras.Input(shape=(self.spec.max_seq_len,), dtype="int32", name=HIST_ITEMS)

    def fed_content(self, cand):
        """``cand_content`` where ``cand`` (a candidate-id input) is the OOV index, zeros elsewhere."""
        _, fed = self._cand_content_of[id(cand)]
        return self.cand_content_gate([self.cand_is_oov(cand), fed])

    def item_repr(self, ids, content=None):
        """Item embedding, concatenated with the projected frozen content vector when used.

        For a candidate-id input (from `candidate_inputs`) the content vector of an OOV row is the
        row's ``cand_content``; ``content`` is the content vector when already looked up.
        """
        emb = self.item_embedding(ids)
        if self.content is None:
            return emb
        if content is None:
            content = self.content_lookup(ids)
            if id(ids) in self._cand_content_of:
                content = self.cand_content_merge([content, self.fed_content(ids)])
        return self.keras.layers.Concatenate(axis=-1)([emb, self.content_projection(content)])

    def shared_item_repr(self, hist, cand):
        """``(history [B, L, E], candidate [B, E])`` representations from one lookup of both ids.

        The candidate's fed content enters the joint content lookup at the last position (a
        zero-padded row), so the content projection also runs once over both.
        """
        ids = self.append_candidate([hist, cand])
        if self.recurrent:
            return self.split_candidate(self.item_embedding(ids))
        content = None
        if self.content is not None:
            fed = self.cand_content_pad(self.cand_content_row(self.fed_content(cand)))
            content = self.joint_content_merge([self.content_lookup(ids), fed])
        return self.split_candidate(self.item_repr(ids, content))

    # -- the two halves ----------------------------------------------------------------------
    def user(self, hist, sequence=None) -> dict:
        """User-encoder outputs; ``sequence`` is the history's item representation when precomputed."""
        if self.recurrent:
            return {USER_STATE: self.sequence_encoder(self.item_embedding(hist) if sequence is None else sequence)}
        mask = self.mask(hist)
        sequence = self.item_repr(hist) if sequence is None else sequence
        if self.family == "bst":
            sequence = self.positions(sequence)
            for block in self.blocks:
                sequence = block([sequence, mask])
        state = self.state(sequence)
        return {USER_STATE: state, USER_MASK: mask,
                USER_KEYS: self.keys(self.attention(state, keys_only=True)),
                USER_POOLED: self.pooled(self.mean_pool([state, mask]))}

    def score(self, user: dict, candidate: dict, cand=None, broadcast: bool = True):
        """Score tensor; ``cand`` is the candidate's item representation when precomputed;
        ``broadcast``: the user outputs may have a batch of 1 (the scorer; the fused model's
        batches always agree)."""
        concat = self.keras.layers.Concatenate(axis=-1)
        multiply = self.keras.layers.Multiply()
        if self.recurrent:
            cand = self.item_embedding(candidate[CAND_ITEM]) if cand is None else cand
            state = self.broadcast_state([user[USER_STATE], cand]) if broadcast else user[USER_STATE]
            features = [state, cand, multiply([state, self.cand_projection(cand)])]
        else:
            cand = self.item_repr(candidate[CAND_ITEM]) if cand is None else cand
            attended = self.attention([cand, user[USER_STATE], user[USER_MASK], user[USER_KEYS]])
            pooled = self.broadcast_pooled([user[USER_POOLED], cand]) if broadcast else user[USER_POOLED]
            features = [cand, attended, multiply([cand, attended]), pooled]
        features += [layer(candidate[name]) for name, layer in self.context_embeddings.items()]
        if self.uses_dense:
            features.append(candidate[DENSE])
        x = concat(features)
        for layer in self.mlp:
            x = layer(x)
        return self.out(x)

    def user_output_inputs(self, user: dict) -> dict:
        return {name: self.keras.Input(shape=tuple(t.shape[1:]), dtype="float32", name=name)
                for name, t in user.items()}


def build_model(family: str, spec: FeatureSpec, config: ModelConfig | None = None,
                content: ContentParts | None = None) -> ModelParts:
    """Build the ``user_encoder``, ``scorer`` and ``fused`` models of one family.

    Args:
        family: one of `edgerec.runtime.contract.FAMILIES`.
        spec: feature spec (item vocabulary, sequence length, context and dense fields).
        config: hyper-parameters (defaults: `ModelConfig()`).
        content: pre-trained content encoder + item table, required when
            ``config.uses_content(family)`` (see `edgerec.sdk.models.content`).

    Examples:
        >>> parts = build_model("din", spec)
        >>> sorted(parts.parts())
        ['fused', 'scorer', 'user_encoder']
    """
    if family not in FAMILIES:
        raise SpecError(expected(f"a model family among {list(FAMILIES)}", family))
    if not isinstance(spec, FeatureSpec):
        raise SpecError(expected("a FeatureSpec", type(spec).__name__))
    config = ModelConfig() if config is None else config
    if not isinstance(config, ModelConfig):
        raise SpecError(expected("a ModelConfig", type(config).__name__))
    needs_content = config.uses_content(family)
    if needs_content and content is None:
        raise SpecError(expected(f"a pre-trained content encoder for family '{family}' "
                                 "(train_content_encoder) or use_content=False", None))
    builder = _FamilyBuilder(family, spec, config, content if needs_content else None)
    keras = builder.keras

    hist = builder.history_input()
    user = builder.user(hist)
    user_encoder = keras.Model(hist, user, name="user_encoder")

    user_inputs = builder.user_output_inputs(user)
    cand_inputs = builder.candidate_inputs()
    scorer = keras.Model({**user_inputs, **cand_inputs}, builder.score(user_inputs, cand_inputs),
                         name="scorer")

    fused_hist = builder.history_input()
    fused_cand = builder.candidate_inputs()
    hist_repr, cand_repr = builder.shared_item_repr(fused_hist, fused_cand[CAND_ITEM])
    fused = keras.Model({HIST_ITEMS: fused_hist, **fused_cand},
                        builder.score(builder.user(fused_hist, hist_repr), fused_cand, cand_repr, broadcast=False),
                        name="fused")
    if builder.content is not None:
        builder.content_lookup.set_weights([np.asarray(content.table, dtype=np.float32)])
        is_oov = np.zeros((spec.item_vocab.size, 1), np.float32)
        is_oov[OOV_INDEX] = 1.0
        builder.cand_is_oov.set_weights([is_oov])
    return ModelParts(family, spec, config, fused, user_encoder, scorer,
                      content_encoder=content.encoder if needs_content else None,
                      content_table=np.asarray(content.table, np.float32) if needs_content else None)
