"""Writes the PyTorch reference values that crates/core/tests/parity.rs compares engram against.

Run from the repository root (CPU only, deterministic; needs torch and safetensors):

    .venv/bin/python scripts/make-fixtures.py

It writes, in float32 as PyTorch computes by default:

- crates/core/tests/fixtures/lstm_parity.safetensors: embedding(11, 8) -> LSTM(8, 16, 2 layers) -> Linear(16, 11),
  cross-entropy over every step with one target equal to the ignore index (-100). Holds the inputs, the initial
  weights under engram's names (`0.weight`, `1.weight_ih_l0`, ..., `2.bias`, so `load_weights(path, "")` reads
  them), the logits, the loss, every gradient (`grad.<name>`), and the weights after one step of each optimizer
  from the initial weights (`sgd.<name>`, `adam1.<name>`, `adam2.<name>` after two steps on the same batch,
  `adamw.<name>`, `clip.<name>` for SGD after clip_grad_norm_, with the norm before clipping in `clip.grad_norm`).
- crates/core/tests/fixtures/lstm_mse_parity.safetensors: LSTM(4, 6) on float input, last step -> Linear(6, 3),
  mean squared error; inputs, weights, output, loss and gradients.
- crates/core/tests/fixtures/recurrent_<case>.safetensors, one per case of RECURRENT_CASES: an LSTM, GRU or RNN
  (tanh or relu; stacked and/or bidirectional) on float input -> Linear(D*H, 3), MSE over every step or on the
  final states (h_n of the last layer, forward then backward, as engram's returnSequences: false); inputs,
  weights, output, loss, gradients, and the weights after one Adam step (`adam1.<name>`).

and, in float64 (modules built with dtype=torch.float64; the global default dtype is left alone so the files above
do not change), in train mode with dropout 0 so torch never takes its inference fast paths:

- crates/core/tests/fixtures/mha_parity.safetensors: MultiheadAttention(12, 3 heads, batch_first) self-attention
  -> Linear(12, 7), cross-entropy over all 10 positions (padded ones included). Initial weights once (`attn.*`,
  `head.*`), `x`, `lengths`, `y`; per case of MHA_CASES (`plain`, `causal`, `padded`, `both`): `<tag>.out`,
  `<tag>.attn` (per-head weights [B, heads, T, T]), `<tag>.loss`, `<tag>.grad.<name>`, and `<tag>.step.<name>` after
  one AdamW step from the initial weights.
- crates/core/tests/fixtures/encoder_parity.safetensors: TransformerEncoderLayer(16, 4 heads, ff 24, batch_first)
  -> Linear(16, 5), cross-entropy over all 18 positions. `x`, `lengths`, `y`; per case of ENCODER_CASES, its own
  initial weights `<tag>.init.<name>` (torch's state_dict names under `block.` and `head.`), `<tag>.out`,
  `<tag>.loss`, `<tag>.grad.<name>` and `<tag>.step.<name>` after one Adam step.
- crates/core/tests/fixtures/layer_norm_parity.safetensors: LayerNorm(10) with random affine, MSE; weights, `x`,
  `y`, `out`, `loss`, `grad.norm.weight`, `grad.norm.bias` and `grad.x` (gradient with respect to the input).

Masks are bool, True = masked: causal is triu(ones(T, T), 1), padding is True where t >= lengths[b]. Every query
keeps key 0, so no attention row is fully masked. Losses are stored with shape [1], int tensors as int32.

The settings below are repeated in parity.rs; change both together.
"""

import copy
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "crates" / "core" / "tests" / "fixtures"
IGNORE = -100


class LstmClassifier(nn.Module):
    """embedding -> lstm (every step) -> linear, as the engram Sequential [embedding, lstm, dense]."""

    def __init__(self, vocab, dim, hidden, layers):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        self.engram_names = [("0", self.emb), ("1", self.lstm), ("2", self.out)]

    def forward(self, ids):
        h, _ = self.lstm(self.emb(ids))  # [batch, seq_len, hidden]
        return self.out(h)  # [batch, seq_len, vocab]


class LstmRegressor(nn.Module):
    """lstm (last step) -> linear, as the engram Sequential [lstm, dense]."""

    def __init__(self, inp, hidden, out):
        super().__init__()
        self.lstm = nn.LSTM(inp, hidden, batch_first=True)
        self.out = nn.Linear(hidden, out)
        self.engram_names = [("0", self.lstm), ("1", self.out)]

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.out(h[:, -1])  # [batch, out]


