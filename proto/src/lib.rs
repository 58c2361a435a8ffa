//! Agora's wire types, shared by every other crate.
//!
//! - [`resources`]: the resource model and its arithmetic and text syntax.
//! - [`mesos`]: Mesos v1 common types (ids, `TaskInfo`, `TaskStatus`, ...) in
//!   Mesos's JSON shape, also archived with rkyv on the master↔agent wire.
//! - [`scheduler`]: the v1 scheduler API's `Call` and `Event`.
//! - [`wire`]: master↔agent rkyv frames, handshake and bounded decoder.
//! - [`http`]: a sans-IO HTTP/1.1 codec and RecordIO framing.
//!
//! Nothing here performs I/O.

pub mod duration;
pub mod fb;
pub mod http;
pub mod mesos;
pub mod resources;
pub mod scheduler;
pub mod wire;

/// For a receive buffer consumed from the front by moving `*start` rather
/// than the bytes after it (a read of many small messages would otherwise
/// move the rest once per message): drops the consumed front once it is at
/// least as long as what remains, so each byte moves at most once more.
/// Called before bytes are added.
pub(crate) fn compact_front(buf: &mut Vec<u8>, start: &mut usize) {
    if *start > 0 && *start >= buf.len() - *start {
        buf.drain(..*start);
        *start = 0;
    }
}

/// The Mesos API version Agora implements, reported at `/version` so that Mesos
/// clients that parse it as dotted integers (e.g. pymesos) accept it.
pub const MESOS_API_VERSION: &str = "1.11.0";
/// Agora's own version.
pub const AGORA_VERSION: &str = env!("CARGO_PKG_VERSION");
