"""ARTIST (Zhang et al. 2024, arXiv 2406.12044, PAPERS.md §6): a textual diffusion model that draws glyph images
(white text on black) from words + boxes, a visual diffusion model that receives the frozen textual model's
mid-block and up-block features through zero-initialised convs, and an LLM front end that plans the words and boxes
of a prompt with box tokens decoded under a grammar mask.

    enc = TextEncoderConfig(vocab_size=VOCAB_SIZE, ...)
    glyph_model = ConditionalUNet(UNetConfig(in_channels=1, out_channels=1, ...), enc)   # the textual model
    eps_g = glyph_model.apply({"params": pg}, glyph_t, t, layout_ids)
    artist = Artist(textual=glyph_model, visual=ConditionalUNet(UNetConfig(in_channels=3, ...), enc))
    eps_v, eps_g = artist.apply({"params": p}, x_t, glyph_t, t, prompt_ids, layout_ids)
    # p = {"textual": pg (frozen), "visual": ..., "inject_mid": ..., "inject_up_0": ...}

One token vocabulary serves the three models (`VOCAB`): prompts are characters, and a layout is, per word, its
characters then four coordinate tokens (x0, y0, x1, y1 on a grid of NUM_BINS edges per axis), then EOS. The
textual model's condition is exactly the planner's output, read by a character-level transformer encoder
(`jaxmm.models.text_encoder.TextEncoder` over these ids).

**[reconstruction]** The paper starts both models from Stable Diffusion and conditions the textual model on its
own text prompt; here both are small pixel-space UNets trained from scratch, the textual model's condition is the
layout token string, and during the visual stage the textual model denoises its own glyph trajectory at the same
timestep as the visual one (teacher-forced with the true glyph's noisy version in training; its own DDIM trajectory,
run jointly, at sampling). The zero convs are 1x1 (ControlNet's choice; the paper says "a trainable convolution").
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmm.checks import check_rank, fail
from jaxmm.models.text_encoder import TextEncoder, TextEncoderConfig
from jaxmm.models.unet import UNet, UNetConfig

# ------------------------------------------------------------------------------------------------ vocabulary
CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789"
PAD, EOS, BOS, SEP, SPACE, QUOTE = 0, 1, 2, 3, 4, 5
CHAR0 = 6
NUM_BINS = 17                         # coordinate tokens: grid edges 0..16 along each axis
COORD0 = CHAR0 + len(CHARSET)
VOCAB_SIZE = COORD0 + NUM_BINS


def encode_text(text: str) -> list[int]:
    """A prompt's ids: characters of CHARSET, spaces and double quotes (upper case is lowered; others fail)."""
    out = []
    for ch in text.lower():
        if ch == " ":
            out.append(SPACE)
        elif ch == '"':
            out.append(QUOTE)
        elif ch in CHARSET:
            out.append(CHAR0 + CHARSET.index(ch))
        else:
            fail("text", f"characters of {CHARSET!r}, spaces and double quotes", repr(ch))
    return out


