"""PyTorch CPU peer of the `recurrent` bench suite (benches/recurrent.ts runs it; torch from PyPI).

    python benches/torch_recurrent.py '<json>'

The JSON holds {"threads": N, "budget": {...}, "cases": [{"cell", "hidden", "batch", "op"}, ...]} and the shapes
below must match recurrent.ts: a one-layer LSTM or GRU (input 64 float features, batch first, last step) ->
Linear(H, 64) logits, cross-entropy on class ids, Adam (lr 1e-3); seqLen 50; float32. `train` is one step
(zero_grad, forward, loss, backward, step); `infer` is a forward under no_grad. Prints one JSON object:
{"torch": version, "threads": N, "results": [{...case, "meanMs", "medianMs", "minMs", "iterations"}]}.
"""

import json
import sys

import torch
from torch import nn

from torch_timing import time_case

SEQ_LEN = 50
INPUT_SIZE = 64
CLASSES = 64
LEARNING_RATE = 1e-3


class Model(nn.Module):
    def __init__(self, cell, hidden):
        super().__init__()
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](INPUT_SIZE, hidden, batch_first=True)
        self.out = nn.Linear(hidden, CLASSES)

    def forward(self, x):
        seq, _ = self.rnn(x)
        return self.out(seq[:, -1])


def main():
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    results = []
    for case in spec["cases"]:
        model = Model(case["cell"], case["hidden"])
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        loss_fn = nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(42)
        x = torch.rand(case["batch"], SEQ_LEN, INPUT_SIZE, generator=g) * 2 - 1
        y = torch.randint(0, CLASSES, (case["batch"],), generator=g)

        def train():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()

        def infer():
            with torch.no_grad():
                return model(x).sum().item()

        timing = time_case(train if case["op"] == "train" else infer, spec["budget"])
        results.append({**case, **timing})
        print(f"torch {case}: median {timing['medianMs']:.2f} ms", file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
