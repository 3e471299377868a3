"""The workbench's two-tower model and training step written independently in PyTorch, for
`workbench bench torch` (see viz/src/bench/torch.rs).

The model follows OpenCLIP's layout: a ViT image tower (stride-p convolution without bias as the
patch embedding, class token, learned positions, ln_pre, pre-LN residual blocks built on
`nn.MultiheadAttention`, ln_post, class or mean pooling, a bias-free projection) and a causal text
Transformer (token and position embeddings, the same blocks under a causal mask, ln_final,
pooling at the EOS position, a bias-free projection). The MLP uses GELU with the tanh
approximation, as the workbench does. The loss is symmetric InfoNCE with a learnable log-scale
clamped to [0, ln 100] after every step; the optimiser is `torch.optim.AdamW` with weight decay on
tensors of two or more dimensions only, global gradient-norm clipping and the warmup + cosine
learning-rate schedule of the workbench.

Device and precision come from the run (`train.device`, `train.precision`): the model and the
batches live on `torch.device(train.device)`; with "bf16" both towers run under
`torch.autocast(device_type, dtype=torch.bfloat16)` (parameters, gradients and AdamW state stay
f32), and the L2 normalisation and the loss run in f32 on the towers' outputs, as the workbench
does. On CUDA the device is synchronised before the clock is read.

Usage: python torch_clip.py SPEC.json

SPEC.json (written by the runner) holds every dimension and hyper-parameter of the Rust run, the
number of threads, and raw little-endian files of pre-built batches (f32 images, i64 token ids and
EOS positions) so that both implementations see the same tensors. The script prints one JSON line
when ready (parameter counts, torch version, threads), then answers one JSON command per line on
standard input with one JSON line on standard output:

    {"op": "train", "steps": N}   ->  {"seconds": S, "loss": L, "peak_bytes": P, "reserved_bytes": R}
                                      N training steps, cycling batches; P: peak memory over them
                                      (CUDA: torch.cuda.max_memory_allocated after
                                      reset_peak_memory_stats; CPU: this process's peak resident
                                      set after a reset through /proc/self/clear_refs, null where
                                      refused); R: torch.cuda.max_memory_reserved (CUDA only)
    {"op": "embed", "chunks": N}  ->  {"seconds": S}              N forward-only passes of both towers
    {"op": "quit"}                    exits

Any failure is reported as {"error": "..."} and a non-zero exit status.
"""

import json
import math
import sys
import time


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fail(msg):
    reply({"error": msg})
    sys.exit(1)


try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:  # the runner turns this into a message naming the interpreter
    fail(f"torch is not importable: {e}")


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width, heads, mlp_ratio, layers):
        super().__init__()
        hidden = width * mlp_ratio
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(hidden, width)
        # OpenCLIP's init: attention in / out and MLP fc / proj stds.
        attn_std = width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        nn.init.normal_(self.attn.in_proj_weight, std=attn_std)
        nn.init.zeros_(self.attn.in_proj_bias)
        nn.init.normal_(self.attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(self.attn.out_proj.bias)
        nn.init.normal_(self.c_fc.weight, std=(2 * width) ** -0.5)
        nn.init.zeros_(self.c_fc.bias)
        nn.init.normal_(self.c_proj.weight, std=proj_std)
        nn.init.zeros_(self.c_proj.bias)

    def forward(self, x, attn_mask=None):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.c_proj(self.gelu(self.c_fc(self.ln_2(x))))


def blocks(width, heads, mlp_ratio, layers):
    return nn.ModuleList(
        ResidualAttentionBlock(width, heads, mlp_ratio, layers) for _ in range(layers)
    )


class Head(nn.Module):
    """Projection into the shared space: a bias-free linear map, or linear -> GELU -> linear."""

    def __init__(self, kind, width, embed):
        super().__init__()
        std = width**-0.5
        if kind == "linear":
            self.layers = nn.ModuleList([nn.Linear(width, embed, bias=False)])
        elif kind == "mlp":
            self.layers = nn.ModuleList([nn.Linear(width, width), nn.Linear(width, embed)])
        else:
            fail(f"model.projection: unknown kind {kind!r}; expected 'linear' or 'mlp'")
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        if len(self.layers) == 1:
            return self.layers[0](x)
        return self.layers[1](F.gelu(self.layers[0](x), approximate="tanh"))


class VisionTower(nn.Module):
    def __init__(self, cfg, image_size, embed, projection):
        super().__init__()
        w, p = cfg["width"], cfg["patch_size"]
        n = (image_size // p) ** 2
        scale = w**-0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        nn.init.normal_(self.conv1.weight, std=(3 * p * p) ** -0.5)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(n + 1, w))
        self.ln_pre = nn.LayerNorm(w, eps=1e-5)
        self.transformer = blocks(w, cfg["heads"], cfg["mlp_ratio"], cfg["layers"])
        self.ln_post = nn.LayerNorm(w, eps=1e-5)
        self.proj = Head(projection, w, embed)
        self.pool = cfg["pool"]

    def forward(self, images):
        x = self.conv1(images)  # (B, w, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, N, w)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer:
            x = block(x)
        x = self.ln_post(x)
        pooled = x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)
        return self.proj(pooled)


class TextTower(nn.Module):
    def __init__(self, cfg, vocab, context, embed, projection):
        super().__init__()
        w = cfg["width"]
        self.token_embedding = nn.Embedding(vocab, w)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context, w))
        self.transformer = blocks(w, cfg["heads"], cfg["mlp_ratio"], cfg["layers"])
        self.ln_final = nn.LayerNorm(w, eps=1e-5)
        self.text_projection = Head(projection, w, embed)
        self.masks = {}

    def causal_mask(self, t, device):
        if t not in self.masks:
            self.masks[t] = torch.full((t, t), float("-inf"), device=device).triu(1)
        return self.masks[t]

    def forward(self, tokens, eos):
        t = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:t]
        mask = self.causal_mask(t, tokens.device)
        for block in self.transformer:
            x = block(x, attn_mask=mask)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos]
        return self.text_projection(pooled)