def quantise_box(box, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in pixels -> grid edges (floor for the start, ceil for the end, end > start)."""
    h, w = shape
    sx, sy = (NUM_BINS - 1) / w, (NUM_BINS - 1) / h
    x0, y0, x1, y1 = (float(v) for v in box)
    q0 = int(np.clip(np.floor(x0 * sx), 0, NUM_BINS - 2)), int(np.clip(np.floor(y0 * sy), 0, NUM_BINS - 2))
    q1 = int(np.clip(np.ceil(x1 * sx), q0[0] + 1, NUM_BINS - 1)), int(np.clip(np.ceil(y1 * sy), q0[1] + 1,
                                                                               NUM_BINS - 1))
    return q0[0], q0[1], q1[0], q1[1]


def box_pixels(q, shape: tuple[int, int]) -> np.ndarray:
    """Grid edges (x0, y0, x1, y1) -> pixel box float32 [4]."""
    h, w = shape
    return np.array(q, np.float32) * np.array([w, h, w, h], np.float32) / (NUM_BINS - 1)


def encode_layout(words: Sequence[str], boxes, shape: tuple[int, int]) -> list[int]:
    """Per word its character ids then 4 coordinate tokens; EOS at the end."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) != len(words) or not words:
        fail("words", f"a non-empty list with one word per box ({len(boxes)})", list(words))
    out = []
    for word, box in zip(words, boxes):
        if not word or any(c not in CHARSET for c in word):
            fail("words", f"non-empty words of {CHARSET!r}", repr(word))
        out += [CHAR0 + CHARSET.index(c) for c in word] + [COORD0 + q for q in quantise_box(box, shape)]
    return out + [EOS]


def decode_layout(ids: Sequence[int], shape: tuple[int, int]):
    """(words, boxes float32 [N, 4] pixels) from layout ids (stops at EOS/PAD), or None when they do not parse."""
    words, boxes, chars, coords = [], [], [], []
    for i in ids:
        i = int(i)
        if i in (EOS, PAD):
            break
        if CHAR0 <= i < COORD0 and not coords:
            chars.append(CHARSET[i - CHAR0])
        elif COORD0 <= i < VOCAB_SIZE and chars:
            coords.append(i - COORD0)
            if len(coords) == 4:
                if not (coords[2] > coords[0] and coords[3] > coords[1]):
                    return None
                words.append("".join(chars))
                boxes.append(box_pixels(coords, shape))
                chars, coords = [], []
        else:
            return None
    if chars or coords or not words:
        return None
    return words, np.stack(boxes)


# ------------------------------------------------------------------------------------------------ grammar mask
def layout_grammar_init(batch: int) -> dict:
    """The decoding state of `layout_token_mask` before the first output token (int32 [B] each)."""
    z = jnp.zeros((batch,), jnp.int32)
    return {"phase": z, "chars": z, "x0": z, "y0": z, "words": z, "done": z}


def layout_token_mask(state: dict, remaining, max_chars: int = 12):
    """bool [B, VOCAB_SIZE]: the tokens that keep a layout string valid (`decode_layout` parses it), given the
    grammar state and the number of tokens `remaining` (this one included) that may still be written.

    phase 0: in a word (`chars` letters so far): a letter (while < max_chars and a box + EOS still fit), or, after
    at least one letter, x0 in [0, NUM_BINS - 2]; phase 1: y0 in [0, NUM_BINS - 2]; phase 2: x1 in (x0, NUM_BINS);
    phase 3: y1 in (y0, NUM_BINS); phase 4 (a word is finished): a new word's first letter (if it, a box and EOS
    fit) or EOS. After EOS (done): PAD only. So a greedy argmax of masked logits always parses."""
    v = jnp.arange(VOCAB_SIZE)[None, :]
    is_char = (v >= CHAR0) & (v < COORD0)
    coord = v - COORD0
    is_coord = (v >= COORD0) & (v < VOCAB_SIZE)
    ph, nc = state["phase"][:, None], state["chars"][:, None]
    rem = jnp.asarray(remaining)
    rem = rem[:, None] if rem.ndim else rem
    char_ok = is_char & (nc < max_chars) & (rem >= 6)                      # letter + 4 coords + EOS
    in_word = (ph == 0) & ((char_ok) | (is_coord & (nc >= 1) & (coord <= NUM_BINS - 2) & (rem >= 5)))
    p1 = (ph == 1) & is_coord & (coord <= NUM_BINS - 2)
    p2 = (ph == 2) & is_coord & (coord > state["x0"][:, None])
    p3 = (ph == 3) & is_coord & (coord > state["y0"][:, None])
    p4 = (ph == 4) & ((is_char & (rem >= 6)) | (v == EOS))
    done = state["done"][:, None] == 1
    return jnp.where(done, v == PAD, in_word | p1 | p2 | p3 | p4)


def layout_grammar_step(state: dict, token) -> dict:
    """The grammar state after writing `token` [B] (assumed allowed by `layout_token_mask`)."""
    is_char = (token >= CHAR0) & (token < COORD0)
    coord = token - COORD0
    ph = state["phase"]
    new_phase = jnp.where(is_char, 0, jnp.where(ph == 4, 4, ph + 1))
    new_phase = jnp.where(token == EOS, 4, new_phase)
    return {"phase": new_phase,
            "chars": jnp.where(is_char, jnp.where(ph == 4, 1, state["chars"] + 1), 0),
            "x0": jnp.where((ph == 0) & ~is_char, coord, state["x0"]),
            "y0": jnp.where(ph == 1, coord, state["y0"]),
            "words": state["words"] + (ph == 3).astype(jnp.int32),
            "done": jnp.maximum(state["done"], (token == EOS).astype(jnp.int32))}


def constrained_greedy(logits_fn, prompt_ids, prompt_mask, max_new: int, max_chars: int = 12):
    """Greedy decoding of a layout under `layout_token_mask`.

    logits_fn(ids [B, L], mask [B, L]) -> logits [B, L, VOCAB_SIZE] (a causal LM, full forward: the strings are
    short). prompt_ids / prompt_mask [B, Lp]: LEFT-padded prompts (ending in SEP). Returns ids [B, max_new]
    (PAD after EOS). Every row parses with `decode_layout`."""
    check_rank("prompt_ids", prompt_ids, 2, "[batch, length]")
    b, lp = prompt_ids.shape
    if max_new < 6:
        fail("max_new", "an int >= 6 (one letter, four coordinates and EOS)", max_new)
    ids = jnp.concatenate([prompt_ids, jnp.full((b, max_new), PAD, prompt_ids.dtype)], 1)
    mask = jnp.concatenate([prompt_mask, jnp.zeros((b, max_new), prompt_mask.dtype)], 1)

    def body(i, carry):
        ids, mask, state = carry
        logits = logits_fn(ids, mask)[:, lp + i - 1]
        allowed = layout_token_mask(state, max_new - i, max_chars)
        tok = jnp.argmax(jnp.where(allowed, logits, -jnp.inf), -1).astype(ids.dtype)
        ids = ids.at[:, lp + i].set(tok)
        mask = mask.at[:, lp + i].set(jnp.where(state["done"] == 1, 0, 1).astype(mask.dtype))
        return ids, mask, layout_grammar_step(state, tok)

    ids, _, _ = jax.lax.fori_loop(0, max_new, body, (ids, mask, layout_grammar_init(b)))
    return ids[:, lp:]


def greedy_boxes_for_words(logits_fn, prompt_ids, words: Sequence[str], shape: tuple[int, int]):
    """Decode only the boxes of a layout whose words are given: the layout's letters are forced to `words` (as
    `encode_layout` writes them) and, after each word, its four coordinates are the argmax of `logits_fn` under the
    grammar (x0, y0 in [0, NUM_BINS - 2], x1 > x0, y1 > y0); then EOS. The LLM planner's layout when copying the
    prompt's words is not what is being measured (the words are the prompt's quoted words by construction).

    logits_fn(ids int32 [1, L]) -> logits [1, L, VOCAB_SIZE] (a causal LM; called with a fixed L = len(prompt_ids)
    + the layout's length, PAD-filled on the right, so it compiles once per length). prompt_ids: 1-D, ending in
    SEP. Returns (layout ids list, boxes float32 [N, 4] pixels)."""
    prompt_ids = [int(i) for i in np.asarray(prompt_ids).reshape(-1)]
    if not words or any(not w or any(c not in CHARSET for c in w) for w in words):
        fail("words", f"a non-empty list of non-empty words of {CHARSET!r}", list(words))
    total = len(prompt_ids) + sum(len(w) + 4 for w in words) + 1
    seq = list(prompt_ids)
    coord = np.arange(NUM_BINS)
    q_all = []
    for word in words:
        seq += [CHAR0 + CHARSET.index(c) for c in word]
        q = []
        for j in range(4):
            ids = np.full((1, total), PAD, np.int32)
            ids[0, :len(seq)] = seq
            logits = np.asarray(logits_fn(ids))[0, len(seq) - 1, COORD0:VOCAB_SIZE]
            ok = coord <= NUM_BINS - 2 if j < 2 else coord > q[j - 2]
            q.append(int(np.argmax(np.where(ok, logits, -np.inf))))
            seq.append(COORD0 + q[-1])
        q_all.append(q)
    layout = seq[len(prompt_ids):] + [EOS]
    return layout, np.stack([box_pixels(q, shape) for q in q_all])


# ------------------------------------------------------------------------------------------------ models
class ConditionalUNet(nn.Module):
    """A UNet whose cross-attention context is a character-level transformer encoding of `ids` [B, L] (PAD = 0
    masked as keys in the encoder). Used for the textual model, the prompt-only baseline, the TextDiffuser-style
    baseline (in_channels = 3 + glyph + mask) and ARTIST's visual model. Extra keyword arguments go to the UNet
    (return_features, mid_residual, up_residuals).

    char_dim > 0 (the textual model): `char_map` int32 [B, H, W] (`jaxmm.data.glyphs.char_map`: 0 outside the
    layout's boxes, 1 + the CHARSET index of the letter whose slot holds the pixel) is also an input: its box mask
    (char_map > 0) and a learned char_dim-wide embedding of it are concatenated to x, so `unet.in_channels` must be
    x's channels + 1 + char_dim. **[reconstruction]**, see `glyphs.char_map`."""
    unet: UNetConfig
    encoder: TextEncoderConfig
    char_dim: int = 0

    @nn.compact
    def __call__(self, x, timesteps, ids, char_map=None, **unet_kwargs):
        check_rank("ids", ids, 2, "[batch, length]")
        if self.encoder.d_model != self.unet.cross_attention_dim:
            fail("encoder.d_model", f"the UNet's cross_attention_dim {self.unet.cross_attention_dim}",
                 self.encoder.d_model)
        if self.char_dim:
            if char_map is None or tuple(char_map.shape) != tuple(x.shape[:3]):
                fail("char_map", f"int [batch, H, W] = {tuple(x.shape[:3])} (char_dim={self.char_dim})",
                     None if char_map is None else tuple(char_map.shape))
            emb = nn.Embed(len(CHARSET) + 1, self.char_dim, name="char_embed")(char_map)
            x = jnp.concatenate([x, (char_map > 0)[..., None].astype(x.dtype), emb.astype(x.dtype)], -1)
        elif char_map is not None:
            fail("char_map", "None (this model has char_dim=0)", tuple(char_map.shape))
        context = TextEncoder(self.encoder, name="encoder")(ids, (ids != PAD).astype(jnp.int32))["last_hidden_state"]
        return UNet(self.unet, name="unet")(x, timesteps, context, **unet_kwargs)


class Artist(nn.Module):
    """__call__(x_t [B,H,W,3], glyph_t [B,H,W,1], t [B], prompt_ids [B,Lp], layout_ids [B,Ll], char_map [B,H,W]
    (only for a textual model with char_dim > 0)) -> (eps_visual, eps_glyph). The textual model's features (mid
    block, then every up block) are `stop_gradient`-ed (it is frozen: its params get no gradient), each passes a
    zero-initialised 1x1 conv to the visual UNet's channel count, and is added to the matching visual feature map
    (`UNet(mid_residual=, up_residuals=)`). At init the visual output equals the plain visual UNet's, exactly."""
    textual: ConditionalUNet
    visual: ConditionalUNet

    @nn.compact
    def __call__(self, x_t, glyph_t, timesteps, prompt_ids, layout_ids, char_map=None):
        tcfg, vcfg = self.textual.unet, self.visual.unet
        if len(tcfg.block_out_channels) != len(vcfg.block_out_channels):
            fail("textual.unet.block_out_channels", f"{len(vcfg.block_out_channels)} levels (as the visual UNet)",
                 tcfg.block_out_channels)
        eps_g, feats = self.textual(glyph_t, timesteps, layout_ids, char_map, return_features=True)
        feats = jax.lax.stop_gradient(feats)
        zero = lambda c, name: nn.Conv(c, (1, 1), kernel_init=nn.initializers.zeros, name=name)  # noqa: E731
        mid = zero(vcfg.block_out_channels[-1], "inject_mid")(feats["mid"])
        rev = tuple(reversed(vcfg.block_out_channels))
        # up block i ends with its upsampler, which keeps block i's channel count, except the last block (no upsampler)
        ups = [zero(rev[i], f"inject_up_{i}")(f) for i, f in enumerate(feats["up"])]
        eps_v = self.visual(x_t, timesteps, prompt_ids, mid_residual=mid, up_residuals=ups)
        return eps_v, jax.lax.stop_gradient(eps_g)

