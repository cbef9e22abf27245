//! Hardware profiles: the embedded set from `hardware-profiles/` plus any file a user gives.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub backend: String,
    pub memory_gb: f64,
    pub memory_bandwidth_gbs: f64,
    pub fp16_tflops: f64,
    pub int8_tops: Option<f64>,
    pub interconnect: Option<String>,
    #[serde(default)]
    pub interconnect_gbs: f64,
    pub power_w: f64,
    pub cloud_usd_per_hour: Option<f64>,
    pub purchase_usd: Option<f64>,
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
}

macro_rules! embedded {
    ($($id:literal),* $(,)?) => {
        &[$(($id, include_str!(concat!("../../hardware-profiles/", $id, ".toml")))),*]
    };
}

static EMBEDDED: &[(&str, &str)] = embedded!(
    "h200",
    "h100-sxm",
    "h100-pcie",
    "a100-80gb-sxm",
    "a100-40gb",
    "l40s",
    "l4",
    "a10g",
    "t4",
    "v100-32gb",
    "rtx-6000-ada",
    "rtx-5090",
    "rtx-4090",
    "rtx-3090",
    "rtx-3060-12gb",
    "mi300x",
    "apple-m1-max-32c",
    "apple-m2-10c",
    "apple-m2-ultra-76c",
    "apple-m3-max-40c",
    "apple-m4-pro-20c",
    "apple-m4-max-40c",
    "apple-m4-10c",
    "cpu-epyc-9654-12ch",
    "cpu-xeon-8480-8ch",
    "rx-7900-xtx",
);

/// Parse and check a profile; errors name the file and the field.
pub fn parse(text: &str, origin: &str) -> Result<HardwareProfile> {
    let p: HardwareProfile = toml::from_str(text)
        .map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim().replace('\n', " ")))?;
    for (field, value) in [
        ("memory_gb", p.memory_gb),
        ("memory_bandwidth_gbs", p.memory_bandwidth_gbs),
        ("fp16_tflops", p.fp16_tflops),
        ("power_w", p.power_w),
    ] {
        if !(value.is_finite() && value > 0.0) {
            bail!("{origin}: field {field} must be a positive number, got {value}");
        }
    }
    if !["gpu", "apple", "cpu"].contains(&p.kind.as_str()) {
        bail!(
            "{origin}: field kind must be gpu, apple or cpu, got {:?}",
            p.kind
        );
    }
    if !["cuda", "rocm", "metal", "cpu", "vulkan"].contains(&p.backend.as_str()) {
        bail!(
            "{origin}: field backend must be cuda, rocm, metal, vulkan or cpu, got {:?}",
            p.backend
        );
    }
    if p.cloud_usd_per_hour.is_none() && p.purchase_usd.is_none() {
        bail!("{origin}: give cloud_usd_per_hour or purchase_usd (needed for cost)");
    }
    Ok(p)
}

pub fn embedded() -> Vec<HardwareProfile> {
    EMBEDDED
        .iter()
        .map(|(id, text)| {
            parse(text, &format!("hardware-profiles/{id}.toml"))
                .expect("embedded profiles are valid")
        })
        .collect()
}

pub fn ids() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(id, _)| *id).collect()
}

impl HardwareProfile {
    /// Device memory in bytes. Vendors' memory "GB" are binary: a 24 GB RTX 4090 has 24 GiB
    /// (nvidia-smi: 24564 MiB), an 80 GB H100 80 GiB, a 192 GB M2 Ultra 192 GiB.
    ///
    /// On Apple's unified memory the GPU may wire only Metal's recommendedMaxWorkingSetSize:
    /// about 75% of the memory on machines up to 64 GB (11.84 of 16 GB reported on an M3,
    /// 47-49 of 64 GB on an M2 Max, llama.cpp issue #1870), about 84% above (107.5 of 128 GiB,
    /// antirez/ds4 #909); `sudo sysctl iogpu.wired_limit_mb` raises it (then edit the profile).
    pub fn memory_bytes(&self) -> f64 {
        let bytes = self.memory_gb * 1024.0 * 1024.0 * 1024.0;
        if self.kind == "apple" {
            bytes * if self.memory_gb <= 64.0 { 0.75 } else { 0.84 }
        } else {
            bytes
        }
    }
}

/// An embedded id, or a path to a profile file.
pub fn resolve(spec: &str) -> Result<HardwareProfile> {
    if let Some((_, text)) = EMBEDDED.iter().find(|(id, _)| *id == spec) {
        return parse(text, &format!("hardware-profiles/{spec}.toml"));
    }
    let path = Path::new(spec);
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        return parse(&text, &path.display().to_string());
    }
    bail!(
        "unknown hardware {spec:?}; known: {} (or give a profile file)",
        ids().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_profile_has_sources_for_its_figures() {
        let all = embedded();
        assert!(all.len() >= 24);
        for p in &all {
            for field in [
                "memory_gb",
                "memory_bandwidth_gbs",
                "fp16_tflops",
                "power_w",
            ] {
                assert!(
                    p.sources.contains_key(field),
                    "{}: no source for {field}",
                    p.id
                );
            }
            if p.cloud_usd_per_hour.is_some() {
                assert!(p.sources.contains_key("cloud_usd_per_hour"), "{}", p.id);
            }
            if p.purchase_usd.is_some() {
                assert!(p.sources.contains_key("purchase_usd"), "{}", p.id);
            }
        }
    }

    #[test]
    fn malformed_profiles_name_file_and_field() {
        let err = parse(
            "id = \"x\"\nname = \"x\"\nkind = \"gpu\"\nbackend = \"cuda\"\nmemory_gb = \"lots\"\n",
            "my.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("my.toml") && err.contains("memory_gb"),
            "{err}"
        );
        let err = resolve("rtx-9999").unwrap_err().to_string();
        assert!(
            err.contains("rtx-9999") && err.contains("rtx-4090"),
            "{err}"
        );
    }
}
