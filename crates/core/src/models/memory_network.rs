//! End-to-End Memory Network (Sukhbaatar, Szlam, Weston, Fergus 2015, "End-To-End Memory Networks").
//!
//! Inputs: `stories [batch, memory_size, sentence_len]` and `queries [batch, sentence_len]`, token ids with
//! 0 as padding. Sentences sit oldest first in slots `0..k` (k real sentences, then empty slots); a slot of
//! all zeros *before* slot k is an empty memory, which still takes a place in time. Output: answer logits
//! `[batch, vocab_size]`.
//!
//! Per hop k: memories `m_i = sum_j l_j * A^k x_ij + T_A^k(i)` and outputs `c_i = sum_j l_j * C^k x_ij +
//! T_C^k(i)`, where `l_j` is the position encoding (PE, paper section 4.1, in the form of the authors' code; see
//! [`position_weight`]) and `T(i)` the temporal encoding indexed by recency (i = 0 is the newest sentence).
//! Attention `p = softmax(u . m_i)` over the real slots and, with `attend_empty` (the default, as the authors'
//! code), the empty slots up to `memory_size` at a score of 0; read-out `o = sum_i p_i c_i`, next controller state `u' = u + o` (adjacent) or `u' = H u + o` (layerwise);
//! `u^1 = sum_j l_j * B q_j`. Answer logits `W u^{K+1}`.
//!
//! Parameters, named after the paper:
//! - adjacent tying (the paper's default): `A.1 [V, d]` (also B, the query embedding), `C.k [V, d]` for
//!   k = 1..K (C^k is also A^{k+1}; C^K is also W, transposed), `T_A.1 [M, d]`, `T_C.k [M, d]` (tied the same
//!   way);
//! - layerwise tying: `A`, `B`, `C`, `W` (all `[V, d]`; logits `u W^T`), `H [d, d]`, `T_A`, `T_C`.
//!
//! All are initialised N(0, 0.1^2) as in the paper. Linear start (LS) removes the softmax in the memory layers;
//! random noise (RN) inserts empty memories at random places in training stories, which pushes the temporal
//! index of the sentences before them back.