class Clip(nn.Module):
    def __init__(self, spec):
        super().__init__()
        m = spec["model"]
        e, proj = m["embed_dim"], m["projection"]
        self.visual = VisionTower(m["vision"], spec["image_size"], e, proj)
        self.text = TextTower(m["text"], spec["vocab_size"], spec["context_length"], e, proj)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.max_log_scale = math.log(100.0)

    def encode(self, images, tokens, eos, autocast):
        """Both towers under `autocast`, then the L2 normalisation in f32 outside it."""
        with autocast():
            image, text = self.visual(images), self.text(tokens, eos)
        return (
            F.normalize(image.float(), dim=-1),
            F.normalize(text.float(), dim=-1),
        )

    def loss(self, images, tokens, eos, autocast):
        image, text = self.encode(images, tokens, eos, autocast)
        logits = self.logit_scale.exp() * image @ text.t()
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def lr_at(step, base, warmup, total, min_ratio):
    """Linear warmup to `base`, then cosine decay to `base * min_ratio` at `total`."""
    min_lr = base * min_ratio
    if step < warmup:
        return base * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(total - warmup, 1)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (base - min_lr)


def load_batch(b, device):
    def read(key, dtype, shape):
        n = math.prod(shape)
        t = torch.from_file(b[key], shared=False, size=n, dtype=dtype).reshape(shape)
        return t.to(device)

    images = read("images", torch.float32, b["images_shape"])
    tokens = read("tokens", torch.int64, b["tokens_shape"])
    eos = read("eos", torch.int64, [b["tokens_shape"][0]])
    return images, tokens, eos


def reset_peak_rss():
    """Resets this process's peak resident set (Linux); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    """This process's peak resident set (VmHWM), bytes, or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Bench:
    def __init__(self, spec):
        torch.set_num_threads(spec["threads"])
        torch.manual_seed(spec["seed"])
        if spec["loss"] != "clip":
            fail(f"loss: only 'clip' is implemented here, the run uses {spec['loss']!r}")
        t = spec["train"]
        self.device = torch.device(t.get("device", "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            fail(f"train.device: {t['device']!r}, but this torch has no CUDA device")
        self.cuda = self.device.type == "cuda"
        precision = t.get("precision", "f32")
        if precision not in ("f32", "bf16"):
            fail(f"train.precision: {precision!r}; expected 'f32' or 'bf16'")
        self.bf16 = precision == "bf16"
        self.spec = spec
        self.model = Clip(spec).to(self.device)
        params = list(self.model.parameters())
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.params = params
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": t["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=t["lr"],
            betas=(t["beta1"], t["beta2"]),
            eps=t["eps"],
        )
        self.train_cfg = t
        self.step = 0
        self.batches = [load_batch(b, self.device) for b in spec["batches"]]
        self.embed_chunk = load_batch(spec["embed"], self.device)
        self.counts = {
            "params": sum(p.numel() for p in params),
            "decayed": sum(p.numel() for p in decay),
        }

    def autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16
        )

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def train(self, steps):
        t = self.train_cfg
        self.model.train()
        loss = float("nan")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            rss_reset = False
        else:
            rss_reset = reset_peak_rss()
        self.sync()
        start = time.perf_counter()
        for _ in range(steps):
            images, tokens, eos = self.batches[self.step % len(self.batches)]
            lr = lr_at(self.step, t["lr"], t["warmup_steps"], t["steps"], t["min_lr_ratio"])
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            out = self.model.loss(images, tokens, eos, self.autocast)
            loss = out.item()
            out.backward()
            if t["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(self.params, t["grad_clip"])
            self.opt.step()
            with torch.no_grad():
                self.model.logit_scale.clamp_(0.0, self.model.max_log_scale)
            self.step += 1
        self.sync()
        seconds = time.perf_counter() - start
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
        else:
            peak, reserved = (peak_rss() if rss_reset else None), None
        return {"seconds": seconds, "loss": loss, "peak_bytes": peak, "reserved_bytes": reserved}

    def embed(self, chunks):
        images, tokens, eos = self.embed_chunk
        self.model.eval()
        self.sync()
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(chunks):
                image, text = self.model.encode(images, tokens, eos, self.autocast)
                # Materialise both, as the Rust side does.
                float(image[0, 0]) + float(text[0, 0])
        self.sync()
        return {"seconds": time.perf_counter() - start}


def main():
    if len(sys.argv) != 2:
        fail("usage: torch_clip.py SPEC.json")
    try:
        with open(sys.argv[1], encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read the spec {sys.argv[1]}: {e}")
    try:
        bench = Bench(spec)
    except (KeyError, RuntimeError, OSError) as e:
        fail(f"cannot set up the model from {sys.argv[1]}: {type(e).__name__}: {e}")
    reply(
        {
            "ready": True,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            **bench.counts,
        }
    )
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
        except ValueError as e:
            fail(f"bad command {line!r}: {e}")
        op = cmd.get("op")
        if op == "train":
            reply(bench.train(int(cmd["steps"])))
        elif op == "embed":
            reply(bench.embed(int(cmd["chunks"])))
        elif op == "quit":
            return
        else:
            fail(f"unknown op {op!r}")


if __name__ == "__main__":
    main()
