//! Inverted dropout: in training each value is zeroed with probability `rate` and the rest scaled by
//! 1/(1-rate); outside training it is the identity. Masks come from the model's seeded generator.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{ForwardCtx, check_rate, dropout};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DropoutSpec {
    pub rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Dropout {
    pub rate: f64,
}

impl Dropout {
    pub(crate) fn build(spec: &DropoutSpec) -> Result<Self> {
        check_rate("dropout", "rate", spec.rate)?;
        Ok(Dropout { rate: spec.rate })
    }

    pub(crate) fn forward(&self, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        dropout(x, self.rate, ctx)
    }
}
