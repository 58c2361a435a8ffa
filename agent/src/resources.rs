//! What the agent offers: detected cpus, memory, disk, a ports range and
//! egress bandwidth (`egress_mbps`, when a network interface reports its
//! speed), overridden per name by `--resources` (Mesos's text syntax or a
//! JSON array).

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

/// The speed in Mbit/s of the fastest physical network interface that is up,
/// from `<sys_class_net>/<if>/{device,operstate,speed}`. Virtual interfaces
/// (loopback, bridges, veths) have no `device`; a speed of -1 is unknown.
pub fn link_speed_mbps(sys_class_net: &Path) -> Option<f64> {
    let mut best: Option<f64> = None;
    for e in std::fs::read_dir(sys_class_net).ok()?.flatten() {
        let dir = e.path();
        if !dir.join("device").exists() {
            continue;
        }
        let up = std::fs::read_to_string(dir.join("operstate")).is_ok_and(|s| s.trim() == "up");
        let speed = std::fs::read_to_string(dir.join("speed")).ok().and_then(|s| s.trim().parse::<f64>().ok());
        if let (true, Some(mbps)) = (up, speed.filter(|&v| v > 0.0)) {
            best = Some(best.map_or(mbps, |b: f64| b.max(mbps)));
        }
    }
    best
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
    if let Some(mbps) = link_speed_mbps(Path::new("/sys/class/net")) {
        r.add_one(Resource::scalar(crate::usage::EGRESS_RESOURCE, mbps));
    }
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
    fn link_speed_of_the_fastest_physical_interface_that_is_up() {
        let root = std::env::temp_dir().join(format!("agora-net-{}", std::process::id()));
        let nic = |name: &str, physical: bool, state: &str, speed: &str| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            if physical {
                std::fs::create_dir_all(d.join("device")).unwrap();
            }
            std::fs::write(d.join("operstate"), format!("{state}\n")).unwrap();
            std::fs::write(d.join("speed"), format!("{speed}\n")).unwrap();
        };
        nic("lo", false, "unknown", "-1");
        assert_eq!(link_speed_mbps(&root), None);
        nic("eth0", true, "up", "-1");
        assert_eq!(link_speed_mbps(&root), None, "unknown speed");
        nic("eth1", true, "up", "10000");
        nic("eth2", true, "down", "25000");
        nic("veth0", false, "up", "100000");
        assert_eq!(link_speed_mbps(&root), Some(10000.0));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn detects_something() {
        let r = detect(Path::new("/"));
        assert!(r.cpus() >= 1.0);
        assert!(r.mem_mb() > 0.0);
        assert_eq!(r.ports().count(), 1001);
    }
}
