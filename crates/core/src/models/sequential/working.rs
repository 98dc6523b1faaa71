//! The working memory of one call of a [`Sequential`] model, estimated from the batch's shapes before the call
//! allocates any of it (see [`crate::memory`]).
//!
//! A training step's peak is in the backward: the forward has kept every layer's activations, the gradients
//! of the parameters done so far are held, and one layer at a time runs its backward with its own temporaries
//! (its output's gradient, the gradient of its input accumulated by autograd, its weights' gradient and GEMM
//! buffers). So the estimate sums what each layer keeps, adds every parameter's bytes once, and adds the
//! largest one layer's (or the loss's) backward. Inference keeps nothing: its peak is the one layer that holds
//! the most at once (its input, its output and its temporaries), besides the batch itself. Each term is a
//! constant times a size in bytes: `B·T·D` (rows times a width, times the element size), `B·h·T²` (attention
//! probabilities), parameter bytes, and for the recurrent kernels, which cut the batch into one slice per
//! thread, per-slice buffers (`W_hh`'s gradient, and GEMM packing of up to [`PACKED_ROWS`] rows).
//!
//! The constants were measured with a counting allocator around `gradients` and `predict` over a sweep of
//! models (every layer kind alone and stacked, with and without dropout, several widths, `ffDim`s and
//! activations), batch shapes from `[2, 16]` to `[64, 256]`, both precisions and 1, 2 and 4 threads, then
//! fitted by linear programming: the formula is never below a measured peak above 8 MiB, with [`SLACK`] the
//! estimate is at least 1.08x every peak (room for another CPU's GEMM buffers), and the formula's largest
//! excess over a peak stays small: about 1.3x for recurrent layers and Transformer blocks in training, 1.2x
//! for the other layers and in inference; [`HEADROOM`] then adds 6% for CPUs other than the one measured.
//! A layer's kept constant is at least the number of tensors its
//! code keeps for the backward, so that a deeper stack than those measured is not underestimated.
//! `tests/memory.rs` checks the estimates again. The optimizer's update is a later phase, bounded separately
//! (see `Trainer::check_call`).

use super::{Layer, Sequential};
use crate::host::HostTensor;
use crate::layers::{Activation, Cell};
use crate::memory::{Bytes, elems};

/// Slack for what no shape predicts: GEMM packing buffers that differ between CPUs (cache sizes, vector
/// width), each thread's first-use scratch.
const SLACK: u64 = 4 << 20;

/// Room above the fitted formula: its constants were fitted on one machine (Intel, AVX-512), and another
/// CPU's kernels and GEMM blocking may allocate a little more. An estimate a few percent high costs a little
/// of the budget; one below the real peak could let an allocation fail.
const HEADROOM: f64 = 1.06;

/// The most rows of a GEMM operand that gemm packs at once (its `kc` on the AVX-512 machine measured; CPUs
/// with a smaller L1 cache pack fewer).
const PACKED_ROWS: f64 = 1024.0;

/// What a training step keeps per hidden unit and row, what one direction's backward adds, and what a
/// bidirectional layer adds for its concatenated and reversed outputs (per unit and row, times the element
/// size). An LSTM keeps 4 gates, `c`, `tanh(c)`, `h` and its output per unit and step; a GRU 3 gates, `n`,
/// `h` and its output; an RNN `h` and its output.
fn recurrent_constants(cell: Cell) -> (f64, f64, f64) {
    match cell {
        Cell::Lstm => (8.0, 8.13, 4.87),
        Cell::Gru => (6.0, 8.5, 4.56),
        Cell::Rnn(_) => (2.0, 3.62, 6.2),
    }
}

