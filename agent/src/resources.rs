//! What the agent offers: detected cpus, memory, disk and a ports range,
//! overridden per name by `--resources` (Mesos's text syntax or a JSON array).

use std::path::Path;

use agora_proto::resources::{Fixed, Ranges, Resource, Resources, Value};

pub const DEFAULT_PORTS: (u64, u64) = (31000, 32000);

fn meminfo_total_mb() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn disk_total_mb(dir: &Path) -> Option<f64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs with a valid path and an out-pointer to a zeroed struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_blocks as f64 * s.f_frsize as f64 / (1024.0 * 1024.0))
}

/// Leaves room for the system, as Mesos does: memory minus 1 GiB (or half,
/// on small machines), disk minus 5 GiB (or half).
fn after_reserve(total: f64, reserve: f64) -> f64 {
    if total >= 2.0 * reserve {
        total - reserve
    } else {
        total / 2.0
    }
}

pub fn detect(work_dir: &Path) -> Resources {
    let mut r = Resources::new();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    r.add_one(Resource::scalar("cpus", cpus));
    if let Some(mem) = meminfo_total_mb() {
        r.add_one(Resource::scalar("mem", after_reserve(mem, 1024.0).floor()));
    }
    if let Some(disk) = disk_total_mb(work_dir) {
        r.add_one(Resource::scalar("disk", after_reserve(disk, 5120.0).floor()));
    }
    r.add_one(Resource::ranges("ports", Ranges::single(DEFAULT_PORTS.0, DEFAULT_PORTS.1)));
    r
}

/// Parses `--resources`: Mesos's text syntax, or a JSON array of Resource
/// objects.
pub fn parse_flag(text: &str) -> Result<Resources, String> {
    let t = text.trim();
    if t.starts_with('[') && serde_json::from_str::<serde_json::Value>(t).is_ok() {
        return serde_json::from_str::<Resources>(t).map_err(|e| format!("invalid --resources JSON: {e}"));
    }
    Resources::parse(t).map_err(|e| e.to_string())
}

/// Detected resources with every name given in `flag` replaced by the flag's.
pub fn merge(detected: &Resources, flag: &Resources) -> Resources {
    let mut out = detected.filter(|r| !flag.iter().any(|f| f.name == r.name));
    out.add(flag);
    out
}

/// Checks what a whole agent may not offer.
pub fn validate(r: &Resources) -> Result<(), String> {
    if r.cpus() <= 0.0 {
        return Err("the agent has no cpus to offer".into());
    }
    for res in r.iter() {
        if res.name == "gpus" {
            if let Value::Scalar(Fixed(v)) = res.value {
                if v % 1000 != 0 {
                    return Err("gpus must be a whole number".into());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_overrides_detected_by_name() {
        let detected = Resources::parse("cpus:8;mem:1000;disk:5000;ports:[31000-32000]").unwrap();
        let flag = parse_flag("cpus:2;cpus(eng):1;ports:[4000-4010]").unwrap();
        let m = merge(&detected, &flag);
        assert_eq!(m.cpus(), 3.0);
        assert_eq!(m.mem_mb(), 1000.0);
        assert_eq!(m.ports().count(), 11);
    }

    #[test]
    fn json_flag() {
        let r = parse_flag(r#"[{"name":"cpus","type":"SCALAR","scalar":{"value":2}}]"#).unwrap();
        assert_eq!(r.cpus(), 2.0);
        assert!(parse_flag("cpus:x").is_err());
        assert!(validate(&Resources::parse("cpus:1;gpus:1.5").unwrap()).is_err());
    }

    #[test]
    fn detects_something() {
        let r = detect(Path::new("/"));
        assert!(r.cpus() >= 1.0);
        assert!(r.mem_mb() > 0.0);
        assert_eq!(r.ports().count(), 1001);
    }
}
