//! The registry: the small durable state the master must not lose across
//! restarts: the set of admitted agents (so that, after a restart,
//! reconciliation can tell "still coming back" from "unknown") with their
//! dynamic reservations and persistent volumes, and the role weights and
//! quota operators set.
//!
//! The master core emits [`RegistryState`] snapshots; the shell stores them
//! through a [`Registry`]. The standalone master keeps it in a local file,
//! written atomically (write a temporary file, fsync it, rename it over the
//! old one, fsync the directory).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use agora_proto::resources::Resources;
use serde::{Deserialize, Serialize};

use crate::allocator::{Quantities, Quota};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAgent {
    pub id: String,
    pub hostname: String,
    /// Its dynamic reservations and persistent volumes.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
}

/// A role's weight, as an operator set it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryWeight {
    pub role: String,
    pub weight: f64,
}

/// A role's quota guarantees and limits, by resource name (cpus, mem in
/// MB, disk in MB, gpus).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryQuota {
    pub role: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub guarantees: BTreeMap<String, f64>,
    #[serde(default)]
    pub limits: BTreeMap<String, f64>,
}

impl RegistryQuota {
    pub fn new(role: &str, q: &Quota) -> RegistryQuota {
        let named = |a: &Quantities| a.named().map(|(k, v)| (k.to_string(), v)).collect();
        RegistryQuota { role: role.to_string(), guarantees: named(&q.guarantees), limits: named(&q.limits) }
    }

    /// The quota; unknown names and bad values are left out.
    pub fn quota(&self) -> Quota {
        let amounts = |named: &BTreeMap<String, f64>| {
            let mut l = Quantities::default();
            for (i, k) in crate::allocator::SHARE_KINDS.iter().enumerate() {
                if let Some(&v) = named.get(*k).filter(|v| v.is_finite() && **v >= 0.0) {
                    l.0[i] = Some((v * 1000.0).round() as i64);
                }
            }
            l
        };
        Quota { guarantees: amounts(&self.guarantees), limits: amounts(&self.limits) }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryState {
    #[serde(default)]
    pub agents: Vec<RegistryAgent>,
    #[serde(default)]
    pub weights: Vec<RegistryWeight>,
    #[serde(default)]
    pub quota: Vec<RegistryQuota>,
}

/// Where the registry lives.
pub trait Registry {
    fn load(&self) -> anyhow::Result<RegistryState>;
    fn store(&self, state: &RegistryState) -> anyhow::Result<()>;
}

/// A registry in one JSON file.
#[derive(Clone, Debug)]
pub struct FileRegistry {
    path: PathBuf,
}

impl FileRegistry {
    pub fn new(path: impl Into<PathBuf>) -> FileRegistry {
        FileRegistry { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Registry for FileRegistry {
    fn load(&self) -> anyhow::Result<RegistryState> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("registry {} is corrupt: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RegistryState::default()),
            Err(e) => Err(anyhow::anyhow!("cannot read registry {}: {e}", self.path.display())),
        }
    }

    fn store(&self, state: &RegistryState) -> anyhow::Result<()> {
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(state)?)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("agora-registry-test-{}", std::process::id()));
        let r = FileRegistry::new(dir.join("registry.json"));
        assert_eq!(r.load().unwrap(), RegistryState::default());
        let s = RegistryState {
            agents: vec![RegistryAgent {
                id: "a".into(),
                hostname: "h".into(),
                resources: Resources::parse("cpus(eng, ops):1.5").unwrap().checkpointed(),
            }],
            weights: vec![RegistryWeight { role: "eng/dev".into(), weight: 2.5 }],
            quota: vec![RegistryQuota::new(
                "eng",
                &Quota {
                    guarantees: Quantities([Some(1000), None, None, None]),
                    limits: Quantities([Some(2500), Some(1_024_000), None, None]),
                },
            )],
        };
        assert_eq!(s.quota[0].limits, [("cpus".to_string(), 2.5), ("mem".to_string(), 1024.0)].into());
        assert_eq!(s.quota[0].guarantees, [("cpus".to_string(), 1.0)].into());
        assert_eq!(s.quota[0].quota().limits, Quantities([Some(2500), Some(1_024_000), None, None]));
        assert_eq!(s.quota[0].quota().guarantees, Quantities([Some(1000), None, None, None]));
        r.store(&s).unwrap();
        assert_eq!(r.load().unwrap(), s);
        fs::write(r.path(), b"{not json").unwrap();
        assert!(r.load().unwrap_err().to_string().contains("corrupt"));
        fs::remove_dir_all(dir).unwrap();
    }
}