use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::{HostData, HostTensor};
use crate::kernels::bag::weighted_bag;
use crate::kernels::on_caller_if_small;
use crate::layers::{Builder, Params, check_at_most, check_positive};
use crate::memory::{self, Budget, Bytes};
use crate::models::Precision;
use crate::rng::Rng;
use crate::train::trainer::check_batch;
use crate::train::{CompileConfig, Evaluation, StepOutput, Trainer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WeightTying {
    #[default]
    Adjacent,
    Layerwise,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryNetworkConfig {
    pub vocab_size: usize,
    pub sentence_len: usize,
    #[serde(default = "d20")]
    pub embed_dim: usize,
    #[serde(default = "d3")]
    pub hops: usize,
    #[serde(default = "d50")]
    pub memory_size: usize,
    #[serde(default)]
    pub weight_tying: WeightTying,
    #[serde(default = "yes")]
    pub position_encoding: bool,
    #[serde(default = "yes")]
    pub temporal_encoding: bool,
    /// Random noise (RN): in training, each story sentence's temporal index moves one further back with this
    /// probability (cumulatively), as if empty memories had been inserted before it (the paper uses 0.1).
    #[serde(default)]
    pub random_noise: f64,
    /// Empty slots of the memory (up to `memory_size`) take part in the attention softmax with a score of 0, as
    /// in the authors' released code: the model can put weight on "nothing", which yes/no questions need.
    #[serde(default = "yes")]
    pub attend_empty: bool,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub dtype: Precision,
}

fn d20() -> usize {
    20
}
fn d3() -> usize {
    3
}
fn d50() -> usize {
    50
}
fn yes() -> bool {
    true
}

/// Parameter indices, per hop where the tying allows.
#[derive(Debug, Clone)]
struct Layout {
    /// Query embedding B.
    b: usize,
    /// A^k and C^k for k = 1..K.
    a: Vec<usize>,
    c: Vec<usize>,
    /// T_A^k and T_C^k (empty without temporal encoding).
    ta: Vec<usize>,
    tc: Vec<usize>,
    /// Output map W `[V, d]`, used as `u W^T`.
    w: usize,
    /// Layerwise only: `u' = u H^T + o`.
    h: Option<usize>,
}

pub struct MemoryNetwork {
    config: MemoryNetworkConfig,
    layout: Layout,
    trainer: Trainer,
    /// Linear start: the memory layers' softmax is removed while this is set.
    linear: bool,
}

/// Validated inputs as tensors, plus what the forward needs from the host data.
struct Batch {
    /// Word ids, flat; as tensors for the generic path and as shared vectors for the fused CPU kernel.
    stories: Tensor,
    queries: Tensor,
    story_ids: Arc<Vec<u32>>,
    query_ids: Arc<Vec<u32>>,
    /// `[B, M, S, d]` position weights, zero on padding words (only with position encoding; otherwise a mask).
    story_weights: Tensor,
    query_weights: Tensor,
    /// Temporal row per slot `[B * M]` (recency, 0 = newest) and the slot mask `[B, M]` (1 = real).
    time: Tensor,
    mask: Tensor,
    /// `[B, 1]`: the log of the number of empty slots (those score 0 in the softmax), or -1e9 for none.
    empty_score: Tensor,
}

impl MemoryNetwork {
    pub fn new(config: MemoryNetworkConfig) -> Result<Self> {
        Self::new_on(config, &Device::Cpu)
    }

    pub fn new_on(config: MemoryNetworkConfig, device: &Device) -> Result<Self> {
        Self::new_with(config, device, &Budget::global())
    }

    /// Builds the network once a dry run has shown that its parameters fit `budget`.
    pub fn new_with(config: MemoryNetworkConfig, device: &Device, budget: &Budget) -> Result<Self> {
        let plan = Self::plan(&config, device, budget)?;
        let (layout, params, rng) = Self::assemble(&config, device, Params::default())?;
        drop(plan);
        let dtype = config.dtype.dtype();
        Ok(MemoryNetwork {
            config,
            layout,
            trainer: Trainer::new(params, rng, device, dtype, budget.clone()),
            linear: false,
        })
    }

    /// The network as a dry run (shapes only, checked against `budget`); see [`crate::Sequential::plan`].
    pub fn plan(config: &MemoryNetworkConfig, device: &Device, budget: &Budget) -> Result<Self> {
        let c = config;
        let what = |need: &str| {
            format!(
                "memoryNetwork with vocabSize {}, embedDim {}, hops {}, memorySize {} needs {need} of parameters",
                c.vocab_size, c.embed_dim, c.hops, c.memory_size
            )
        };
        let (layout, params, rng) = Self::assemble(config, device, Params::dry())?;
        let dtype = config.dtype.dtype();
        let trainer = Trainer::new(params, rng, device, dtype, budget.clone());
        budget.check(trainer.resident_bytes(), |need| what(need))?;
        Ok(MemoryNetwork { config: config.clone(), layout, trainer, linear: false })
    }

    /// The parameters, named after the paper, from the seeded generator (or only planned, in a dry run).
    fn assemble(config: &MemoryNetworkConfig, device: &Device, mut params: Params) -> Result<(Layout, Params, Rng)> {
        let op = "memoryNetwork";
        check_positive(op, "vocabSize", config.vocab_size)?;
        check_positive(op, "sentenceLen", config.sentence_len)?;
        check_positive(op, "embedDim", config.embed_dim)?;
        check_positive(op, "hops", config.hops)?;
        check_at_most(op, "hops", config.hops, 10_000)?;
        check_positive(op, "memorySize", config.memory_size)?;
        if !(0.0..1.0).contains(&config.random_noise) {
            return Err(Error::Range(format!("{op}: randomNoise must be in [0, 1), got {}", config.random_noise)));
        }
        let dtype = config.dtype.dtype();
        let mut rng = Rng::new(config.seed);
        let (v, d, m, k) = (config.vocab_size, config.embed_dim, config.memory_size, config.hops);
        let mut b = Builder { params: &mut params, rng: &mut rng, dtype, device, prefix: String::new() };
        let mut add = |name: String, shape: &[usize]| -> Result<usize> { b.normal_std(&name, shape, 0.1) };
        let te = config.temporal_encoding;
        let layout = match config.weight_tying {
            WeightTying::Adjacent => {
                // E_0 = A^1 = B; E_k = C^k = A^{k+1}; W = E_K.
                let mut e = vec![add("A.1".into(), &[v, d])?];
                for hop in 1..=k {
                    e.push(add(format!("C.{hop}"), &[v, d])?);
                }
                let mut t = Vec::new();
                if te {
                    t.push(add("T_A.1".into(), &[m, d])?);
                    for hop in 1..=k {
                        t.push(add(format!("T_C.{hop}"), &[m, d])?);
                    }
                }
                Layout {
                    b: e[0],
                    a: e[..k].to_vec(),
                    c: e[1..].to_vec(),
                    ta: if te { t[..k].to_vec() } else { vec![] },
                    tc: if te { t[1..].to_vec() } else { vec![] },
                    w: e[k],
                    h: None,
                }
            }
            WeightTying::Layerwise => {
                let a = add("A".into(), &[v, d])?;
                let b = add("B".into(), &[v, d])?;
                let c = add("C".into(), &[v, d])?;
                let w = add("W".into(), &[v, d])?;
                let h = add("H".into(), &[d, d])?;
                let (ta, tc) = if te {
                    (vec![add("T_A".into(), &[m, d])?; k], vec![add("T_C".into(), &[m, d])?; k])
                } else {
                    (vec![], vec![])
                };
                Layout { b, a: vec![a; k], c: vec![c; k], ta, tc, w, h: Some(h) }
            }
        };
        Ok((layout, params, rng))
    }

    pub fn config(&self) -> &MemoryNetworkConfig {
        &self.config
    }

    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    pub fn trainer_mut(&mut self) -> &mut Trainer {
        &mut self.trainer
    }

    /// Linear start on or off: while on, attention is the raw scores (no softmax) in every hop.
    pub fn set_linear(&mut self, linear: bool) {
        self.linear = linear;
    }

    pub fn is_linear(&self) -> bool {
        self.linear
    }

    pub fn compile(&mut self, spec: CompileConfig) -> Result<()> {
        self.trainer.compile(spec)
    }

    /// Fails unless a call on `stories [B, M, S]` fits the memory budget: per hop, the story words' embeddings
    /// and weights for A and C (`B*M*S*d` each, kept for the backward in training), the memories and outputs
    /// (`B*M*d`), and the answer logits (`B*V`).
    fn check_memory(&self, op: &str, stories: &HostTensor, training: bool) -> Result<()> {
        if self.trainer.params.is_dry() {
            return Err(Error::State(format!("{op}: the model has no weights yet (a plan)")));
        }
        let c = &self.config;
        let e = |n: u64| Bytes::of(n, self.trainer.dtype.size_in_bytes());
        let b = stories.shape.first().copied().unwrap_or(1) as u64;
        let (m, s, d) = (c.memory_size as u64, c.sentence_len as u64, c.embed_dim as u64);
        let words = e(b.saturating_mul(m).saturating_mul(s).saturating_mul(d));
        let per_hop = words * 4 + e(b.saturating_mul(m).saturating_mul(d)) * 6;
        let hops = per_hop * (c.hops as u64 + 1);
        let logits = e(b.saturating_mul(c.vocab_size as u64)) * 3;
        let input = Bytes::of(memory::elems(&stories.shape), 8);
        let working = if training { hops * 3 + logits + input } else { per_hop * 2 + logits + input };
        self.trainer.check_call(working.get(), training, || format!("{op} on stories of shape {:?}", stories.shape))
    }

    fn net(&self) -> Net<'_> {
        Net { config: &self.config, layout: &self.layout, linear: self.linear, device: &self.trainer.device }
    }

    /// Answer logits `[batch, vocab_size]` in inference mode.
    /// A call's work in multiply-adds, roughly: every hop reads every word of every memory slot, and the answer
    /// is a product by the vocabulary (see [`on_caller_if_small`]).
    fn work(&self, stories: &HostTensor) -> u64 {
        let c = &self.config;
        let b = stories.shape.first().copied().unwrap_or(0) as u64;
        let (m, s, d, v, h) =
            (c.memory_size as u64, c.sentence_len as u64, c.embed_dim as u64, c.vocab_size as u64, c.hops as u64);
        b.saturating_mul(m * s * d * h.max(1) + d * v)
    }

    pub fn predict(&self, stories: &HostTensor, queries: &HostTensor) -> Result<HostTensor> {
        self.check_memory("predict", stories, false)?;
        let net = self.net();
        let batch = net.batch(stories, queries, None, self.trainer.dtype)?;
        on_caller_if_small(self.work(stories), || {
            HostTensor::from_tensor(&self.trainer.infer(|p, _| Ok(net.forward(&batch, p)?.0))?)
        })
    }

    /// Each hop's attention over the memory slots, `[hops, batch, memory_size]` (zero on empty slots).
    pub fn attention(&self, stories: &HostTensor, queries: &HostTensor) -> Result<HostTensor> {
        self.check_memory("attention", stories, false)?;
        let net = self.net();
        let batch = net.batch(stories, queries, None, self.trainer.dtype)?;
        let mut hops = None;
        self.trainer.infer(|p, _| {
            let (out, att) = net.forward(&batch, p)?;
            hops = Some(Tensor::stack(&att, 0)?);
            Ok(out)
        })?;
        let hops = hops.ok_or_else(|| Error::State("attention: no hops ran".into()))?;
        // The batch may have left out trailing empty slots; give them back as zeros.
        let used = hops.dim(2)?;
        let full = if used < self.config.memory_size {
            let (k, b, _) = hops.dims3()?;
            let pad = Tensor::zeros((k, b, self.config.memory_size - used), hops.dtype(), hops.device())?;
            Tensor::cat(&[&hops, &pad], 2)?
        } else {
            hops
        };
        HostTensor::from_tensor(&full)
    }

    /// The compiled loss on a batch in inference mode.
    pub fn evaluate(&self, stories: &HostTensor, queries: &HostTensor, answers: &HostTensor) -> Result<Evaluation> {
        self.trainer.loss_spec()?;
        check_batch(stories, answers)?;
        self.check_memory("evaluate", stories, false)?;
        let net = self.net();
        let batch = net.batch(stories, queries, None, self.trainer.dtype)?;
        on_caller_if_small(self.work(stories), || self.trainer.evaluate(answers, |p, _| Ok(net.forward(&batch, p)?.0)))
    }

    /// Loss and gradients (parameter order) for one training batch, without an update.
    pub fn gradients(
        &mut self,
        stories: &HostTensor,
        queries: &HostTensor,
        answers: &HostTensor,
    ) -> Result<(f64, Vec<Tensor>)> {
        self.trainer.loss_spec()?;
        self.check_memory("trainStep", stories, true)?;
        check_batch(stories, answers)?;
        let MemoryNetwork { config, layout, trainer, linear } = self;
        let device = trainer.device.clone();
        let net = Net { config, layout, linear: *linear, device: &device };
        let dtype = trainer.dtype;
        trainer.gradients(answers, |p, ctx| {
            let batch = net.batch(stories, queries, Some(ctx.rng), dtype)?;
            Ok(net.forward(&batch, p)?.0)
        })
    }

    /// One training step: forward (with random noise), loss, backward, clipping, update.
    pub fn train_step(
        &mut self,
        stories: &HostTensor,
        queries: &HostTensor,
        answers: &HostTensor,
    ) -> Result<StepOutput> {
        self.trainer.loss_spec()?;
        self.check_memory("trainStep", stories, true)?;
        check_batch(stories, answers)?;
        let work = self.work(stories);
        let MemoryNetwork { config, layout, trainer, linear } = self;
        let device = trainer.device.clone();
        let net = Net { config, layout, linear: *linear, device: &device };
        let dtype = trainer.dtype;
        on_caller_if_small(work, || {
            trainer.train_step(answers, |p, ctx| {
                let batch = net.batch(stories, queries, Some(ctx.rng), dtype)?;
                Ok(net.forward(&batch, p)?.0)
            })
        })
    }
}

/// What the forward reads: the model's shape and tying, and whether linear start is on.
struct Net<'a> {
    config: &'a MemoryNetworkConfig,
    layout: &'a Layout,
    linear: bool,
    device: &'a Device,
}