def named_params(model):
    """(engram name, parameter) in the order engram creates them."""
    return [(f"{prefix}.{n}", p) for prefix, m in model.engram_names for n, p in m.named_parameters()]


def snapshot(model, tag=None):
    key = (lambda n: n) if tag is None else (lambda n: f"{tag}.{n}")
    return {key(n): p.detach().clone().contiguous() for n, p in named_params(model)}


def run_steps(model, make_optimizer, loss_fn, steps, clip_norm=None):
    """Copies `model`, takes `steps` optimizer steps on the same batch, returns the copy and the last grad norm."""
    model = copy.deepcopy(model)
    opt = make_optimizer([p for _, p in named_params(model)])
    norm = None
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model).backward()
        if clip_norm is not None:
            norm = nn.utils.clip_grad_norm_([p for _, p in named_params(model)], clip_norm)
        opt.step()
    return model, norm


def lstm_parity():
    torch.manual_seed(0)
    model = LstmClassifier(vocab=11, dim=8, hidden=16, layers=2)
    ids = torch.randint(0, 11, (3, 5))
    targets = torch.randint(0, 11, (3, 5))
    targets[1, 2] = IGNORE

    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE)

    def loss_fn(m):
        return criterion(m(ids).reshape(-1, 11), targets.reshape(-1))

    logits = model(ids)
    loss = criterion(logits.reshape(-1, 11), targets.reshape(-1))
    loss.backward()

    t = {
        "input": ids.to(torch.int32),
        "target": targets.to(torch.int32),
        "logits": logits.detach(),
        "loss": loss.detach().reshape(1),
    }
    t.update(snapshot(model))
    t.update({f"grad.{n}": p.grad.detach().clone() for n, p in named_params(model)})
    model.zero_grad()

    # foreach=False: the single-tensor update path, which engram follows step for step.
    optimizers = {
        "sgd": (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, foreach=False), 1),
        "adam1": (lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.001, foreach=False), 1),
        "adam2": (lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.001, foreach=False), 2),
        "adamw": (lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, foreach=False), 1),
    }
    for tag, (make, steps) in optimizers.items():
        stepped, _ = run_steps(model, make, loss_fn, steps)
        t.update(snapshot(stepped, tag))

    clipped, norm = run_steps(model, lambda ps: torch.optim.SGD(ps, lr=0.1, foreach=False), loss_fn, 1, clip_norm=0.05)
    t.update(snapshot(clipped, "clip"))
    t["clip.grad_norm"] = norm.detach().reshape(1)
    return t


def lstm_mse_parity():
    torch.manual_seed(1)
    model = LstmRegressor(inp=4, hidden=6, out=3)
    x = torch.randn(2, 7, 4)
    y = torch.randn(2, 3)
    out = model(x)
    loss = nn.functional.mse_loss(out, y)
    loss.backward()
    t = {"input": x, "target": y, "output": out.detach(), "loss": loss.detach().reshape(1)}
    t.update(snapshot(model))
    t.update({f"grad.{n}": p.grad.detach().clone() for n, p in named_params(model)})
    return t


# name: (cell, hidden, layers, bidirectional, nonlinearity, every step)
RECURRENT_CASES = {
    "lstm_bi2": ("lstm", 5, 2, True, None, True),
    "gru_bi2": ("gru", 5, 2, True, None, True),
    "gru_last": ("gru", 6, 1, False, None, False),
    "gru_bi_last": ("gru", 4, 1, True, None, False),
    "rnn_tanh_bi": ("rnn", 5, 1, True, "tanh", True),
    "rnn_relu2_last": ("rnn", 6, 2, False, "relu", False),
}


class RecurrentRegressor(nn.Module):
    """recurrent -> linear, as the engram Sequential [lstm|gru|rnn, dense]."""

    def __init__(self, cell, inp, hidden, layers, bidirectional, nonlinearity, every_step):
        super().__init__()
        kw = {"num_layers": layers, "bidirectional": bidirectional, "batch_first": True}
        if cell == "rnn":
            self.rnn = nn.RNN(inp, hidden, nonlinearity=nonlinearity, **kw)
        else:
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](inp, hidden, **kw)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), 3)
        self.every_step = every_step
        self.bidirectional = bidirectional
        self.engram_names = [("0", self.rnn), ("1", self.out)]

    def forward(self, x):
        seq, state = self.rnn(x)
        if self.every_step:
            return self.out(seq)
        h_n = state[0] if isinstance(state, tuple) else state  # [layers * D, batch, hidden]
        last = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.bidirectional else h_n[-1]
        return self.out(last)


