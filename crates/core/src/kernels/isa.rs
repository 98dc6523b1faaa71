//! Which instruction set the hand-written kernels run in, chosen once per process at run time: prebuilt
//! binaries target the baseline of their architecture (x86-64 without AVX, aarch64 with NEON), and the kernels
//! carry variants compiled for wider vectors that are picked when the CPU has them.
//!
//! `ENGRAM_ISA` can lower the choice (never raise it past what the CPU has): `avx2` on an AVX-512 machine runs
//! the AVX2 variants, so both paths can be tested on one machine; `baseline` runs what the binary was compiled
//! for. The GEMM library (`gemm`) that candle and the kernels call for large products makes its own choice from
//! the CPU and does not read the variable.

use std::sync::OnceLock;

/// An instruction set the kernels have variants for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// What the binary was compiled for: SSE2 on x86-64, plain scalar code elsewhere.
    Baseline,
    /// x86-64 with AVX2 and FMA: 8 floats a vector.
    Avx2,
    /// x86-64 with AVX-512 F, BW, DQ and VL (plus AVX2 and FMA): 16 floats a vector.
    Avx512,
    /// aarch64's Advanced SIMD (always there on aarch64): 4 floats a vector.
    Neon,
}

impl Isa {
    /// The name `ENGRAM_ISA` takes and reports print: `baseline`, `avx2`, `avx512`, `neon`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "baseline" | "scalar" | "sse2" => Some(Isa::Baseline),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx-512" => Some(Isa::Avx512),
            "neon" => Some(Isa::Neon),
            _ => None,
        }
    }

    /// How wide this set is within its architecture (baseline lowest), for comparing a request with the CPU.
    fn rank(self) -> u8 {
        match self {
            Isa::Baseline => 0,
            Isa::Avx2 | Isa::Neon => 1,
            Isa::Avx512 => 2,
        }
    }
}

/// The choice and how it was made.
#[derive(Clone, Debug)]
pub struct IsaChoice {
    /// What the kernels run.
    pub isa: Isa,
    /// The widest set this CPU supports.
    pub detected: Isa,
    /// `ENGRAM_ISA` as set (None when unset or empty).
    pub requested: Option<String>,
    /// Why the request was not followed as written (an unknown name, a set this CPU lacks), for reports.
    pub note: Option<String>,
}

/// The widest set this CPU supports.
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
                return Isa::Avx512;
            }
            return Isa::Avx2;
        }
        Isa::Baseline
    }
    #[cfg(target_arch = "aarch64")]
    {
        Isa::Neon
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Isa::Baseline
    }
}

/// The choice for a CPU that supports `detected`, given `ENGRAM_ISA`'s value.
pub fn choose(detected: Isa, requested: Option<&str>) -> IsaChoice {
    let requested = requested.map(str::trim).filter(|s| !s.is_empty());
    let mut choice = IsaChoice { isa: detected, detected, requested: requested.map(String::from), note: None };
    let Some(req) = requested else { return choice };
    let supported =
        |i: Isa| i == Isa::Baseline || (i.rank() <= detected.rank() && (i == Isa::Neon) == (detected == Isa::Neon));
    match Isa::parse(req) {
        None => {
            choice.note = Some(format!(
                "ENGRAM_ISA={req:?} is not one of baseline, avx2, avx512, neon: the kernels use {}",
                detected.name()
            ))
        }
        Some(isa) if supported(isa) => choice.isa = isa,
        Some(isa) => {
            choice.note = Some(format!(
                "ENGRAM_ISA={} asks for an instruction set this CPU lacks: the kernels use {}",
                isa.name(),
                detected.name()
            ))
        }
    }
    choice
}

static CHOICE: OnceLock<IsaChoice> = OnceLock::new();

/// The process's choice: the CPU's widest set, lowered by `ENGRAM_ISA` (read once, at the first kernel call).
pub fn isa_choice() -> &'static IsaChoice {
    CHOICE.get_or_init(|| choose(detect(), std::env::var("ENGRAM_ISA").ok().as_deref()))
}

/// The set the kernels run in.
#[inline]
pub fn isa() -> Isa {
    isa_choice().isa
}

/// Whether the AVX2 and FMA variants may run (AVX-512 machines included, unless lowered to the baseline).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    matches!(isa(), Isa::Avx2 | Isa::Avx512)
}

/// Whether the AVX-512 variants may run.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    isa() == Isa::Avx512
}

#[cfg(test)]
mod tests {
    use super::{Isa, choose};

    #[test]
    fn a_request_can_lower_the_choice_but_never_raise_it() {
        assert_eq!(choose(Isa::Avx512, None).isa, Isa::Avx512);
        assert_eq!(choose(Isa::Avx512, Some("")).isa, Isa::Avx512);
        assert_eq!(choose(Isa::Avx512, Some("avx2")).isa, Isa::Avx2);
        assert_eq!(choose(Isa::Avx512, Some(" AVX2 ")).isa, Isa::Avx2);
        assert_eq!(choose(Isa::Avx512, Some("baseline")).isa, Isa::Baseline);
        assert_eq!(choose(Isa::Neon, Some("baseline")).isa, Isa::Baseline);
        assert!(choose(Isa::Avx2, Some("avx2")).note.is_none());

        let raised = choose(Isa::Avx2, Some("avx512"));
        assert_eq!(raised.isa, Isa::Avx2);
        assert!(raised.note.as_deref().is_some_and(|n| n.contains("lacks")), "{raised:?}");
        let other_arch = choose(Isa::Avx512, Some("neon"));
        assert_eq!(other_arch.isa, Isa::Avx512);
        assert!(other_arch.note.is_some());
        assert_eq!(choose(Isa::Neon, Some("avx2")).isa, Isa::Neon);

        let unknown = choose(Isa::Avx2, Some("sse9"));
        assert_eq!(unknown.isa, Isa::Avx2);
        assert!(unknown.note.as_deref().is_some_and(|n| n.contains("\"sse9\"")), "{unknown:?}");
    }
}
