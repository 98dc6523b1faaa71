"""PyTorch reference for `npm run gpt` (examples/shakespeare-gpt.ts): the same character model, data, split and
schedule, timed the same way, so the two wall times compare.

    RAYON_NUM_THREADS=2 .venv/bin/python benches/torch_gpt.py            # the full run: 2,000 iterations
    .venv/bin/python benches/torch_gpt.py --iters 200 --eval-every 100   # a shorter one

The model: embedding 128 plus learned positions (context 64), 4 pre-norm causal Transformer blocks (4 heads,
feed-forward 512, GELU, no dropout) as nn.TransformerEncoderLayer, a final layer norm and a dense layer to the 65
characters. AdamW (betas 0.9 and 0.99, weight decay 0.1 except on biases and norms), gradient-norm clip 1, linear
warm-up over 100 iterations then a cosine from 1e-3 to 1e-4; batch 12 random windows of 64 characters from the
first 90% of the text; every 250 iterations the mean loss on 240 fixed windows of the last 10%. The wall time
covers the training loop and its evaluations, as the example's does; the last line is
`val_loss=... wall_s=...` in the example's form. Threads: torch.set_num_threads($RAYON_NUM_THREADS, else 2).
"""

import argparse
import math
import os
import time

import torch
from torch import nn
import torch.nn.functional as F

CONTEXT = 64
BATCH = 12
D_MODEL = 128
MAX_LR = 1e-3
MIN_LR = 1e-4
WARMUP = 100


class Gpt(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, D_MODEL)
        self.pos = nn.Parameter(torch.randn(CONTEXT, D_MODEL) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                D_MODEL, 4, 4 * D_MODEL, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(4)
        )
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.embed(ids) + self.pos[:t]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.head(self.norm(x))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-windows", type=int, default=240)
    p.add_argument("--sample", type=int, default=300)
    p.add_argument("--seed", type=int, default=1337)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))
    torch.manual_seed(a.seed)

    data = os.environ.get("ENGRAM_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    with open(os.path.join(data, "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(len(ids) * 0.9)
    print(f"Tiny Shakespeare: {len(ids):,} characters, {len(chars)} distinct; 90/10 split; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")

    model = Gpt(len(chars))
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "norm" in n)]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "norm" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=MAX_LR, betas=(0.9, 0.99)
    )

    def learning_rate(it: int) -> float:
        if it < WARMUP:
            return MAX_LR * (it + 1) / (WARMUP + 1)
        progress = min(1.0, (it - WARMUP) / max(1, a.iters - WARMUP))
        return MIN_LR + 0.5 * (1 + math.cos(math.pi * progress)) * (MAX_LR - MIN_LR)

    def windows(lo: int, hi: int, n: int, gen: torch.Generator):
        starts = torch.randint(lo, hi - CONTEXT - 1, (n,), generator=gen)
        x = torch.stack([ids[s : s + CONTEXT] for s in starts])
        y = torch.stack([ids[s + 1 : s + CONTEXT + 1] for s in starts])
        return x, y

    train_gen = torch.Generator().manual_seed(a.seed)
    vx, vy = windows(split, len(ids), a.eval_windows, torch.Generator().manual_seed(a.seed + 1))
    started = time.perf_counter()
    smooth = math.nan
    val_loss = math.nan
    for it in range(a.iters):
        for g in opt.param_groups:
            g["lr"] = learning_rate(it)
        x, y = windows(0, split, BATCH, train_gen)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        v = loss.item()
        smooth = v if math.isnan(smooth) else 0.98 * smooth + 0.02 * v
        if (it + 1) % a.eval_every == 0 or it + 1 == a.iters:
            model.eval()
            with torch.no_grad():
                out = model(vx)
                val_loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), vy.reshape(-1)).item()
            model.train()
            print(f"iter {it + 1}  train loss {smooth:.4f}  val loss {val_loss:.4f}  lr {learning_rate(it):.2e}  "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
    wall = time.perf_counter() - started
    print(f"trained {a.iters} iterations in {wall:.1f} s "
          f"({round(a.iters * BATCH * CONTEXT / wall):,} tokens/s with evaluations)")

    if a.sample > 0:
        model.eval()
        out = [index[c] for c in "ROMEO:\n"]
        gen = torch.Generator().manual_seed(a.seed)
        with torch.no_grad():
            for _ in range(a.sample):
                logits = model(torch.tensor([out[-CONTEXT:]]))[0, -1] / 0.8
                top = torch.topk(logits, 40)
                probs = torch.softmax(top.values, -1)
                out.append(int(top.indices[torch.multinomial(probs, 1, generator=gen)]))
        print("\n--- sample ---\n" + "".join(chars[i] for i in out) + "\n---")
    print(f"val_loss={val_loss:.4f} wall_s={wall:.1f}")


if __name__ == "__main__":
    main()
