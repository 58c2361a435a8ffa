//! Reads struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF programs are written in Rust without CO-RE relocations, so the
//! few kernel struct offsets they need (a thread's id, cgroup, run time and
//! run-queue wait from a `task_struct` pointer) are looked up here at
//! start-up, on the running kernel, and set as a read-only global of the
//! programs before they load (the verifier then knows them as constants).
//! Only what that needs is parsed: the type section's layout and struct
//! members.

use std::collections::HashMap;

use agora_ebpf_common::KernelOffsets;

const MAGIC: u16 = 0xEB9F;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// In bits.
    offset: u32,
}

#[derive(Debug)]
struct Composite {
    members: Vec<Member>,
}

/// The structs and unions of a BTF blob, by name.
pub struct Btf {
    strings: Vec<u8>,
    /// Type id -> composite, for structs and unions.
    composites: HashMap<u32, Composite>,
    /// Type id -> (kind, referenced type) for typedef/const/volatile chains.
    refs: HashMap<u32, (u32, u32)>,
    by_name: HashMap<String, u32>,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| "BTF truncated".to_string())
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or_else(|| "BTF truncated".to_string())
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf, String> {
        let data =
            std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| format!("cannot read the kernel's BTF: {e}"))?;
        Btf::parse(&data)
    }

    pub fn parse(b: &[u8]) -> Result<Btf, String> {
        if u16_at(b, 0)? != MAGIC {
            return Err("not BTF (bad magic)".into());
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types = b.get(hdr_len + type_off..hdr_len + type_off + type_len).ok_or("BTF type section out of range")?;
        let strings = b.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or("BTF string section out of range")?;
        let mut btf = Btf {
            strings: strings.to_vec(),
            composites: HashMap::new(),
            refs: HashMap::new(),
            by_name: HashMap::new(),
        };
        let mut at = 0usize;
        let mut id = 1u32;
        while at < types.len() {
            let name_off = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let size_or_type = u32_at(types, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            match kind {
                1 | 14 | 17 => at += 4,     // INT, VAR, DECL_TAG
                3 => at += 12,              // ARRAY
                6 | 13 => at += 8 * vlen,   // ENUM, FUNC_PROTO
                15 | 19 => at += 12 * vlen, // DATASEC, ENUM64
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = at + 12 * i;
                        let raw = u32_at(types, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(types, m)?,
                            type_id: u32_at(types, m + 4)?,
                            offset: if kind_flag { raw & 0xff_ffff } else { raw },
                        });
                    }
                    at += 12 * vlen;
                    if name_off != 0 {
                        let name = btf.string(name_off)?;
                        // Keep the first definition of a name.
                        btf.by_name.entry(name).or_insert(id);
                    }
                    btf.composites.insert(id, Composite { members });
                }
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => {
                    btf.refs.insert(id, (kind, size_or_type));
                }
                k => return Err(format!("unknown BTF kind {k} at type {id}")),
            }
            id += 1;
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> Result<String, String> {
        let s = self.strings.get(off as usize..).ok_or("BTF string offset out of range")?;
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        Ok(String::from_utf8_lossy(&s[..end]).into_owned())
    }

    /// Byte offset of `member` in struct `name`, searching anonymous nested
    /// structs and unions as C does.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, String> {
        let id = *self.by_name.get(name).ok_or_else(|| format!("struct {name} is not in the kernel's BTF"))?;
        self.find_in(id, member, 0)?.ok_or_else(|| format!("struct {name} has no member {member}"))
    }

    fn find_in(&self, id: u32, member: &str, depth: u32) -> Result<Option<u32>, String> {
        if depth > 8 {
            return Ok(None);
        }
        let Some(c) = self.composites.get(&id) else { return Ok(None) };
        for m in &c.members {
            if m.name_off != 0 {
                if self.string(m.name_off)? == member {
                    return Ok(Some(m.offset / 8));
                }
            } else {
                let inner = self.resolve(m.type_id);
                if let Some(off) = self.find_in(inner, member, depth + 1)? {
                    return Ok(Some(m.offset / 8 + off));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the type itself.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.refs.get(&id) {
                Some(&(kind, next)) if kind != 2 => id = next,
                _ => break,
            }
        }
        id
    }

    /// The offsets the eBPF programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, String> {
        // Run-queue delay needs CONFIG_SCHED_INFO; without it the rest
        // still works and the latency figures stay empty.
        let run_delay = self
            .member_offset("task_struct", "sched_info")
            .and_then(|info| Ok(info + self.member_offset("sched_info", "run_delay")?))
            .ok();
        Ok(KernelOffsets {
            task_pid: self.member_offset("task_struct", "pid")?,
            task_cgroups: self.member_offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp: self.member_offset("css_set", "dfl_cgrp")?,
            cgroup_kn: self.member_offset("cgroup", "kn")?,
            kernfs_node_id: self.member_offset("kernfs_node", "id")?,
            task_sum_exec_runtime: self.member_offset("task_struct", "se")?
                + self.member_offset("sched_entity", "sum_exec_runtime")?,
            task_prev_sum_exec_runtime: self.member_offset("task_struct", "se")?
                + self.member_offset("sched_entity", "prev_sum_exec_runtime")?,
            task_run_delay: run_delay.unwrap_or(0),
            has_run_delay: run_delay.is_some() as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_offsets_on_this_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("SKIPPED: no /sys/kernel/btf/vmlinux");
            return;
        };
        let o = btf.kernel_offsets().unwrap();
        // kernfs_node.id follows a few fields; pid is well inside task_struct.
        assert!(o.task_pid > 0 && o.task_cgroups > o.task_pid, "{o:?}");
        assert!(o.task_sum_exec_runtime > 0, "{o:?}");
        assert!(o.task_prev_sum_exec_runtime > o.task_sum_exec_runtime, "{o:?}");
        // /proc/<pid>/schedstat has a run delay exactly when sched_info is in.
        let schedstat = std::fs::read_to_string("/proc/self/schedstat").unwrap_or_default();
        assert_eq!(o.has_run_delay == 1, schedstat.split_whitespace().count() == 3, "{o:?}");
        assert!(btf.member_offset("task_struct", "no_such_member").is_err());
        assert!(btf.member_offset("no_such_struct", "x").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, really not").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
