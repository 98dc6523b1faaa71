"""PyTorch CPU peer of the `attention` bench suite (benches/attention.ts runs it; torch from PyPI).

    python benches/torch_attention.py '<json>'

The JSON holds {"threads": N, "budget": {...}, "cases": [{"model": "block" | "gpt", "op": "train" | "infer"}, ...]}
and the shapes below must match attention.ts:

- `block`: one post-norm encoder block, nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=512,
  dropout=0, activation='relu', batch_first=True, norm_first=False), then a per-token Linear(128, 64) head;
  float input [16, 64, 128], class ids [16, 64], mean token cross-entropy, Adam (lr 1e-3). `train` is one step
  (zero_grad, forward, loss, backward, step) in train() mode; `infer` is a forward in eval() mode under no_grad.
- `gpt`: a decoder-only character model in nanoGPT's CPU configuration: Embedding(65, 128) plus a learned
  positional embedding (64 positions), 4 pre-norm causal blocks nn.TransformerEncoderLayer(128, 4, 512,
  dropout=0, activation='gelu', batch_first=True, norm_first=True) called with a causal mask and is_causal=True,
  a final LayerNorm and Linear(128, 65); token ids [12, 64] in, next-token ids [12, 64] as targets, AdamW
  (lr 1e-3, weight decay 0.1 on every parameter). `train` only: tokens/s = 12 * 64 / median step seconds.

Which kernels torch picks matters for reading the numbers, so each case also reports the attention path it took,
found by profiling one call (see `attention_path`): in train() mode (and for the GPT) the encoder layer takes the
standard (non-fused) path, F.multi_head_attention_forward with need_weights=False, which calls
scaled_dot_product_attention (on the CPU, its flash-attention kernel); in eval() mode under no_grad the block takes
the "fast path", the fused inference kernel aten::_transformer_encoder_layer_fwd (native multi-head attention),
as a deployed PyTorch model would.

Prints one JSON object: {"torch": version, "threads": N,
"results": [{...case, "path", "meanMs", "medianMs", "minMs", "iterations"}]}.
"""

import json
import os
import sys
import warnings

import torch
from torch import nn

from torch_timing import time_case

# A CUDA build of torch warns on a machine whose driver it cannot use; this peer runs on the CPU only.
warnings.filterwarnings("ignore", message="CUDA initialization")

# The `block` case.
BATCH = 16
SEQ_LEN = 64
D_MODEL = 128
HEADS = 4
FF_DIM = 512
CLASSES = 64
LEARNING_RATE = 1e-3

# The `gpt` case.
GPT_VOCAB = 65
GPT_BATCH = 12
GPT_CONTEXT = 64
GPT_LAYERS = 4
GPT_WEIGHT_DECAY = 0.1


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.TransformerEncoderLayer(
            D_MODEL, HEADS, FF_DIM, dropout=0.0, activation="relu", batch_first=True, norm_first=False
        )
        self.head = nn.Linear(D_MODEL, CLASSES)

    def forward(self, x):
        return self.head(self.block(x))


class Gpt(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(GPT_VOCAB, D_MODEL)
        self.pos = nn.Embedding(GPT_CONTEXT, D_MODEL)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                D_MODEL, HEADS, FF_DIM, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(GPT_LAYERS)
        )
        self.norm = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, GPT_VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(GPT_CONTEXT), persistent=False)
        self.register_buffer("positions", torch.arange(GPT_CONTEXT), persistent=False)

    def forward(self, ids):
        t = ids.shape[1]
        h = self.tok(ids) + self.pos(self.positions[:t])
        for block in self.blocks:
            h = block(h, src_mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


# Operator names that tell the attention paths apart, in the order they are looked for.
PATHS = [
    ("aten::_transformer_encoder_layer_fwd", "fast path (fused aten::_transformer_encoder_layer_fwd)"),
    ("aten::_native_multi_head_attention", "native multi-head attention (aten::_native_multi_head_attention)"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "standard path, SDPA flash-attention CPU kernel"),
    ("aten::_scaled_dot_product_attention_math", "standard path, SDPA math kernel"),
    ("aten::scaled_dot_product_attention", "standard path, scaled_dot_product_attention"),
]


def attention_path(fn):
    """Profiles one call of `fn` and names the attention path it took."""
    # The profiler logs its start and stop on file descriptor 2 from C++: hide that from the suite's output.
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    names = {e.key for e in prof.key_averages()}
    for op, label in PATHS:
        if op in names:
            return label
    return "standard path, attention from bmm and softmax"


def make_block(op):
    model = Block()
    g = torch.Generator().manual_seed(42)
    x = torch.rand(BATCH, SEQ_LEN, D_MODEL, generator=g) * 2 - 1
    y = torch.randint(0, CLASSES, (BATCH, SEQ_LEN), generator=g)
    if op == "infer":
        # eval() + no_grad: TransformerEncoderLayer's inference fast path (fused encoder-layer kernel).
        model.eval()

        def infer():
            with torch.no_grad():
                return model(x).sum().item()

        return infer
    # train(): the standard path under autograd (nn.MultiheadAttention via F.multi_head_attention_forward -> SDPA).
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()

    def train():
        opt.zero_grad()
        loss = loss_fn(model(x).reshape(-1, CLASSES), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    return train


def make_gpt(op):
    if op != "train":
        raise ValueError("gpt: only the train case is measured")
    model = Gpt()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=GPT_WEIGHT_DECAY)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(42)
    ids = torch.randint(0, GPT_VOCAB, (GPT_BATCH, GPT_CONTEXT + 1), generator=g)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def train():
        opt.zero_grad()
        loss = loss_fn(model(x).reshape(-1, GPT_VOCAB), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    return train


def main():
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    results = []
    for case in spec["cases"]:
        fn = {"block": make_block, "gpt": make_gpt}[case["model"]](case["op"])
        path = attention_path(fn)
        timing = time_case(fn, spec["budget"])
        results.append({**case, "path": path, **timing})
        print(f"torch {case}: median {timing['medianMs']:.2f} ms ({path})", file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
