#!/usr/bin/env python3
"""Unlearning-loss reference: the OpenUnlearning formulas (and the WMDP form of RMU), written in
PyTorch on a random Llama built by `transformers`, with a second random model as the reference.
Writes OUT/model, OUT/ref_model (safetensors folders), OUT/batches.safetensors, and
OUT/losses.json with each method's loss and OUT/grads.safetensors with its gradients.

Usage: llm_loss_ref.py OUT
"""

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

IGNORE = -100
GRAD_PARAMS = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight",
               "model.embed_tokens.weight", "model.norm.weight"]


def batch(gen, b, t, vocab):
    ids = torch.randint(3, vocab, (b, t), generator=gen)
    lengths = torch.randint(t // 2, t + 1, (b,), generator=gen)
    prompt = torch.randint(2, t // 2, (b,), generator=gen)
    mask = torch.zeros(b, t, dtype=torch.long)
    labels = torch.full((b, t), IGNORE)
    for r in range(b):
        mask[r, :lengths[r]] = 1
        labels[r, prompt[r]:lengths[r]] = ids[r, prompt[r]:lengths[r]]
        ids[r, lengths[r]:] = 0
    return ids, mask, labels


def logits(m, x):
    return m(input_ids=x[0], attention_mask=x[1]).logits.float()


def seq_nll(lg, labels):
    lg, lb = lg[:, :-1], labels[:, 1:]
    ce = F.cross_entropy(lg.transpose(1, 2), lb, ignore_index=IGNORE, reduction="none")
    return ce.sum(-1)


def pooled(lg, labels):
    return F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def hidden(m, x, layer):
    out = m(input_ids=x[0], attention_mask=x[1], output_hidden_states=True)
    return out.hidden_states[layer + 1]


def masked_mse(a, b, labels):
    per_tok = ((a - b) ** 2).mean(-1)
    m = (labels != IGNORE).float()
    return ((per_tok * m).sum(-1) / m.sum(-1)).mean()


def losses(model, ref, f, r, idk, u, layer):
    beta, alpha, gamma = 0.1, 1.0, 1.0
    out = {}
    out["ga"] = lambda: -pooled(logits(model, f), f[2])
    out["grad-diff"] = lambda: -pooled(logits(model, f), f[2]) + pooled(logits(model, r), r[2])

    def kl():
        cur = F.log_softmax(logits(model, r), -1).view(-1, model.config.vocab_size)
        with torch.no_grad():
            rl = F.log_softmax(logits(ref, r), -1).view(-1, model.config.vocab_size)
        return -pooled(logits(model, f), f[2]) + F.kl_div(cur, rl, reduction="batchmean", log_target=True)
    out["grad-diff-kl"] = kl

    def npo():
        cur = seq_nll(logits(model, f), f[2])
        with torch.no_grad():
            rn = seq_nll(logits(ref, f), f[2])
        lose = -(cur - rn)
        return gamma * (-2 / beta) * F.logsigmoid(-beta * lose).mean() + alpha * pooled(logits(model, r), r[2])
    out["npo"] = npo

    def simnpo():
        b, g, d = 4.5, 0.125, 0.0
        n = (f[2] != IGNORE).sum(-1)
        x = seq_nll(logits(model, f), f[2]) / n - d
        return g * (-2 / b) * F.logsigmoid(b * x).mean() + alpha * pooled(logits(model, r), r[2])
    out["sim-npo"] = simnpo

    def dpo():
        with torch.no_grad():
            rw, rl = seq_nll(logits(ref, idk), idk[2]), seq_nll(logits(ref, f), f[2])
        win = -(seq_nll(logits(model, idk), idk[2]) - rw)
        lose = -(seq_nll(logits(model, f), f[2]) - rl)
        return (-2 / beta) * F.logsigmoid(beta * (win - lose)).mean() + alpha * pooled(logits(model, r), r[2])
    out["idk-dpo"] = dpo

    def rmu():
        hf = hidden(model, f, layer)
        fl = masked_mse(hf, u.expand_as(hf), f[2])
        with torch.no_grad():
            hr_ref = hidden(ref, r, layer)
        return fl + masked_mse(hidden(model, r, layer), hr_ref, r[2])
    out["rmu"] = rmu

    def rmu_wmdp():
        hf = hidden(model, f, layer)
        fl = F.mse_loss(hf, u.expand_as(hf))
        with torch.no_grad():
            hr_ref = hidden(ref, r, layer)
        return fl + 100.0 * F.mse_loss(hidden(model, r, layer), hr_ref)
    out["rmu-wmdp"] = rmu_wmdp
    return out


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(3)
    model = LlamaForCausalLM(cfg).eval()
    torch.manual_seed(4)
    ref = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(out / "model"), safe_serialization=True)
    ref.save_pretrained(str(out / "ref_model"), safe_serialization=True)
    gen = torch.Generator().manual_seed(5)
    f, r, idk = (batch(gen, 3, 12, 61) for _ in range(3))
    u = torch.rand(1, 1, 32, generator=gen)
    u = u / u.norm() * 2.0
    tensors = {"u": u}
    for name, x in (("forget", f), ("retain", r), ("idk", idk)):
        for k, t in zip(("ids", "mask", "labels"), x):
            tensors[f"{name}.{k}"] = t.contiguous()
    save_file(tensors, str(out / "batches.safetensors"))
    results, grads = {}, {}
    params = dict(model.named_parameters())
    for name, fn in losses(model, ref, f, r, idk, u, layer=0).items():
        model.zero_grad()
        loss = fn()
        loss.backward()
        results[name] = loss.item()
        for p in GRAD_PARAMS:
            g = params[p].grad
            grads[f"{name}/{p}"] = (torch.zeros_like(params[p]) if g is None else g.detach().clone()).contiguous()
    save_file(grads, str(out / "grads.safetensors"))
    (out / "losses.json").write_text(json.dumps({"losses": results, "grad_params": GRAD_PARAMS}))
    print(out / "losses.json")


if __name__ == "__main__":
    main()
