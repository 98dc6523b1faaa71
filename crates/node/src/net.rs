//! The kinds of model one native handle can hold, and the calls they share. Inputs arrive as a list of host
//! tensors whose meaning depends on the kind: `[x]` or `[x, lengths]` for a sequential model, `[stories,
//! queries]` for a memory network.

use std::path::Path;

use engram_core::checkpoint::{self, Checkpointed};
use engram_core::{
    Budget, CompileConfig, Device, Error, Evaluation, GenerateConfig, HostTensor, InitialState, MemoryNetwork, Result,
    Sequential, StepOutput, train::Trainer,
};

pub enum Net {
    Sequential(Sequential),
    MemoryNetwork(MemoryNetwork),
}

fn arity<'a>(op: &str, inputs: &'a [HostTensor], names: &[&str]) -> Result<&'a [HostTensor]> {
    if inputs.len() != names.len() {
        return Err(Error::Type(format!("{op}: expected inputs {names:?}, got {} tensor(s)", inputs.len())));
    }
    Ok(inputs)
}

fn no_states(op: &str, states: &[InitialState]) -> Result<()> {
    if !states.is_empty() {
        return Err(Error::Type(format!("{op}: a memory network takes no initialState")));
    }
    Ok(())
}

const MEMORY_INPUTS: [&str; 2] = ["stories", "queries"];

/// A sequential model's inputs: `[x]` or `[x, lengths]`.
fn seq_input<'a>(op: &str, inputs: &'a [HostTensor]) -> Result<engram_core::Input<'a>> {
    match inputs {
        [x] => Ok(engram_core::Input { x, lengths: None }),
        [x, lengths] => Ok(engram_core::Input { x, lengths: Some(lengths) }),
        _ => Err(Error::Type(format!("{op}: expected inputs [x] or [x, lengths], got {} tensor(s)", inputs.len()))),
    }
}

