#!/usr/bin/env python3
"""Build a decoder-only transformer (transformers' Llama) from a config with random weights,
in bf16, and save it as one safetensors file. Nothing is downloaded.

    make_model.py OUT_DIR [--layers 20] [--hidden 2048] [--intermediate 5632] [--vocab 32000]
Writes OUT_DIR/model.safetensors and OUT_DIR/config.json; prints one JSON line."""
import argparse
import json
import os


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=16)
    a = ap.parse_args()

    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
               num_attention_heads=a.heads, num_key_value_heads=a.heads, vocab_size=a.vocab,
               max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"     # random init is much faster there
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "model.safetensors")
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, path)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f)
    st = os.stat(path)
    print(json.dumps({"path": path, "bytes": st.st_size, "inode": st.st_ino,
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
