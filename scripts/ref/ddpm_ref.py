#!/usr/bin/env python3
"""DDPM reference in PyTorch: the class-conditional U-Net of SalUn's DDPM code (the DDPM U-Net
as the `ddim` code writes it, with the class embedding, learned null vector and class MLP
concatenated with the time embedding in every residual block), its summed epsilon loss, the
`ddim` code's generalized (DDIM, eta) and DDPM sampling steps with classifier-free guidance,
and numpy/scipy FD and KID.

Usage:
  ddpm_ref.py unet DIR     reads DIR/config.json, DIR/weights.safetensors, DIR/inputs.safetensors;
                           writes DIR/ref.safetensors
  ddpm_ref.py metrics DIR  reads DIR/features.safetensors; writes DIR/metrics.json
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def swish(x):
    return x * torch.sigmoid(x)


def norm(c, groups):
    return nn.GroupNorm(groups, c, eps=1e-6, affine=True)


def timestep_embedding(t, dim):
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    a = t.float()[:, None] * freq[None, :]
    e = torch.cat([torch.sin(a), torch.cos(a)], dim=1)
    if dim % 2 == 1:
        e = F.pad(e, (0, 1, 0, 0))
    return e


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, groups, dropout):
        super().__init__()
        self.norm1 = norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.temb_cemb_proj = nn.Linear(emb, cout)
        self.norm2 = norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1, 1, 0)
        self.cin, self.cout = cin, cout

    def forward(self, x, emb):
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_cemb_proj(swish(emb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.cin != self.cout:
            x = self.nin_shortcut(x)
        return x + h


class Attn(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm = norm(c, groups)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)
        k = k.reshape(b, c, hh * ww)
        w = torch.bmm(q, k) * (int(c) ** (-0.5))
        w = F.softmax(w, dim=2)
        v = v.reshape(b, c, hh * ww)
        h = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CondUNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        ch, mult, nrb, g = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"], cfg["groups"]
        self.ch, self.nrb = ch, nrb
        emb = ch * 4
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, emb), nn.Linear(emb, emb)])
        self.cemb = nn.Module()
        self.cemb.dense = nn.ModuleList([nn.Linear(ch, emb), nn.Linear(emb, emb)])
        self.classes_emb = nn.Embedding(cfg["num_classes"], ch)
        self.null_classes_emb = nn.Parameter(torch.randn(ch))
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch, 3, 1, 1)
        res = cfg["resolution"]
        in_mult = (1,) + tuple(mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i, m in enumerate(mult):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            block_out = ch * m
            for _ in range(nrb):
                blocks.append(ResBlock(block_in, block_out, 2 * emb, g, cfg["dropout"]))
                block_in = block_out
                if res in cfg["attn_resolutions"]:
                    attns.append(Attn(block_in, g))
            d = nn.Module()
            d.block, d.attn = blocks, attns
            if i != len(mult) - 1:
                d.downsample = Down(block_in)
                res //= 2
            self.down.append(d)
        self.mid = nn.Module()
        self.mid.block_1 = ResBlock(block_in, block_in, 2 * emb, g, cfg["dropout"])
        self.mid.attn_1 = Attn(block_in, g)
        self.mid.block_2 = ResBlock(block_in, block_in, 2 * emb, g, cfg["dropout"])
        self.up = nn.ModuleList()
        for i in reversed(range(len(mult))):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            block_out = ch * mult[i]
            skip_in = ch * mult[i]
            for b in range(nrb + 1):
                if b == nrb:
                    skip_in = ch * in_mult[i]
                blocks.append(ResBlock(block_in + skip_in, block_out, 2 * emb, g, cfg["dropout"]))
                block_in = block_out
                if res in cfg["attn_resolutions"]:
                    attns.append(Attn(block_in, g))
            u = nn.Module()
            u.block, u.attn = blocks, attns
            if i != 0:
                u.upsample = Up(block_in)
                res *= 2
            self.up.insert(0, u)
        self.norm_out = norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg["in_channels"], 3, 1, 1)
        self.levels = len(mult)

    def forward(self, x, t, c, keep):
        temb = self.temb.dense[1](swish(self.temb.dense[0](timestep_embedding(t, self.ch))))
        cv = self.classes_emb(c)
        cv = torch.where(keep[:, None], cv, self.null_classes_emb[None, :])
        cemb = self.cemb.dense[1](swish(self.cemb.dense[0](cv)))
        emb = torch.cat([temb, cemb], dim=-1)
        hs = [self.conv_in(x)]
        for i in range(self.levels):
            for b in range(self.nrb):
                h = self.down[i].block[b](hs[-1], emb)
                if len(self.down[i].attn) > 0:
                    h = self.down[i].attn[b](h)
                hs.append(h)
            if i != self.levels - 1:
                hs.append(self.down[i].downsample(hs[-1]))
        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, emb)), emb)
        for i in reversed(range(self.levels)):
            for b in range(self.nrb + 1):
                h = self.up[i].block[b](torch.cat([h, hs.pop()], dim=1), emb)
                if len(self.up[i].attn) > 0:
                    h = self.up[i].attn[b](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))

    def guided(self, x, t, c, w):
        n = x.shape[0]
        on = torch.ones(n, dtype=torch.bool)
        return (1 + w) * self.forward(x, t, c, on) - w * self.forward(x, t, c, ~on)


def compute_alpha(b, t):
    b = torch.cat([torch.zeros(1), b], dim=0)
    return (1 - b).cumprod(dim=0).index_select(0, t + 1).view(-1, 1, 1, 1)


def generalized_steps(x, seq, eps, b, eta, noises):
    seq_next = [-1] + list(seq[:-1])
    for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
        n = x.shape[0]
        t = torch.ones(n) * i
        at = compute_alpha(b, t.long())
        an = compute_alpha(b, (torch.ones(n) * j).long())
        et = eps(x, t)
        x0 = (x - et * (1 - at).sqrt()) / at.sqrt()
        c1 = eta * ((1 - at / an) * (1 - an) / (1 - at)).sqrt()
        c2 = ((1 - an) - c1 ** 2).sqrt()
        x = an.sqrt() * x0 + c1 * noises[k] + c2 * et
    return x


def ddpm_steps(x, seq, eps, b, noises):
    seq_next = [-1] + list(seq[:-1])
    for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
        n = x.shape[0]
        t = torch.ones(n) * i
        at = compute_alpha(b, t.long())
        am = compute_alpha(b, (torch.ones(n) * j).long())
        beta_t = 1 - at / am
        e = eps(x, t.float())
        x0 = torch.clamp((1.0 / at).sqrt() * x - (1.0 / at - 1).sqrt() * e, -1, 1)
        mean = ((am.sqrt() * beta_t) * x0 + ((1 - beta_t).sqrt() * (1 - am)) * x) / (1.0 - at)
        mask = (1 - (t == 0).float()).view(-1, 1, 1, 1)
        x = mean + mask * torch.exp(0.5 * beta_t.log()) * noises[k]
    return x


def unet(d):
    cfg = json.loads((d / "config.json").read_text())
    inp = load_file(str(d / "inputs.safetensors"))
    model = CondUNet(cfg["unet"])
    model.load_state_dict(load_file(str(d / "weights.safetensors")), strict=True)
    model.eval()
    b = torch.from_numpy(np.linspace(1e-4, 0.02, 1000, dtype=np.float64)).float()
    out = {}
    with torch.no_grad():
        x0, t, c, keep, e = inp["x0"], inp["t"], inp["labels"], inp["keep"].bool(), inp["e"]
        a = (1 - b).cumprod(dim=0).index_select(0, t).view(-1, 1, 1, 1)
        xt = x0 * a.sqrt() + e * (1.0 - a).sqrt()
        pred = model(xt, t.float(), c, keep)
        out["eps"] = pred
        out["loss"] = (e - pred).square().sum(dim=(1, 2, 3)).mean(dim=0).reshape(1)
        w = cfg["guidance"]
        out["guided"] = model.guided(xt, t.float(), c, w)
        steps = cfg["steps"]
        seq = list(range(0, 1000, 1000 // steps))
        eps = lambda x, tt: model.guided(x, tt, c, w)
        nd = [inp[f"ddim_noise_{k}"] for k in range(steps)]
        out["ddim"] = generalized_steps(inp["x_T"], seq, eps, b, cfg["eta"], nd)
        np_ = [inp[f"ddpm_noise_{k}"] for k in range(steps)]
        out["ddpm"] = ddpm_steps(inp["x_T"], seq, eps, b, np_)
    save_file({k: v.contiguous() for k, v in out.items()}, str(d / "ref.safetensors"))


def metrics(d):
    from scipy import linalg

    f = load_file(str(d / "features.safetensors"))
    f1, f2 = f["a"].double().numpy(), f["b"].double().numpy()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    covmean = covmean.real
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    dim = f1.shape[1]
    k = lambda x, y: (x @ y.T / dim + 1) ** 3
    m, n = f1.shape[0], f2.shape[0]
    kxx, kyy, kxy = k(f1, f1), k(f2, f2), k(f1, f2)
    kid = float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                - 2 * kxy.mean())
    (d / "metrics.json").write_text(json.dumps({"fd": fd, "kid": kid}))


if __name__ == "__main__":
    mode, d = sys.argv[1], Path(sys.argv[2])
    {"unet": unet, "metrics": metrics}[mode](d)
