"""A Llama-family decoder written for graphs: static shapes, no host syncs, Hugging Face names.

Parameter names match transformers' ``LlamaForCausalLM`` (``model.layers.0.self_attn.q_proj.weight``
...), so a Hugging Face state dict loads as is, and the numerics follow it step for step:
RMSNorm in float32 cast back, SwiGLU MLP, grouped-query attention, rotate-half RoPE whose
inverse frequencies are computed with the same expressions (``default``, ``linear``, ``llama3``).

The pieces are exposed so an engine can compose a paged-attention step without re-implementing
any math: ``embed``, ``rope_cos_sin``, then per layer ``qkv`` -> (its own attention over a KV
cache) -> ``finish``, then ``logits``. The dense ``forward`` methods compose the same pieces with
plain causal attention and are the reference the tests hold against transformers.

Graph rules kept here: the RoPE tables are precomputed for ``max_position_embeddings`` and
indexed on the device (a position past the table is an indexing error, not a silent
recompute); nothing calls ``.item()`` or otherwise reads a device value on the host inside a
step. ``greedy_generate_reference`` is the one exception, and it is for tests.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from warmgraph.errors import ConfigError
from warmgraph.models.config import LlamaConfig
from warmgraph.models.linear import Linear

# -- RoPE -----------------------------------------------------------------------------------


def rope_inv_freq(config: LlamaConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """The float32 inverse frequencies ``(head_dim // 2,)``, computed with the same expressions
    (and so the same float32 roundings) as transformers' RoPE init functions."""
    dim = config.head_dim
    assert dim is not None
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(dtype=torch.float) / dim
    inv_freq = 1.0 / (config.rope_theta ** exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    # llama3: leave short wavelengths alone, divide long ones by `factor`, and blend in between.
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context / low
    high_freq_wavelen = old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class LlamaRotaryEmbedding(nn.Module):
    """cos/sin tables ``(max_position_embeddings, head_dim)`` as non-persistent buffers.

    ``forward(positions (...)) -> (cos, sin)`` each ``(..., head_dim)``: a device-side gather,
    no recompute and no host sync. Tables are computed in float32 and stored in the weights'
    dtype (``from_state_dict``) or float32; either way the values are transformers' float32
    angles cast to the activations' dtype, which ``apply_rope`` also enforces.
    """

    cos_cached: torch.Tensor
    sin_cached: torch.Tensor

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        if torch.get_default_device().type == "meta":
            # Built for from_state_dict, which computes the tables on the real device next;
            # meta math would run through torch's Python reference ops (a torch._dynamo import).
            shape = (config.max_position_embeddings, config.head_dim)
            self.register_buffer("cos_cached", torch.empty(shape), persistent=False)
            self.register_buffer("sin_cached", torch.empty(shape), persistent=False)
        else:
            self.reset_tables()

    def reset_tables(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        """(Re)compute the tables on ``device``; used after building a model on the meta device."""
        inv_freq = rope_inv_freq(self.config, device)
        positions = torch.arange(self.config.max_position_embeddings, dtype=torch.int64, device=device).float()
        # An elementwise product (not a matmul) so every angle is the one float32 rounding HF gets.
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos().to(dtype), persistent=False)
        self.register_buffer("sin_cached", emb.sin().to(dtype), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_cached[positions], self.sin_cached[positions]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dim (the Hugging Face Llama convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q (..., T, heads, D)`` and ``k (..., T, kv_heads, D)`` by ``cos/sin (..., T, D)``."""
    cos = cos.unsqueeze(-2).to(q.dtype)
    sin = sin.unsqueeze(-2).to(q.dtype)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


# -- modules --------------------------------------------------------------------------------


class LlamaRMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back before the weight multiply, as transformers does."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(in_dtype)


class LlamaMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaAttention(nn.Module):
    """The attention projections and head geometry; the attention itself is composed by the
    caller (``causal_attention`` for the dense reference, a paged kernel in an engine)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        assert config.head_dim is not None and config.num_key_value_heads is not None
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        self.q_proj = Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense causal grouped-query attention: ``q (B, S, heads, D)``, ``k/v (B, S, kv_heads, D)``
    -> ``(B, S, heads, D)``. ``attention_mask (B, S)`` marks the keys that may be attended (1 or
    True; padding 0), on top of the causal mask. Query head ``h`` reads kv head
    ``h // (heads // kv_heads)``, the grouping transformers uses.

    A masked score is the dtype's most negative finite value, not -inf, so a row with no allowed
    key (left padding) softmaxes to finite values instead of NaN. Softmax runs in float32.
    """
    heads, kv_heads, seq = q.shape[-2], k.shape[-2], q.shape[-3]
    group = heads // kv_heads
    q = q.transpose(-2, -3)
    k = k.transpose(-2, -3).repeat_interleave(group, dim=-3)
    v = v.transpose(-2, -3).repeat_interleave(group, dim=-3)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    allowed = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    if attention_mask is not None:
        allowed = allowed & attention_mask.to(torch.bool)[:, None, None, :]
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return (probs @ v).transpose(-2, -3)


class LlamaDecoderLayer(nn.Module):
    """One pre-norm block, split at the attention so an engine can put its own attention between
    ``qkv`` and ``finish``; ``forward`` is the dense reference composed of the same two halves."""

    def __init__(self, config: LlamaConfig, rotary: LlamaRotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)
        # Shared with the model, not registered as a child: every layer would otherwise list and
        # move its own copy of the tables.
        object.__setattr__(self, "_rotary", rotary)

    def qkv(self, hidden: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input norm, projections and RoPE.

        ``hidden (..., T, H)`` is the residual stream entering the layer; ``cos/sin (..., T, D)``
        come from ``rope_cos_sin``. Returns ``q (..., T, heads, D)`` and ``k, v (..., T, kv_heads, D)``
        with RoPE applied to q and k: what a KV cache stores.
        """
        attn = self.self_attn
        x = self.input_layernorm(hidden)
        q = attn.q_proj(x).unflatten(-1, (attn.num_heads, attn.head_dim))
        k = attn.k_proj(x).unflatten(-1, (attn.num_kv_heads, attn.head_dim))
        v = attn.v_proj(x).unflatten(-1, (attn.num_kv_heads, attn.head_dim))
        q, k = apply_rope(q, k, cos, sin)
        return q, k, v

    def finish(self, hidden_residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """``o_proj`` + residual, then post-norm MLP + residual.

        ``hidden_residual (..., T, H)`` is the ``hidden`` given to ``qkv``; ``attn_out
        (..., T, heads, D)`` is softmax(q k^T / sqrt(D)) v per head. Returns the layer output.
        """
        hidden = hidden_residual + self.self_attn.o_proj(attn_out.flatten(-2))
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Dense reference: ``hidden (B, S, H)``, ``positions (B, S)`` int64, ``attention_mask
        (B, S)`` (1 = real token) or None -> ``(B, S, H)``, full causal attention."""
        cos, sin = self._rotary(positions)
        return self._dense(hidden, cos, sin, attention_mask)

    def _dense(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               attention_mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.qkv(hidden, cos, sin)
        return self.finish(hidden, causal_attention(q, k, v, attention_mask))


class LlamaModel(nn.Module):
    """``embed_tokens``, ``layers``, ``norm`` and the shared ``rotary_emb`` tables."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, self.rotary_emb) for _ in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The whole decoder with the LM head; ``state_dict()`` keys are transformers' keys.

    With ``tie_word_embeddings`` the head shares the embedding's parameter (``state_dict`` then
    lists it under both names, as torch does for shared parameters; checkpoints store it once).
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    @classmethod
    def from_state_dict(cls, config: LlamaConfig, state: Mapping[str, torch.Tensor]) -> LlamaForCausalLM:
        """Build around ``state`` (transformers names; ``lm_head.weight`` optional when tied)
        without a random init: the module is built on the meta device and the tensors are
        assigned, so they keep their device and dtype (all must share both). Raises RuntimeError
        from ``load_state_dict`` on missing or mis-shaped tensors; the loader checks first."""
        with torch.device("meta"), _skip_random_init():
            model = cls(config)
        full = dict(state)
        if config.tie_word_embeddings:
            full.setdefault("lm_head.weight", full["model.embed_tokens.weight"])
        model.load_state_dict(full, strict=True, assign=True)
        model.tie_weights()
        weight = model.model.embed_tokens.weight
        model.model.rotary_emb.reset_tables(weight.device, weight.dtype)
        return model

    def tie_weights(self) -> None:
        """Point ``lm_head.weight`` at the embedding when the config ties them; no-op otherwise."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator, std: float = 0.02) -> None:
        """Refill every parameter from ``generator``: projections and embeddings ~ N(0, std), norm
        weights ~ 1 + N(0, std). Deterministic for a seeded generator (parameters in name order)."""
        state = random_state_dict(self.config, generator, std)
        for name, param in self.named_parameters():
            param.copy_(state[name])

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids (...)`` int64 -> ``(..., H)``."""
        return self.model.embed_tokens(input_ids)

    def rope_cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions (...)`` int64 in ``[0, max_position_embeddings)`` -> ``cos, sin (..., head_dim)``."""
        return self.model.rotary_emb(positions)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: ``(..., H) -> (..., vocab)`` in the model dtype."""
        return self.lm_head(self.model.norm(hidden))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Dense full recompute (the reference): ``input_ids (B, S)``, ``positions (B, S)`` (default
        ``0..S-1`` per row), ``attention_mask (B, S)`` (1 = real token) -> logits ``(B, S, V)``."""
        if positions is None:
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
        hidden = self.embed(input_ids)
        cos, sin = self.rope_cos_sin(positions)
        for layer in self.model.layers:
            hidden = layer._dense(hidden, cos, sin, attention_mask)
        return self.logits(hidden)


@contextlib.contextmanager
def _skip_random_init() -> Iterator[None]:
    """Skip the random fills of nn.Linear/nn.Embedding constructors while building on meta.

    The weights are assigned right after, so the fills are wasted, and on meta tensors torch
    runs them through Python reference ops whose first use imports torch._dynamo: 1.5-3 s of
    every warm start here. Constructors look ``nn.init.<fn>`` up at call time, so swapping the
    functions for no-ops during construction is enough (module construction is single-threaded).
    """
    names = ("normal_", "uniform_", "kaiming_uniform_")
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint must hold for ``config``, by transformers name, with its shape
    (``lm_head.weight`` left out when the embeddings are tied). Computed from the config; a
    test holds it equal to the module's own ``state_dict`` shapes."""
    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        shapes.update({
            f"{layer}self_attn.q_proj.weight": (q, h), f"{layer}self_attn.k_proj.weight": (kv, h),
            f"{layer}self_attn.v_proj.weight": (kv, h), f"{layer}self_attn.o_proj.weight": (h, q),
            f"{layer}mlp.gate_proj.weight": (inter, h), f"{layer}mlp.up_proj.weight": (inter, h),
            f"{layer}mlp.down_proj.weight": (h, inter), f"{layer}input_layernorm.weight": (h,),
            f"{layer}post_attention_layernorm.weight": (h,)})
    shapes["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, h)
    return shapes


def random_state_dict(config: LlamaConfig, generator: torch.Generator, std: float = 0.02) -> dict[str, torch.Tensor]:
    """Float32 CPU weights from ``generator`` (see ``LlamaForCausalLM.init_weights``), drawn in
    sorted name order so the same seed gives the same bytes on every run."""
    state = {}
    for name, shape in sorted(expected_shapes(config).items()):
        noise = torch.randn(shape, generator=generator, dtype=torch.float32) * std
        state[name] = noise + 1.0 if name.endswith("norm.weight") else noise
    return state


@torch.no_grad()
def greedy_generate_reference(model: LlamaForCausalLM, ids: list[int], max_new_tokens: int,
                              eos: int | Iterable[int] | None = None) -> list[int]:
    """Greedy decoding by full recompute, one token at a time (slow; for tests).

    Returns only the new tokens, ending with the first token in ``eos`` if one is produced
    (the convention of transformers' ``generate``). Ties go to the lowest token id.
    """
    stop = {eos} if isinstance(eos, int) else set(eos or ())
    device = model.model.embed_tokens.weight.device
    limit = model.config.max_position_embeddings
    seq, out = list(ids), []
    for _ in range(max_new_tokens):
        if len(seq) > limit:
            raise ConfigError(f"sequence of {len(seq)} tokens exceeds max_position_embeddings={limit}")
        logits = model(torch.tensor([seq], dtype=torch.int64, device=device))
        token = int(logits[0, -1].argmax())
        seq.append(token)
        out.append(token)
        if token in stop:
            break
    return out