def recurrent_parity(seed, cell, hidden, layers, bidirectional, nonlinearity, every_step):
    torch.manual_seed(seed)
    model = RecurrentRegressor(cell, 4, hidden, layers, bidirectional, nonlinearity, every_step)
    x = torch.randn(3, 6, 4)
    y = torch.randn(3, 6, 3) if every_step else torch.randn(3, 3)

    def loss_fn(m):
        return nn.functional.mse_loss(m(x), y)

    out = model(x)
    loss = nn.functional.mse_loss(out, y)
    loss.backward()
    t = {"input": x, "target": y, "output": out.detach(), "loss": loss.detach().reshape(1)}
    t.update(snapshot(model))
    t.update({f"grad.{n}": p.grad.detach().clone() for n, p in named_params(model)})
    model.zero_grad()
    stepped, _ = run_steps(model, lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=False), loss_fn, 1)
    t.update(snapshot(stepped, "adam1"))
    return t


F64 = torch.float64


def causal_mask(t):
    """bool [t, t], True above the diagonal: query i may not see key j > i."""
    return torch.triu(torch.ones(t, t, dtype=torch.bool), 1)


def padding_mask(lengths, t):
    """bool [batch, t], True where step t is past the end of that sequence."""
    return torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1)


def grads(model, tag):
    return {f"{tag}.grad.{n}": p.grad.detach().clone() for n, p in named_params(model)}


class AttnClassifier(nn.Module):
    """self-attention -> linear on every step."""

    def __init__(self, dim, heads, classes):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, bias=True, batch_first=True, dtype=F64)
        self.head = nn.Linear(dim, classes, dtype=F64)
        self.engram_names = [("attn", self.attn), ("head", self.head)]

    def forward(self, x, attn_mask=None, key_padding_mask=None):
        out, weights = self.attn(
            x, x, x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=True,
            average_attn_weights=False,
        )
        return out, weights, self.head(out)


# tag: (causal, padded)
MHA_CASES = {"plain": (False, False), "causal": (True, False), "padded": (False, True), "both": (True, True)}


def mha_parity():
    torch.manual_seed(20)
    batch, steps, dim, heads, classes = 2, 5, 12, 3, 7
    model = AttnClassifier(dim, heads, classes)
    model.train()  # dropout is 0; train mode keeps torch off its inference fast path
    with torch.no_grad():
        # torch starts both at zero, which would leave their gradients (and the input's) degenerate.
        model.attn.in_proj_bias.normal_(0.0, 0.1)
        model.attn.out_proj.bias.normal_(0.0, 0.1)
    x = torch.randn(batch, steps, dim, dtype=F64)
    lengths = torch.tensor([5, 3])
    y = torch.randint(0, classes, (batch, steps))

    t = {"x": x, "lengths": lengths.to(torch.int32), "y": y.to(torch.int32)}
    t.update(snapshot(model))
    for tag, (causal, padded) in MHA_CASES.items():
        masks = {
            "attn_mask": causal_mask(steps) if causal else None,
            "key_padding_mask": padding_mask(lengths, steps) if padded else None,
        }

        def loss_fn(m, masks=masks):
            return nn.functional.cross_entropy(m(x, **masks)[2].reshape(-1, classes), y.reshape(-1))

        out, weights, logits = model(x, **masks)
        loss = nn.functional.cross_entropy(logits.reshape(-1, classes), y.reshape(-1))
        loss.backward()
        t[f"{tag}.out"] = out.detach()
        t[f"{tag}.attn"] = weights.detach()
        t[f"{tag}.loss"] = loss.detach().reshape(1)
        t.update(grads(model, tag))
        model.zero_grad()
        make = lambda ps: torch.optim.AdamW(  # noqa: E731
            ps, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False
        )
        stepped, _ = run_steps(model, make, loss_fn, 1)
        t.update(snapshot(stepped, f"{tag}.step"))
    return t