impl Sequential {
    /// Bytes a call on `x` needs besides the model's parameters and optimizer state: `training` for the
    /// forward, loss and backward of a step, else inference.
    pub(crate) fn working_bytes(&self, x: &HostTensor, training: bool) -> u64 {
        let e = self.dtype().size_in_bytes() as f64;
        let batch = x.shape.first().copied().unwrap_or(1) as f64;
        // The recurrent kernels run one slice of the batch per thread, each with its own buffers.
        let slices = (rayon::current_num_threads() as f64).min(batch).max(1.0);
        // Ids [B, T] (u32 once on the device); features [B, T, F] or [B, F].
        let (mut t, mut f, input) = match (x.shape.len(), self.nodes.first().map(|n| &n.layer)) {
            (2, Some(Layer::Embedding(_))) => (x.shape[1] as f64, 1.0, elems(&x.shape) as f64 * 4.0),
            (n, _) if n >= 3 => (x.shape[1] as f64, elems(&x.shape[2..]) as f64, elems(&x.shape) as f64 * e),
            (_, _) => (1.0, elems(x.shape.get(1..).unwrap_or(&[])) as f64, elems(&x.shape) as f64 * e),
        };
        let shapes = self.trainer.params.shapes();
        let mut offset = 0;
        // Training: kept activations (summed), parameters (their gradients), the largest backward.
        let (mut kept, mut params, mut backward) = (0f64, 0f64, 0f64);
        // Inference: the most one layer holds at once.
        let mut infer = 0f64;
        for (i, node) in self.nodes.iter().enumerate() {
            let p: f64 = shapes[offset..offset + node.n_params].iter().map(|(_, s)| elems(s) as f64).sum::<f64>() * e;
            offset += node.n_params;
            params += p;
            let rows = batch * t;
            // The layer's input, unless it is the batch itself (counted once, below).
            let held = if i > 0 { 1.01 * rows * f * e } else { 0.0 };
            match &node.layer {
                Layer::Embedding(l) => {
                    f = l.dim as f64;
                    kept += 2.7 * rows * f * e;
                    infer = infer.max(rows * f * e);
                }
                Layer::Dense(l) => {
                    let units = l.units as f64;
                    let out = rows * units * e;
                    let act = l.activation != Activation::Linear;
                    kept += out * if act { 1.31 } else { 1.0 };
                    // The input's gradient only when something before it needs one.
                    let dx = if i > 0 { 1.47 * rows * f * e } else { 0.0 };
                    backward = backward.max(3.86 * out + dx + 1.54 * p + if act { 5.9 * out } else { 0.0 });
                    infer = infer.max(held + 1.03 * out * if act { 2.0 } else { 1.0 });
                    f = units;
                }
                Layer::Recurrent(l) => {
                    let h = l.hidden_size as f64;
                    let g = l.cell.gates() as f64;
                    let dirs = if l.bidirectional { 2.0 } else { 1.0 };
                    let (keep, back, bi) = recurrent_constants(l.cell);
                    let mut input = f;
                    // The previous stacked layer's output, held while the next one runs.
                    let mut prev = 0.0;
                    for k in 0..l.num_layers {
                        // One direction's weights, `W_ih | W_hh | b_ih | b_hh` side by side.
                        let w = g * h * (input + h + 2.0) * e;
                        kept += dirs * (keep * rows * h * e + 0.28 * w);
                        if l.bidirectional {
                            kept += bi * rows * h * e + 0.68 * rows * input * e;
                        }
                        let dx = if i > 0 || k > 0 { 0.75 * rows * input * e } else { 0.0 };
                        let per_slice =
                            0.82 * g * h * h * e + 0.7 * (rows / slices).ceil().min(PACKED_ROWS) * g * h * e;
                        backward = backward.max(back * rows * h * e + 2.13 * w + slices * per_slice + dx);
                        // Inference, per direction: the input projection of every step, the outputs so far, the
                        // reversed input of the backward direction, the weights and `W_hh^T`.
                        let weights = 1.22 * (w + g * h * h * e);
                        for d in [0.0, 1.0].into_iter().take(if l.bidirectional { 2 } else { 1 }) {
                            let reversed = if d > 0.0 { 0.98 * rows * input * e } else { 0.0 };
                            let outs = 1.01 * (rows * h * e * (d + 1.0) + prev);
                            infer = infer.max(held + 1.14 * rows * g * h * e + outs + reversed + weights);
                        }
                        if l.bidirectional {
                            // Both directions' outputs and their concatenation.
                            infer = infer.max(held + 1.01 * (4.0 * rows * h * e + prev));
                        }
                        prev = rows * dirs * h * e;
                        input = dirs * h;
                    }
                    f = dirs * h;
                    if !l.return_sequences {
                        t = 1.0;
                    }
                }
                Layer::Dropout(_) => kept += 6.15 * rows * f * e,
                Layer::Attention(l) => {
                    let nd = rows * l.d_model as f64 * e;
                    let probs = batch * l.n_heads as f64 * t * t * e;
                    // Dropout takes candle's generic ops, which keep every step's tensors; otherwise one fused
                    // kernel keeps the probabilities only.
                    if l.dropout > 0.0 {
                        kept += 13.45 * nd + 11.2 * probs;
                        backward = backward.max(1.17 * nd + 11.16 * probs);
                    } else {
                        kept += 5.0 * nd + 1.09 * probs;
                        backward = backward.max(8.39 * nd + 0.16 * probs);
                    }
                    // q, k, v, the output and the probabilities; then the output projection.
                    infer = infer.max(held + (1.07 * (4.0 * nd + probs)).max(5.0 * nd));
                }
                Layer::Positional(l) => {
                    let nd = rows * l.d_model as f64 * e;
                    kept += nd * if l.dropout > 0.0 { 1.59 + 6.48 } else { 1.59 };
                    // A learned table is a parameter, counted in `params`; the sinusoidal one is resident.
                    infer = infer.max(held + 1.04 * nd);
                }
                Layer::Norm(_) => {
                    kept += 1.56 * rows * f * e;
                    infer = infer.max(held + 1.04 * rows * f * e);
                }
                Layer::Block(l) => {
                    let nd = rows * l.d_model as f64 * e;
                    let nff = rows * l.ff_dim() as f64 * e;
                    let probs = batch * l.attn.n_heads as f64 * t * t * e;
                    if l.dropout > 0.0 {
                        kept += 24.36 * nd + 7.03 * nff + 2.0 * probs;
                        backward = backward.max(3.18 * nd + 3.09 * nff + 24.92 * probs);
                    } else {
                        kept += 12.0 * nd + 2.4 * nff + 1.72 * probs;
                        backward = backward.max(3.18 * nd + 3.09 * nff);
                    }
                    // Attention (as above), then the feed-forward network beside the residual stream.
                    let attention = (1.14 * (4.0 * nd + probs)).max(5.0 * nd);
                    infer = infer.max(held + attention.max(1.12 * (3.0 * nd + 2.0 * nff)));
                }
            }
        }
        // The output (logits): in training the loss keeps its log-probabilities and its backward holds their
        // gradients; in inference the copy to the host sits beside it.
        let out = batch * t * f * e;
        let need = if training {
            1.02 * input + params + kept + 2.0 * out + backward.max(8.9 * out)
        } else {
            input + infer.max(2.16 * out)
        };
        let need = need * HEADROOM;
        Bytes(need.min(u64::MAX as f64) as u64).get().saturating_add(SLACK)
    }
}
