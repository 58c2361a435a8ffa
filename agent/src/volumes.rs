//! Checkpointed resources and persistent volumes.
//!
//! The master decides dynamic reservations and persistent volumes and sends
//! the agent the whole set of them after each change
//! (`CheckpointResources`). The agent keeps that set in
//! `<work_dir>/meta/resources.json` (written atomically), so that a
//! restarted agent offers the same reservations and volumes again, and
//! keeps each volume's data in `<work_dir>/volumes/roles/<role>/<id>`,
//! outside every sandbox. A task that uses a volume sees that directory at
//! `<sandbox>/<container_path>`, bind-mounted in a mount namespace of the
//! task's own, so the mount goes away with the task and removing a sandbox
//! never reaches into a volume.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use agora_proto::resources::{valid_role, valid_volume_id, Resource, Resources, Volume};

fn checkpoint_path(work_dir: &Path) -> PathBuf {
    work_dir.join("meta").join("resources.json")
}

/// The checkpointed resources an earlier run of the agent kept (none on a
/// fresh work directory).
pub fn load(work_dir: &Path) -> Result<Resources, String> {
    let path = checkpoint_path(work_dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{} is corrupt: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Resources::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Keeps `resources` for the next run: write a temporary file, fsync it,
/// rename it over the old one, fsync the directory.
pub fn store(work_dir: &Path, resources: &Resources) -> Result<(), String> {
    let path = checkpoint_path(work_dir);
    let dir = path.parent().expect("has a parent");
    let io = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(resources).expect("resources serialize")).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    fs::rename(&tmp, &path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Where a volume's data lives. The role's components become directories
/// (`eng/dev` nests under `eng`); a role or id that is not a safe path
/// component (`.`, `..`, empty) has no directory.
pub fn volume_dir(work_dir: &Path, resource: &Resource) -> Option<PathBuf> {
    let v = resource.volume.as_ref()?;
    if !valid_volume_id(&v.id) || !valid_role(resource.role()) {
        return None;
    }
    let mut dir = work_dir.join("volumes").join("roles");
    for c in resource.role().split('/') {
        dir.push(c);
    }
    Some(dir.join(&v.id))
}

/// The volumes among `resources`, with their directories.
pub fn volumes<'a>(work_dir: &'a Path, resources: &'a Resources) -> impl Iterator<Item = (&'a Volume, PathBuf)> + 'a {
    resources.iter().filter_map(move |r| Some((r.volume.as_deref()?, volume_dir(work_dir, r)?)))
}

/// Creates the directories of the volumes in `now` and removes those of
/// volumes in `before` that are no longer there, except directories in
/// `in_use` (a task still mounts them; the master does not destroy such a
/// volume, so this only guards against a disagreement). Returns what it
/// could not do.
pub fn sync(work_dir: &Path, before: &Resources, now: &Resources, in_use: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    let kept: Vec<PathBuf> = volumes(work_dir, now).map(|(_, d)| d).collect();
    for d in &kept {
        if let Err(e) = fs::create_dir_all(d) {
            problems.push(format!("cannot create volume directory {}: {e}", d.display()));
        }
    }
    for (v, d) in volumes(work_dir, before) {
        if kept.contains(&d) {
            continue;
        }
        if in_use.contains(&d) {
            problems.push(format!("volume {} is destroyed but a running task uses it; its data is kept", v.id));
            continue;
        }
        match fs::remove_dir_all(&d) {
            Ok(()) => tracing::info!(volume = %v.id, dir = %d.display(), "volume destroyed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("cannot remove volume directory {}: {e}", d.display())),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(role: &str, id: &str) -> Resource {
        let mut r = Resource::scalar("disk", 64.0).reserved_to(role, agora_proto::resources::ReservationKind::Dynamic);
        r.volume =
            Some(Box::new(Volume { id: id.into(), principal: None, container_path: "data".into(), read_only: false }));
        r
    }

    #[test]
    fn checkpoint_round_trips_and_volumes_come_and_go() {
        let dir = std::env::temp_dir().join(format!("agora-volumes-test-{}", std::process::id()));
        assert_eq!(load(&dir).unwrap(), Resources::new());
        let a = Resources::from_vec(vec![volume("eng/dev", "v1"), volume("ops", "v2")]);
        store(&dir, &a).unwrap();
        assert_eq!(load(&dir).unwrap(), a);

        assert!(sync(&dir, &Resources::new(), &a, &[]).is_empty());
        let v1 = dir.join("volumes/roles/eng/dev/v1");
        let v2 = dir.join("volumes/roles/ops/v2");
        assert!(v1.is_dir() && v2.is_dir());
        fs::write(v1.join("f"), b"x").unwrap();
        // v1 goes while "in use": kept, and said so; v2 goes.
        let none = Resources::new();
        let problems = sync(&dir, &a, &none, std::slice::from_ref(&v1));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(v1.join("f").exists() && !v2.exists());
        assert!(sync(&dir, &a, &none, &[]).is_empty());
        assert!(!v1.exists());

        fs::write(checkpoint_path(&dir), b"[{").unwrap();
        assert!(load(&dir).unwrap_err().contains("corrupt"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsafe_ids_have_no_directory() {
        assert_eq!(volume_dir(Path::new("/w"), &volume("eng", "../x")), None);
        assert_eq!(volume_dir(Path::new("/w"), &volume("eng/../..", "x")), None);
    }
}