impl Net {
    pub fn kind(&self) -> &'static str {
        match self {
            Net::Sequential(_) => Sequential::KIND,
            Net::MemoryNetwork(_) => MemoryNetwork::KIND,
        }
    }

    pub fn trainer(&self) -> &Trainer {
        match self {
            Net::Sequential(m) => m.trainer(),
            Net::MemoryNetwork(m) => m.trainer(),
        }
    }

    pub fn trainer_mut(&mut self) -> &mut Trainer {
        match self {
            Net::Sequential(m) => m.trainer_mut(),
            Net::MemoryNetwork(m) => m.trainer_mut(),
        }
    }

    pub fn compile(&mut self, spec: CompileConfig) -> Result<()> {
        self.trainer_mut().compile(spec)
    }

    pub fn train_step(&mut self, inputs: &[HostTensor], y: &HostTensor, states: &[InitialState]) -> Result<StepOutput> {
        match self {
            Net::Sequential(m) => m.train_step(seq_input("trainStep", inputs)?, y, states),
            Net::MemoryNetwork(m) => {
                no_states("trainStep", states)?;
                let i = arity("trainStep", inputs, &MEMORY_INPUTS)?;
                m.train_step(&i[0], &i[1], y)
            }
        }
    }

    pub fn predict(&self, inputs: &[HostTensor], states: &[InitialState]) -> Result<HostTensor> {
        match self {
            Net::Sequential(m) => m.predict(seq_input("predict", inputs)?, states),
            Net::MemoryNetwork(m) => {
                no_states("predict", states)?;
                let i = arity("predict", inputs, &MEMORY_INPUTS)?;
                m.predict(&i[0], &i[1])
            }
        }
    }

    pub fn evaluate(&self, inputs: &[HostTensor], y: &HostTensor, states: &[InitialState]) -> Result<Evaluation> {
        match self {
            Net::Sequential(m) => m.evaluate(seq_input("evaluate", inputs)?, y, states),
            Net::MemoryNetwork(m) => {
                no_states("evaluate", states)?;
                let i = arity("evaluate", inputs, &MEMORY_INPUTS)?;
                m.evaluate(&i[0], &i[1], y)
            }
        }
    }

    pub fn attention(&self, inputs: &[HostTensor]) -> Result<HostTensor> {
        match self {
            Net::MemoryNetwork(m) => {
                let i = arity("attention", inputs, &MEMORY_INPUTS)?;
                m.attention(&i[0], &i[1])
            }
            Net::Sequential(_) => Err(Error::Type("attention: only a memory network has memory attention".into())),
        }
    }

    /// Sequential models: each attention layer's probabilities `[batch, nHeads, seqLen, seqLen]`, by layer name.
    pub fn attention_weights(&self, inputs: &[HostTensor]) -> Result<Vec<(String, HostTensor)>> {
        match self {
            Net::Sequential(m) => m.attention_weights(seq_input("attentionWeights", inputs)?),
            Net::MemoryNetwork(_) => {
                Err(Error::Type("attentionWeights: a memory network's attention comes from attention()".into()))
            }
        }
    }

    pub fn generate(&self, prompt: &[i32], cfg: &GenerateConfig) -> Result<Vec<i32>> {
        match self {
            Net::Sequential(m) => m.generate(prompt, cfg),
            Net::MemoryNetwork(_) => Err(Error::Type("generate: a memory network answers queries; use predict".into())),
        }
    }

    pub fn reset_states(&mut self) -> Result<()> {
        match self {
            Net::Sequential(m) => {
                m.reset_states();
                Ok(())
            }
            Net::MemoryNetwork(_) => Err(Error::Type("resetStates: a memory network carries no state".into())),
        }
    }

    pub fn set_linear(&mut self, on: bool) -> Result<()> {
        match self {
            Net::MemoryNetwork(m) => {
                m.set_linear(on);
                Ok(())
            }
            Net::Sequential(_) => Err(Error::Type("linearStart: only a memory network has linear start".into())),
        }
    }

    pub fn is_linear(&self) -> bool {
        matches!(self, Net::MemoryNetwork(m) if m.is_linear())
    }

    pub fn summary(&self) -> String {
        match self {
            Net::Sequential(m) => m.summary(),
            Net::MemoryNetwork(m) => {
                let c = m.config();
                let mut s = format!(
                    "End-to-end memory network: {} hops, embedDim {}, memorySize {}, sentenceLen {}, vocabSize {}\n\
                     {:?} tying, position encoding {}, temporal encoding {}, random noise {}\n",
                    c.hops,
                    c.embed_dim,
                    c.memory_size,
                    c.sentence_len,
                    c.vocab_size,
                    c.weight_tying,
                    c.position_encoding,
                    c.temporal_encoding,
                    c.random_noise
                );
                for (name, v) in m.trainer().params().iter() {
                    s.push_str(&format!("  {name:<6} {:?}\n", v.dims()));
                }
                s.push_str(&format!("Total parameters: {}\n", m.trainer().param_count()));
                s
            }
        }
    }

    pub fn config_json(&self) -> Result<String> {
        let r = match self {
            Net::Sequential(m) => serde_json::to_string(m.config()),
            Net::MemoryNetwork(m) => serde_json::to_string(m.config()),
        };
        r.map_err(|e| Error::State(format!("config: {e}")))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        match self {
            Net::Sequential(m) => checkpoint::save(m, path),
            Net::MemoryNetwork(m) => checkpoint::save(m, path),
        }
    }

    pub fn load(path: &Path, device: &Device, budget: &Budget) -> Result<Net> {
        match checkpoint::stored_kind(path)?.as_str() {
            MemoryNetwork::KIND => Ok(Net::MemoryNetwork(checkpoint::load_with(path, device, budget)?)),
            _ => Ok(Net::Sequential(checkpoint::load_with(path, device, budget)?)),
        }
    }

    pub fn load_weights(&mut self, path: &Path, prefix: &str) -> Result<()> {
        checkpoint::load_weights(self.trainer_mut(), path, prefix)
    }
}