class EncoderClassifier(nn.Module):
    """one transformer encoder block -> linear on every step."""

    def __init__(self, dim, heads, ff, classes, activation, norm_first):
        super().__init__()
        self.block = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=ff,
            dropout=0.0,
            activation=activation,
            layer_norm_eps=1e-5,
            batch_first=True,
            norm_first=norm_first,
            dtype=F64,
        )
        self.head = nn.Linear(dim, classes, dtype=F64)
        self.engram_names = [("block", self.block), ("head", self.head)]

    def forward(self, x, src_mask=None, src_key_padding_mask=None, is_causal=False):
        out = self.block(x, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        return out, self.head(out)


# tag: (norm_first, activation, masked: causal src_mask with is_causal=True plus the padding mask)
ENCODER_CASES = {
    "post_relu": (False, "relu", False),
    "pre_gelu": (True, "gelu", False),
    "pre_gelu_masked": (True, "gelu", True),
}


def encoder_parity():
    torch.manual_seed(30)
    batch, steps, dim, heads, ff, classes = 3, 6, 16, 4, 24, 5
    x = torch.randn(batch, steps, dim, dtype=F64)
    lengths = torch.tensor([6, 4, 2])
    y = torch.randint(0, classes, (batch, steps))

    t = {"x": x, "lengths": lengths.to(torch.int32), "y": y.to(torch.int32)}
    for i, (tag, (norm_first, activation, masked)) in enumerate(ENCODER_CASES.items()):
        torch.manual_seed(31 + i)
        model = EncoderClassifier(dim, heads, ff, classes, activation, norm_first)
        model.train()  # dropout is 0; train mode keeps torch off its fused encoder fast path
        with torch.no_grad():
            # Zero biases and unit LayerNorm gains would make several gradients degenerate.
            model.block.self_attn.in_proj_bias.normal_(0.0, 0.1)
            model.block.self_attn.out_proj.bias.normal_(0.0, 0.1)
            for norm in (model.block.norm1, model.block.norm2):
                norm.weight.copy_(1.0 + 0.1 * torch.randn_like(norm.weight))
                norm.bias.copy_(0.1 * torch.randn_like(norm.bias))
        kw = {}
        if masked:
            kw = {
                "src_mask": causal_mask(steps),
                "src_key_padding_mask": padding_mask(lengths, steps),
                "is_causal": True,
            }

        def loss_fn(m, kw=kw):
            return nn.functional.cross_entropy(m(x, **kw)[1].reshape(-1, classes), y.reshape(-1))

        t.update(snapshot(model, f"{tag}.init"))
        out, logits = model(x, **kw)
        loss = nn.functional.cross_entropy(logits.reshape(-1, classes), y.reshape(-1))
        loss.backward()
        t[f"{tag}.out"] = out.detach()
        t[f"{tag}.loss"] = loss.detach().reshape(1)
        t.update(grads(model, tag))
        model.zero_grad()
        stepped, _ = run_steps(model, lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=False), loss_fn, 1)
        t.update(snapshot(stepped, f"{tag}.step"))
    return t


def layer_norm_parity():
    torch.manual_seed(40)
    norm = nn.LayerNorm(10, eps=1e-5, dtype=F64)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.3 * torch.randn(10, dtype=F64))
        norm.bias.copy_(0.3 * torch.randn(10, dtype=F64))
    x = (torch.randn(3, 4, 10, dtype=F64) * 2.0 + 0.5).requires_grad_()
    y = torch.randn(3, 4, 10, dtype=F64)
    out = norm(x)
    loss = nn.functional.mse_loss(out, y)
    loss.backward()
    return {
        "norm.weight": norm.weight.detach().clone(),
        "norm.bias": norm.bias.detach().clone(),
        "x": x.detach().clone(),
        "y": y,
        "out": out.detach(),
        "loss": loss.detach().reshape(1),
        "grad.norm.weight": norm.weight.grad.detach().clone(),
        "grad.norm.bias": norm.bias.grad.detach().clone(),
        "grad.x": x.grad.detach().clone(),
    }


def save(name, tensors):
    # One metadata entry: safetensors writes several in hash order, which would change the bytes on every run.
    meta = {"generator": f"scripts/make-fixtures.py, torch {torch.__version__}"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / name), metadata=meta)
    print(f"wrote {OUT / name} ({(OUT / name).stat().st_size} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    save("lstm_parity.safetensors", lstm_parity())
    save("lstm_mse_parity.safetensors", lstm_mse_parity())
    for i, (name, case) in enumerate(RECURRENT_CASES.items()):
        save(f"recurrent_{name}.safetensors", recurrent_parity(10 + i, *case))
    save("mha_parity.safetensors", mha_parity())
    save("encoder_parity.safetensors", encoder_parity())
    save("layer_norm_parity.safetensors", layer_norm_parity())
