"""Build an mlx-lm model folder from a llama.cpp GGUF file, offline.

mlx-lm only loads Hugging Face-style folders (config.json, safetensors, tokenizer files) and no
hub is reachable here, so the tests make one from the GGUF that ships with the bundled model. Only
the Llama architecture is handled, with the tensor types `mlx.core.load` keeps quantised (Q4_0,
Q4_1, Q8_0) or float ones; it is exercised on SmolLM2's Q4_1 file (whose embedding is Q8_0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import mlx.core as mx

import bot  # noqa: F401  (keeps transformers and the hub offline; see bot/__init__.py)

# GGUF module name -> Hugging Face Llama module name (the part before .weight/.scales/.biases).
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                 "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Q4_0, Q4_1 and Q8_0 all quantise blocks of 32 values, which MLX keeps as groups of 32.
_GROUP_SIZE = 32


def convert_gguf_to_mlx(gguf: Path, out_dir: Path) -> Path:
    """Write config.json, model.safetensors and the tokenizer files for `gguf` into `out_dir`."""
    # MLX reads llama.cpp's Q4_1/Q8_0 blocks straight into its own affine format
    # (value = scale * q + bias, per group of 32), so the weights stay quantised as they were.
    # The cast: mx.load is annotated for every format it reads; for a GGUF it returns this pair.
    tensors, meta = cast("tuple[dict[str, mx.array], dict[str, Any]]",
                         mx.load(str(gguf), return_metadata=True))
    if meta["general.architecture"] != "llama":
        raise ValueError(f"{gguf}: only the llama architecture is handled")

    def number(key: str) -> Any:
        value = meta[key]
        return value.item() if isinstance(value, mx.array) else value

    heads = number("llama.attention.head_count")
    kv_heads = number("llama.attention.head_count_kv")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]

    weights: dict[str, mx.array] = {}
    # mlx-lm wants a default; every quantised module is also listed with its own bits below.
    quantization: dict[str, Any] = {"group_size": _GROUP_SIZE, "bits": 4}
    for name, tensor in tensors.items():
        module, _, part = name.rpartition(".")  # part is weight, scales or biases
        hf_module = _hf_name(module)
        if module.endswith(".attn_q"):
            tensor = _unpermute_rows(tensor, heads)
        elif module.endswith(".attn_k"):
            tensor = _unpermute_rows(tensor, kv_heads)
        weights[f"{hf_module}.{part}"] = tensor
        if part == "scales":
            # Each 32-bit word packs 32 / bits values and each group holds 32 values, so a row
            # has exactly `bits` words per group: that is how the 8-bit embedding is told apart.
            bits = tensors[f"{module}.weight"].shape[-1] // tensor.shape[-1]
            quantization[hf_module] = {"group_size": _GROUP_SIZE, "bits": bits}

    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": number("llama.embedding_length"),
        "intermediate_size": number("llama.feed_forward_length"),
        "num_hidden_layers": number("llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": number("llama.rope.dimension_count"),
        "max_position_embeddings": number("llama.context_length"),
        "rms_norm_eps": number("llama.attention.layer_norm_rms_epsilon"),
        "rope_theta": number("llama.rope.freq_base"),
        "vocab_size": len(tokens),
        # Without an output matrix llama.cpp reuses the embedding, as tied weights do in HF.
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": number("tokenizer.ggml.bos_token_id"),
        "eos_token_id": number("tokenizer.ggml.eos_token_id"),
        "quantization": quantization,
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(meta, out_dir)
    return out_dir


def _hf_name(module: str) -> str:
    if module in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[module]
    block, index, rest = module.split(".", 2)
    if block != "blk" or rest not in _BLOCK_NAMES:
        raise ValueError(f"no Hugging Face name known for GGUF tensor {module!r}")
    return f"model.layers.{index}.{_BLOCK_NAMES[rest]}"


def _unpermute_rows(tensor: mx.array, heads: int) -> mx.array:
    """Put each head's q/k rows back in Hugging Face order.

    RoPE rotates pairs of features in each head. Hugging Face's Llama (and mlx-lm's, with its
    default rope_traditional=False) pairs feature i with i + head_dim/2; llama.cpp pairs adjacent
    features 2i and 2i+1, so its converter interleaves the two halves of every head's rows.
    Reading row order (head, pair, half) back as (head, half, pair) undoes that. Only whole rows
    move, so the packed weights, scales and biases are reordered alike and stay quantised.
    """
    rows = tensor.shape[0]
    return (tensor.reshape(heads, rows // heads // 2, 2, *tensor.shape[1:])
            .swapaxes(1, 2).reshape(tensor.shape))


def _write_tokenizer(meta: dict[str, Any], out_dir: Path) -> None:
    # transformers turns a GGUF vocabulary into a fast tokenizer here. Its usual entry point,
    # AutoTokenizer.from_pretrained(..., gguf_file=...), also reads the file through a module
    # that needs torch, so the metadata MLX already read is handed to the converter directly.
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    fields: dict[str, Any] = {}
    for key, field in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        if (value := meta.get(f"tokenizer.{key}")) is not None:
            fields[field] = value.tolist() if isinstance(value, mx.array) else value
    backend, _ = convert_gguf_tokenizer(meta["general.architecture"], fields)

    tokens = fields["tokens"]

    def special(key: str) -> str | None:
        return tokens[fields[key]] if key in fields else None

    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token=special("bos_token_id"),
        eos_token=special("eos_token_id"),
        unk_token=special("unk_token_id"),
        pad_token=special("pad_token_id"),
        # The chat template lives in the GGUF metadata; without it mlx-lm could not build prompts.
        chat_template=meta["tokenizer.chat_template"],
    )
    tokenizer.save_pretrained(str(out_dir))