/// Position encoding weight of word `j` (0-based) of a sentence padded to `len` words, dimension `k` (0-based)
/// of `d`. This is the form of the authors' released code (MemN2N-babi-matlab), with 1-based indices:
/// `l_kj = 1 + 4 (k - (d+1)/2) (j - (J+1)/2) / (d J)`, J the padded sentence length. The printed form
/// `(1 - j/J) - (k/d)(1 - 2j/J)` with J the sentence's own length trains far worse: on bAbI task 16, mean test
/// error over four seeds 52.0% against 14.3% (best seed 51.3% against 0.3%).
fn position_weight(j: usize, len: usize, k: usize, d: usize) -> f64 {
    let (j, len, k, d) = ((j + 1) as f64, len as f64, (k + 1) as f64, d as f64);
    1.0 + 4.0 * (k - (d + 1.0) / 2.0) * (j - (len + 1.0) / 2.0) / (d * len)
}

impl Net<'_> {
    /// Validates ids and shapes, applies random noise in training, and builds the constant tensors.
    fn batch(
        &self,
        stories: &HostTensor,
        queries: &HostTensor,
        noise: Option<&mut Rng>,
        dtype: DType,
    ) -> Result<Batch> {
        let c = self.config;
        let (m, s, d, v) = (c.memory_size, c.sentence_len, c.embed_dim, c.vocab_size);
        let ids = |t: &HostTensor, what: &str| -> Result<Vec<i32>> {
            match &t.data {
                HostData::I32(x) => {
                    if let Some((i, &id)) = x.iter().enumerate().find(|&(_, &id)| id < 0 || id as usize >= v) {
                        return Err(Error::Range(format!(
                            "{what}: word ids must be in [0, {v}), found {id} at flat index {i}"
                        )));
                    }
                    Ok(x.clone())
                }
                other => Err(Error::Type(format!(
                    "{what}: expected int32 word ids (an Int32Array), got {} data",
                    other.dtype_name()
                ))),
            }
        };
        if stories.shape.len() != 3 || stories.shape[1] != m || stories.shape[2] != s || stories.shape[0] == 0 {
            return Err(Error::shape("memoryNetwork", "stories", format!("[batch >= 1, {m}, {s}]"), &stories.shape));
        }
        let b = stories.shape[0];
        if queries.shape != [b, s] {
            return Err(Error::shape("memoryNetwork", "queries", format!("[{b}, {s}]"), &queries.shape));
        }
        let mut st = ids(stories, "stories")?;
        let q = ids(queries, "queries")?;
        let empty = |slot: &[i32]| slot.iter().all(|&w| w == 0);
        let mut lengths = Vec::with_capacity(b);
        for bi in 0..b {
            let ex = &st[bi * m * s..(bi + 1) * m * s];
            let k = (0..m).rev().find(|&j| !empty(&ex[j * s..(j + 1) * s])).map_or(0, |j| j + 1);
            if k == 0 {
                return Err(Error::Range(format!("stories: example {bi} has no sentences (every slot is padding)")));
            }
            lengths.push(k);
        }
        // Random noise (paper section 4.4, as the authors' code does it): empty memories inserted at random
        // places; they hold nothing, so all they change is the temporal index of the sentences before them.
        // `ages[bi][j]` is slot j's recency (0 = newest), capped at the last temporal row.
        let mut ages: Vec<Vec<u32>> = lengths.iter().map(|&k| (0..k as u32).rev().collect()).collect();
        if let (Some(rng), true) = (noise, c.random_noise > 0.0) {
            for row in &mut ages {
                let mut age = 0u32;
                for slot in row.iter_mut().rev() {
                    if rng.next_f64() < c.random_noise {
                        age += 1;
                    }
                    *slot = age.min(m as u32 - 1);
                    age += 1;
                }
            }
        }
        let weights = |ids: &[i32], rows: usize| -> Vec<f64> {
            let mut w = vec![0.0; rows * s * d];
            for r in 0..rows {
                let words = &ids[r * s..(r + 1) * s];
                // Words are numbered by their place among the sentence's words, padding skipped.
                let mut pos = 0;
                for (j, &word) in words.iter().enumerate() {
                    if word == 0 {
                        continue;
                    }
                    for k in 0..d {
                        w[(r * s + j) * d + k] = if c.position_encoding { position_weight(pos, s, k, d) } else { 1.0 };
                    }
                    pos += 1;
                }
            }
            w
        };
        // Slots past the longest story in the batch hold only padding: leave them out. Results are the same
        // (temporal rows count back from the newest sentence) and short stories cost far less.
        let used = lengths.iter().copied().max().unwrap_or(1);
        if used < m {
            let mut trimmed = vec![0i32; b * used * s];
            for bi in 0..b {
                trimmed[bi * used * s..(bi + 1) * used * s].copy_from_slice(&st[bi * m * s..(bi * m + used) * s]);
            }
            st = trimmed;
        }
        let m = used;
        let mut time = vec![0u32; b * m];
        let mut mask = vec![0.0f64; b * m];
        for bi in 0..b {
            let k = lengths[bi];
            for j in 0..k {
                time[bi * m + j] = ages[bi][j];
                mask[bi * m + j] = 1.0;
            }
        }
        // The empty slots' share of the softmax: n slots scoring 0 weigh as one score of ln(n).
        let empty_score: Vec<f64> = lengths
            .iter()
            .map(|&k| if c.attend_empty && k < c.memory_size { ((c.memory_size - k) as f64).ln() } else { -1e9 })
            .collect();
        let dev = self.device;
        let as_u32 = |x: Vec<i32>| x.into_iter().map(|i| i as u32).collect::<Vec<u32>>();
        Ok(Batch {
            story_weights: Tensor::from_vec(weights(&st, b * m), (b, m, s, d), dev)?.to_dtype(dtype)?,
            query_weights: Tensor::from_vec(weights(&q, b), (b, s, d), dev)?.to_dtype(dtype)?,
            story_ids: Arc::new(as_u32(st.clone())),
            query_ids: Arc::new(as_u32(q.clone())),
            stories: Tensor::from_vec(as_u32(st), b * m * s, dev)?,
            queries: Tensor::from_vec(as_u32(q), b * s, dev)?,
            time: Tensor::from_vec(time, b * m, dev)?,
            mask: Tensor::from_vec(mask, (b, m), dev)?.to_dtype(dtype)?,
            empty_score: Tensor::from_vec(empty_score, (b, 1), dev)?.to_dtype(dtype)?,
        })
    }

    /// Sentence embeddings `sum_j w_j * E x_j`: `ids` flat, `weights [..., S, d]`; returns `weights` less its S.
    /// On the CPU this is one fused op (see [`weighted_bag`]); elsewhere a gather, a product and a sum.
    fn embed(e: &Tensor, ids: &Tensor, shared: &Arc<Vec<u32>>, weights: &Tensor) -> Result<Tensor> {
        let dims = weights.dims();
        let (s, d) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut out_shape = dims[..dims.len() - 2].to_vec();
        out_shape.push(d);
        if e.device().is_cpu() {
            let rows = weights.elem_count() / (s * d);
            let w = weights.reshape((rows, s, d))?;
            return Ok(weighted_bag(e, shared.clone(), &w)?.reshape(out_shape)?);
        }
        let rows = e.index_select(ids, 0)?.reshape(dims)?;
        Ok(rows.mul(weights)?.sum(weights.rank() - 2)?)
    }

    /// Logits `[B, V]` and each hop's attention `[B, M]`.
    fn forward(&self, x: &Batch, p: &[Tensor]) -> Result<(Tensor, Vec<Tensor>)> {
        let l = self.layout;
        let (b, m) = x.mask.dims2()?;
        let d = self.config.embed_dim;
        let memory = |emb: usize, t: Option<&usize>| -> Result<Tensor> {
            let mut out = Self::embed(&p[emb], &x.stories, &x.story_ids, &x.story_weights)?;
            if let Some(&t) = t {
                out = out.add(&p[t].index_select(&x.time, 0)?.reshape((b, m, d))?)?;
            }
            Ok(out)
        };
        let mut u = Self::embed(&p[l.b], &x.queries, &x.query_ids, &x.query_weights)?;
        // Masked slots get a score far below any real one, so softmax gives them zero weight.
        let offset = x.mask.affine(1e9, -1e9)?;
        let mut attention = Vec::with_capacity(self.config.hops);
        let mut next_m: Option<Tensor> = None;
        for k in 0..self.config.hops {
            let mk = match next_m.take() {
                Some(t) => t,
                None => memory(l.a[k], l.ta.get(k))?,
            };
            let ck = memory(l.c[k], l.tc.get(k))?;
            // Adjacent tying: A^{k+1} = C^k and T_A^{k+1} = T_C^k, so the next memories are these outputs.
            if l.h.is_none() && k + 1 < self.config.hops {
                next_m = Some(ck.clone());
            }
            let scores = mk.matmul(&u.unsqueeze(2)?)?.squeeze(2)?;
            let pk = if self.linear {
                scores.mul(&x.mask)?
            } else {
                // One more column stands for all the empty slots; its weight is dropped after the softmax.
                let all = Tensor::cat(&[&scores.add(&offset)?, &x.empty_score], 1)?;
                candle_nn::ops::softmax(&all, D::Minus1)?.narrow(1, 0, m)?
            };
            let o = pk.unsqueeze(1)?.matmul(&ck)?.squeeze(1)?;
            u = match l.h {
                Some(h) => u.matmul(&p[h].t()?)?.add(&o)?,
                None => u.add(&o)?,
            };
            attention.push(pk);
        }
        Ok((u.matmul(&p[l.w].t()?)?, attention))
    }
}
