//! The working memory of one call of a [`Sequential`] model, estimated from the batch's shapes before the call
//! allocates any of it (see [`crate::memory`]).
//!
//! Per layer, a training step holds about `a·B·T·D + b·B·h·T² + p·P` bytes at its peak (D its width, h its
//! heads, P its parameters' bytes, all times the element size); a prediction `a'·B·T·D + b'·B·h·T²`. The
//! constants were measured with a counting allocator around `train_step` and `predict` over a sweep of
//! sizes, fitted and rounded up so that no measured case exceeded its estimate;
//! `tests/memory.rs` checks them again. Training sums the layers (the forward keeps every layer's activations
//! for the backward) and adds the loss's logits; prediction takes the largest layer (nothing is kept). The
//! optimizer's update is a later phase, bounded separately (see `Trainer::check_call`).

use super::{Layer, Sequential};
use crate::host::HostTensor;
use crate::layers::{Cell, PositionKind};
use crate::memory::{Bytes, elems};

/// Slack for what no shape predicts: GEMM packing buffers, each thread's first-use scratch.
const SLACK: u64 = 4 << 20;

impl Sequential {
    /// Bytes a call on `x` needs besides the model's parameters and optimizer state: `training` for the
    /// forward, loss and backward of a step, else inference.
    pub(crate) fn working_bytes(&self, x: &HostTensor, training: bool) -> u64 {
        let e = self.dtype().size_in_bytes() as f64;
        let batch = x.shape.first().copied().unwrap_or(1) as f64;
        // Ids [B, T]; features [B, T, F] or [B, F].
        let (mut t, mut f) = match (x.shape.len(), self.nodes.first().map(|n| &n.layer)) {
            (2, Some(Layer::Embedding(_))) => (x.shape[1] as f64, 1.0),
            (n, _) if n >= 3 => (x.shape[1] as f64, elems(&x.shape[2..]) as f64),
            (_, _) => (1.0, elems(x.shape.get(1..).unwrap_or(&[])) as f64),
        };
        let shapes = self.trainer.params.shapes();
        let mut offset = 0;
        let (mut train, mut infer) = (0f64, 0f64);
        for node in &self.nodes {
            let p: f64 = shapes[offset..offset + node.n_params].iter().map(|(_, s)| elems(s) as f64).sum::<f64>() * e;
            offset += node.n_params;
            let bt = batch * t;
            let (tr, pr) = match &node.layer {
                Layer::Embedding(l) => {
                    f = l.dim as f64;
                    (4.1 * bt * f * e + 91.0 * bt * e + 0.2 * p, 1.1 * bt * f * e + 18.0 * bt * e)
                }
                Layer::Dense(l) => {
                    let width = f + l.units as f64;
                    f = l.units as f64;
                    (2.8 * bt * width * e + 1.1 * p, 1.6 * bt * width * e + 0.1 * p)
                }
                Layer::Recurrent(l) => {
                    let h = l.hidden_size as f64;
                    let dirs = if l.bidirectional { 2.0 } else { 1.0 };
                    let (per, steps, infer) = match l.cell {
                        Cell::Lstm => (19.0, 21.0, 5.5),
                        Cell::Gru => (17.0, 31.0, 4.3),
                        Cell::Rnn(_) => (6.0, 130.0, 2.2),
                    };
                    let stacks = dirs * l.num_layers as f64;
                    let tr = per * bt * h * e * stacks + steps * bt * e + 2.0 * bt * f * e + 4.9 * p;
                    let pr = infer * bt * h * e * dirs + 33.0 * bt * e + bt * f * e + 2.2 * p;
                    f = dirs * h;
                    if !l.return_sequences {
                        t = 1.0;
                    }
                    (tr, pr)
                }
                Layer::Dropout(_) => (7.0 * bt * f * e, 2.1 * bt * f * e),
                Layer::Attention(l) => {
                    let d = l.d_model as f64;
                    let probs = batch * l.n_heads as f64 * t * t * e;
                    let tr = if l.dropout > 0.0 {
                        21.0 * bt * d * e + 22.0 * probs + 330.0 * bt * e
                    } else {
                        16.0 * bt * d * e + 1.2 * probs + 110.0 * bt * e
                    };
                    (tr + 1.9 * p, 6.0 * bt * d * e + 1.1 * probs)
                }
                Layer::Positional(l) => {
                    let d = l.d_model as f64;
                    let (pw, mask) = (
                        if l.kind == PositionKind::Learned { 1.7 } else { 0.3 },
                        if l.dropout > 0.0 { 3.0 } else { 0.0 },
                    );
                    ((6.2 + 2.0 * mask) * bt * d * e + 90.0 * bt * e + pw * p, (2.1 + mask) * bt * d * e + 1.1 * bt * e)
                }
                Layer::Norm(_) => (6.1 * bt * f * e + 1.3 * p, 2.1 * bt * f * e + p),
                Layer::Block(l) => {
                    let d = l.d_model as f64;
                    let ff = l.ff_dim() as f64;
                    let probs = batch * l.attn.n_heads as f64 * t * t * e;
                    let tr = if l.dropout > 0.0 {
                        38.0 * bt * d * e + 8.0 * bt * ff * e + 21.0 * probs + 200.0 * bt * e + 1.5 * p
                    } else {
                        20.0 * bt * d * e + 4.0 * bt * ff * e + 1.2 * probs + 150.0 * bt * e + 1.1 * p
                    };
                    (tr, (6.4 * bt * d * e + 1.1 * probs).max(6.0 * bt * d * e + 2.0 * bt * ff * e))
                }
            };
            train += tr;
            infer = infer.max(pr);
        }
        // The output (logits) and the loss on it: log-probabilities and gradients in training, the copy to
        // the host in inference; the input, copied into a tensor of the model's precision.
        let out = batch * t * f * e;
        let input = elems(&x.shape) as f64 * (4.0 + e);
        let need = if training { train + 12.0 * out } else { infer + 2.0 * out } + input;
        Bytes(need.min(u64::MAX as f64) as u64).get().saturating_add(SLACK)
    }
}
