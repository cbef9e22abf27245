//! Run-time choice of the instruction set for the hot loops. Every SIMD path gives the same bytes
//! as the scalar reference; the choice only changes speed.

use std::sync::OnceLock;

/// The name of an instruction set (what `--isa` and `QUANTFIT_ISA` take).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IsaKind {
    Scalar,
    Avx2,
    Avx512,
    Neon,
}

/// An instruction set this machine can run: a capability, not a name. Only `Isa::new` (which
/// checks the CPU) and the two sets that run anywhere make one, so a safe function that takes
/// an `Isa` cannot be made to run an instruction the CPU lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa(IsaKind);

impl Isa {
    pub const SCALAR: Isa = Isa(IsaKind::Scalar);
    /// The portable lane kernels (NEON's shape), plain Rust that runs on any CPU.
    pub const PORTABLE: Isa = Isa(IsaKind::Neon);

    /// The capability, when this machine has it.
    pub fn new(kind: IsaKind) -> Option<Isa> {
        kind.is_supported().then_some(Isa(kind))
    }

    pub fn kind(self) -> IsaKind {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// A supported set by name (None for an unknown name or one this CPU lacks).
    pub fn from_name(name: &str) -> Option<Isa> {
        IsaKind::from_name(name).and_then(Isa::new)
    }

    /// Every instruction set this machine supports, scalar first.
    pub fn available() -> Vec<Isa> {
        [
            IsaKind::Scalar,
            IsaKind::Avx2,
            IsaKind::Avx512,
            IsaKind::Neon,
        ]
        .into_iter()
        .filter_map(Isa::new)
        .collect()
    }

    /// The fastest supported set, or the one named by `QUANTFIT_ISA` (for benchmarks and tests).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            if let Ok(name) = std::env::var("QUANTFIT_ISA") {
                match Isa::from_name(&name) {
                    Some(isa) => return isa,
                    None => eprintln!(
                        "warning: QUANTFIT_ISA={name} is not supported here; using the best available"
                    ),
                }
            }
            *Isa::available().last().unwrap_or(&Isa::SCALAR)
        })
    }
}

impl IsaKind {
    pub fn name(self) -> &'static str {
        match self {
            IsaKind::Scalar => "scalar",
            IsaKind::Avx2 => "avx2",
            IsaKind::Avx512 => "avx512",
            IsaKind::Neon => "neon",
        }
    }

    pub fn from_name(name: &str) -> Option<IsaKind> {
        match name.to_ascii_lowercase().as_str() {
            "scalar" => Some(IsaKind::Scalar),
            "avx2" => Some(IsaKind::Avx2),
            "avx512" => Some(IsaKind::Avx512),
            "neon" => Some(IsaKind::Neon),
            _ => None,
        }
    }

    /// Whether this machine can run the given instruction set.
    pub fn is_supported(self) -> bool {
        match self {
            IsaKind::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            IsaKind::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a set this CPU runs becomes an `Isa`; names of the others give none.
    #[test]
    fn a_capability_only_for_what_the_cpu_runs() {
        for kind in [
            IsaKind::Scalar,
            IsaKind::Avx2,
            IsaKind::Avx512,
            IsaKind::Neon,
        ] {
            assert_eq!(Isa::new(kind).is_some(), kind.is_supported(), "{kind:?}");
            assert_eq!(
                Isa::from_name(kind.name()).is_some(),
                kind.is_supported(),
                "{kind:?}"
            );
        }
        assert!(Isa::available().iter().all(|i| i.kind().is_supported()));
        assert_eq!(Isa::available()[0], Isa::SCALAR);
        assert!(Isa::best().kind().is_supported());
    }
}
