"""Karpathy's llama2.c checkpoints (legacy "version 0" format) and tokenizers → HF directory.

Converting to an ordinary HF directory (config.json, model.safetensors, tokenizer.json) means
the real pretrained weights go through exactly the same import code as any Llama checkpoint.
llama2.c rotates interleaved pairs (x[2i], x[2i+1]) while HF and jaxembed rotate halves
(x[i], x[i + d/2]), so the q/k output rows are permuted per head on the way.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from jaxembed.errors import UserInputError
from jaxembed.io_utils import atomic_directory

HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
BOS_ID, EOS_ID = 1, 2
DUMMY_PREFIX = " "


def read_checkpoint(path: str | Path) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Header and weight arrays (PyTorch Linear layout, stacked over layers)."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 28:
        raise UserInputError(f"{path}: too short for a llama2.c header")
    header = dict(zip(HEADER_FIELDS, struct.unpack("<7i", data[:28]), strict=True))
    dim, hidden, layers = header["dim"], header["hidden_dim"], header["n_layers"]
    heads, kv_heads, vocab = header["n_heads"], header["n_kv_heads"], abs(header["vocab_size"])
    kv_dim = dim * kv_heads // heads
    shapes = [
        ("tok_embeddings", (vocab, dim)),
        ("rms_att", (layers, dim)),
        ("wq", (layers, dim, dim)),
        ("wk", (layers, kv_dim, dim)),
        ("wv", (layers, kv_dim, dim)),
        ("wo", (layers, dim, dim)),
        ("rms_ffn", (layers, dim)),
        ("w1", (layers, hidden, dim)),
        ("w2", (layers, dim, hidden)),
        ("w3", (layers, hidden, dim)),
        ("rms_final", (dim,)),
    ]
    floats = np.frombuffer(data, dtype="<f4", offset=28)
    weights, offset = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        if offset + size > floats.size:
            raise UserInputError(f"{path}: truncated while reading {name} {shape}")
        weights[name] = floats[offset : offset + size].reshape(shape)
        offset += size
    # Then freq_cis_real/imag (seq_len * head_dim/2 each), and an untied classifier if any.
    offset += header["seq_len"] * (dim // heads)
    if header["vocab_size"] < 0:
        weights["wcls"] = floats[offset : offset + vocab * dim].reshape(vocab, dim)
    return header, weights


def interleaved_to_half_rotation(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's output rows from pair-interleaved to half-split RoPE layout."""
    out_dim, in_dim = w.shape
    head_dim = out_dim // n_heads
    return (
        w.reshape(n_heads, head_dim // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)
    )


def read_tokenizer(path: str | Path, vocab_size: int) -> tuple[list[bytes], list[float]]:
    """Pieces (raw bytes) and merge scores from a llama2.c tokenizer .bin."""
    path = Path(path)
    data = path.read_bytes()
    pieces, scores, offset = [], [], 4
    try:
        for _ in range(vocab_size):
            score, length = struct.unpack_from("<fi", data, offset)
            offset += 8
            pieces.append(data[offset : offset + length])
            scores.append(score)
            offset += length
    except struct.error as e:
        raise UserInputError(f"{path}: truncated tokenizer after {len(pieces)} tokens") from e
    return pieces, scores


def build_tokenizer(pieces: list[bytes], scores: list[float]):
    """An HF fast tokenizer that encodes like llama2.c's run.c: BOS, then the text with a
    dummy-prefix ' ' merged by greedy best-score pair merging with byte fallback (BPE whose
    merge ranks follow the merged pieces' scores)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    texts = [p.decode("utf-8", errors="replace") for p in pieces]
    vocab = {t: i for i, t in enumerate(texts)}
    merges = []
    for i in sorted(range(len(texts)), key=lambda i: -scores[i]):
        token = texts[i]
        if i < 3 or token.startswith("<0x") or len(token) < 2:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=texts[0], byte_fallback=True))
    # run.c merges across its dummy-prefix token, so the prefix is text, not a fixed id.
    tok.normalizer = normalizers.Prepend(DUMMY_PREFIX)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{texts[BOS_ID]} $A", special_tokens=[(texts[BOS_ID], BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=texts[BOS_ID],
        eos_token=texts[EOS_ID],
        unk_token=texts[0],
        pad_token=texts[0],
    )


def decode_like_run_c(ids: list[int], pieces: list[bytes]) -> bytes:
    """run.c's decode: a piece after BOS loses its leading space; <0xXX> pieces are raw bytes."""
    out = bytearray()
    prev = BOS_ID
    for token in ids:
        piece = pieces[token]
        if prev == BOS_ID and piece.startswith(b" "):
            piece = piece[1:]
        if len(piece) == 6 and piece.startswith(b"<0x") and piece.endswith(b">"):
            piece = bytes([int(piece[3:5], 16)])
        out += piece
        prev = token
    return bytes(out)


def convert(checkpoint: str | Path, tokenizer: str | Path, output: str | Path) -> Path:
    """Write an HF Llama directory (causal LM, tied head) for a llama2.c checkpoint."""
    from safetensors.numpy import save_file

    header, w = read_checkpoint(checkpoint)
    heads, kv_heads = header["n_heads"], header["n_kv_heads"]
    tensors = {
        "model.embed_tokens.weight": w["tok_embeddings"],
        "model.norm.weight": w["rms_final"],
    }
    for i in range(header["n_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = w["rms_att"][i]
        tensors[p + "post_attention_layernorm.weight"] = w["rms_ffn"][i]
        tensors[p + "self_attn.q_proj.weight"] = interleaved_to_half_rotation(w["wq"][i], heads)
        tensors[p + "self_attn.k_proj.weight"] = interleaved_to_half_rotation(w["wk"][i], kv_heads)
        tensors[p + "self_attn.v_proj.weight"] = w["wv"][i]
        tensors[p + "self_attn.o_proj.weight"] = w["wo"][i]
        tensors[p + "mlp.gate_proj.weight"] = w["w1"][i]
        tensors[p + "mlp.down_proj.weight"] = w["w2"][i]
        tensors[p + "mlp.up_proj.weight"] = w["w3"][i]
    tied = "wcls" not in w
    if not tied:
        tensors["lm_head.weight"] = w["wcls"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": abs(header["vocab_size"]),
        "hidden_size": header["dim"],
        "intermediate_size": header["hidden_dim"],
        "num_hidden_layers": header["n_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": header["seq_len"],
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "torch_dtype": "float32",
    }
    pieces, scores = read_tokenizer(tokenizer, abs(header["vocab_size"]))
    output = Path(output)
    with atomic_directory(output) as tmp:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / "model.safetensors")
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        build_tokenizer(pieces, scores).save_pretrained(str(tmp))
    return output
