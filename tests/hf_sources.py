"""Tiny AR source checkpoints for conversion tests: random transformers Llama / Mistral /
Ministral-3 models, and a GGUF file of a Llama laid out as llama.cpp writes it."""

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Ministral3Config,
    Ministral3ForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
# Ministral-3: YaRN + llama-4 query scaling with a short original context, so both act within the test.
MINISTRAL_ROPE = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16,
                  "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                  "llama_4_scaling_beta": 0.1}


def hf_model(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(vocab_size=vocab, **SHAPE))
    elif kind == "ministral3":
        model = Ministral3ForCausalLM(Ministral3Config(vocab_size=vocab, rope_parameters=dict(MINISTRAL_ROPE),
                                                       **SHAPE))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, **SHAPE))
    with torch.no_grad():  # spread the logits so greedy argmax never hinges on a near-tie
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()



_LETTERS = [chr(ord("a") + i) for i in range(26)]
# 97 byte-level BPE tokens with one merge; "<|endoftext|>" is the unknown token transformers' GGUF
# tokenizer expects, so the tokenizer holds exactly the model's 97 ids.
GGUF_TOKENS = ["<|endoftext|>", "<s>", "</s>", "ab"] + _LETTERS + [x + y for x in "cde" for y in _LETTERS][:67]


def _permute_for_gguf(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's storage order of q/k rows (pairs of rotary halves interleaved), which
    transformers' GGUF loader undoes on read."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def write_llama_gguf(hf, path, tokens: list[str]) -> None:
    """A float32 GGUF file of a tiny Llama, laid out as llama.cpp's converter writes it (tied head)."""
    gguf = pytest.importorskip("gguf")
    c = hf.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {"self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        q = _permute_for_gguf(hf.model.layers[i].self_attn.q_proj.weight.detach(), c.num_attention_heads)
        k = _permute_for_gguf(hf.model.layers[i].self_attn.k_proj.weight.detach(), c.num_key_value_heads)
        w.add_tensor(f"blk.{i}.attn_q.weight", q.numpy())
        w.add_tensor(f"blk.{i}.attn_k.weight", k.numpy())
        for hf_name, gguf_name in names.items():
            w.add_tensor(f"blk.{i}.{gguf_name}.weight", sd[p + hf_name + ".weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
