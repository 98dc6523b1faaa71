//! Memory budgets.
//!
//! When an allocation fails, Rust aborts the process: no `Result`, no unwinding, and for an addon the whole
//! Node process goes with it. So every allocation whose size a user chose (parameters, optimizer state, the
//! activations of a call, generated tokens) is estimated first and checked against a budget; over it, the call
//! fails with a [`Error::Memory`] that names what asked for the memory, the estimate and the budget.
//!
//! The budget defaults to half of the machine's memory (its cgroup limit, when one is set, on Linux); the
//! binding replaces that with what Node reports, `ENGRAM_MAX_MEMORY` or a per-model option. It bounds each
//! model on its own: its parameters, optimizer state and the working memory of its largest call.

use std::sync::Mutex;

use crate::error::{Error, Result};

/// A number of bytes and where it came from, for messages (`ENGRAM_MAX_MEMORY`, `maxMemory`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: String,
}

static GLOBAL: Mutex<Option<Budget>> = Mutex::new(None);

impl Budget {
    pub fn new(bytes: u64, source: impl Into<String>) -> Self {
        Budget { bytes, source: source.into() }
    }

    /// The process-wide budget: the last [`Budget::set_global`], or half of the machine's memory.
    pub fn global() -> Budget {
        let g = GLOBAL.lock().unwrap_or_else(|p| p.into_inner());
        g.clone().unwrap_or_else(Budget::machine_default)
    }

    /// Replaces the process-wide budget (`None`: back to the machine's default).
    pub fn set_global(budget: Option<Budget>) {
        *GLOBAL.lock().unwrap_or_else(|p| p.into_inner()) = budget;
    }

    /// Half of the physical memory (or of the cgroup limit), as far as the core can tell; unlimited elsewhere.
    pub fn machine_default() -> Budget {
        match machine_memory() {
            Some(total) => Budget::new(total / 2, format!("half of this machine's {}", format_bytes(total))),
            None => Budget::new(u64::MAX, "no limit: the machine's memory is unknown"),
        }
    }

    /// Fails when `need` bytes do not fit. `what` gets the estimate, formatted, and says who needs it
    /// (`lstm (layer 0: hiddenSize 100000) needs 149 GiB of parameters`); the message goes on with the budget.
    pub fn check(&self, need: u64, what: impl FnOnce(&str) -> String) -> Result<()> {
        if need <= self.bytes {
            return Ok(());
        }
        Err(Error::Memory(format!(
            "{}; the memory budget is {} ({}). Lower the sizes, or raise the budget with ENGRAM_MAX_MEMORY or \
             the maxMemory option if the machine has the memory",
            what(&format_bytes(need)),
            format_bytes(self.bytes),
            self.source
        )))
    }
}

/// `bytes` in binary units with three significant digits: `900 B`, `1.50 KiB`, `12.0 GiB`, `1.49 TiB`.
pub fn format_bytes(bytes: u64) -> String {
    if bytes == u64::MAX {
        return "more than 16 EiB".into();
    }
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else if v >= 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Parses a size as users write it: `8GiB`, `512 MiB`, `2GB` (powers of 1024 either way), `1e9` (bytes).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    // The unit is the trailing letters, so that an exponent (`1e9`) stays with the number.
    let split = s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len();
    let (num, unit) = s.split_at(split);
    let v: f64 = num.trim().parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    let bytes = v * scale as f64;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Total physical memory, or the cgroup's limit when it is lower (Linux only; elsewhere the binding says).
fn machine_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: u64 = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
        let total = kib * 1024;
        let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
        Some(cgroup.map_or(total, |c| c.min(total)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Bytes, added and multiplied without overflow: a size past `u64::MAX` stays there and fails every budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl Bytes {
    /// `elems` values of `size` bytes each.
    pub fn of(elems: u64, size: usize) -> Bytes {
        Bytes(elems.saturating_mul(size as u64))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::ops::Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(o.0))
    }
}

impl std::ops::AddAssign for Bytes {
    fn add_assign(&mut self, o: Bytes) {
        *self = *self + o;
    }
}

impl std::ops::Mul<u64> for Bytes {
    type Output = Bytes;
    fn mul(self, k: u64) -> Bytes {
        Bytes(self.0.saturating_mul(k))
    }
}

/// The number of elements of `shape`, saturating.
pub fn elems(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64))
}

/// A zero-filled buffer of `n` values, or an error instead of the abort a failed `vec![0; n]` would be.
pub fn zeros<T: Clone + Default>(what: &str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::Memory(format!(
            "{what}: cannot allocate {} (the system refused it)",
            format_bytes((n as u64).saturating_mul(std::mem::size_of::<T>() as u64))
        ))
    })?;
    v.resize(n, T::default());
    Ok(v)
}

/// A copy of `src`, allocated fallibly.
pub fn copy_of<T: Clone>(what: &str, src: &[T]) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(src.len()).map_err(|_| {
        Error::Memory(format!(
            "{what}: cannot allocate {} (the system refused it)",
            format_bytes((src.len() as u64).saturating_mul(std::mem::size_of::<T>() as u64))
        ))
    })?;
    v.extend_from_slice(src);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_in_binary_units_with_three_digits() {
        assert_eq!(format_bytes(900), "900 B");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(12 << 30), "12.0 GiB");
        assert_eq!(format_bytes(1_638_400_000_000), "1.49 TiB");
        assert_eq!(format_bytes(u64::MAX), "more than 16 EiB");
    }

    #[test]
    fn sizes_parse_as_users_write_them() {
        assert_eq!(parse_bytes("8GiB"), Some(8 << 30));
        assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("2gb"), Some(2 << 30));
        assert_eq!(parse_bytes("1e9"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5 GiB"), Some(3 << 29));
        for bad in ["", "lots", "-1GiB", "0", "NaN", "8 parsecs", "1e30 TiB"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_need_over_the_budget_names_both() {
        let b = Budget::new(12 << 30, "ENGRAM_MAX_MEMORY");
        assert!(b.check(12 << 30, |_| unreachable!()).is_ok());
        let e = b.check(13 << 30, |n| format!("lstm (layer 0) needs {n}")).unwrap_err().to_string();
        assert!(
            e.starts_with("lstm (layer 0) needs 13.0 GiB; the memory budget is 12.0 GiB (ENGRAM_MAX_MEMORY)"),
            "{e}"
        );
    }

    #[test]
    fn byte_counts_saturate_instead_of_wrapping() {
        assert_eq!(elems(&[1 << 40, 1 << 20, 1 << 10]), u64::MAX);
        assert_eq!(Bytes::of(u64::MAX / 2, 4).get(), u64::MAX);
        assert_eq!((Bytes(u64::MAX) + Bytes(1)).get(), u64::MAX);
    }

    #[test]
    fn a_refused_allocation_is_an_error() {
        let e = zeros::<f32>("test buffer", usize::MAX / 2).unwrap_err();
        assert!(e.to_string().contains("test buffer: cannot allocate"), "{e}");
    }
}
