//! The master↔agent protocol: rkyv 0.8 frames over TCP.
//!
//! A connection starts with a fixed 16-byte [`Hello`] from each side (agent
//! first), which carries a magic, the protocol version and the largest frame the
//! sender accepts. After that every message is one frame: a little-endian `u32`
//! payload length followed by the rkyv archive of an [`AgentToMaster`] or
//! [`MasterToAgent`]. Bytes from the network are untrusted: the length is bounded
//! before anything is allocated, the payload is copied once into an aligned
//! buffer, validated once with bytecheck ([`Checked`]), and then read in place:
//! a receiver deserializes only the parts of a message it keeps.
//!
//! The [`FrameDecoder`] is sans-IO: feed it bytes, take frames out. Both the
//! master (glommio) and the agent (tokio-uring) drive it from their own loops.

use std::marker::PhantomData;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::mesos::{AgentId, FrameworkId, FrameworkInfo, KillPolicy, TaskId, TaskInfo, TaskState, TaskStatus};
use crate::resources::{Attribute, Resources};

/// Bumped on every incompatible change of the messages below.
/// 2: usage reports.
pub const PROTOCOL_VERSION: u16 = 3;
pub const MAGIC: [u8; 4] = *b"AGRA";
pub const HELLO_LEN: usize = 16;
/// Default bound on one frame's payload.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 << 20;

/// The first 16 bytes each side sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// 0 for a normal hello; non-zero when the sender refuses the connection
    /// (see [`Hello::REFUSED_VERSION`]).
    pub status: u16,
    pub max_frame_bytes: u32,
}

impl Hello {
    pub const OK: u16 = 0;
    pub const REFUSED_VERSION: u16 = 1;

    pub fn new(max_frame_bytes: u32) -> Hello {
        Hello { version: PROTOCOL_VERSION, status: Hello::OK, max_frame_bytes }
    }

    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..12].copy_from_slice(&self.max_frame_bytes.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, FrameError> {
        if b[0..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        Ok(Hello {
            version: u16::from_le_bytes([b[4], b[5]]),
            status: u16::from_le_bytes([b[6], b[7]]),
            max_frame_bytes: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

/// Whether the first bytes of a connection start an agent hello (the master
/// serves agents and HTTP on one port and tells them apart by this).
pub fn is_agent_hello(prefix: &[u8]) -> bool {
    prefix.len() >= 4 && prefix[0..4] == MAGIC
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("connection does not start with the agora protocol magic")]
    BadMagic,
    #[error("protocol version {theirs} is not supported (this side speaks {ours})")]
    Version { theirs: u16, ours: u16 },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("empty frame")]
    Empty,
    #[error("frame failed validation: {0}")]
    Invalid(String),
    #[error("connection closed in the middle of a frame ({0} bytes pending)")]
    Truncated(usize),
}

/// What an agent says about itself when it registers.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct AgentInfo {
    pub hostname: String,
    /// The agent's own HTTP port (sandbox and statistics endpoints).
    pub port: u32,
    pub resources: Resources,
    pub attributes: Vec<Attribute>,
    pub version: String,
}

/// A task the agent is running (or has finished but not yet had acknowledged),
/// reported when it re-registers.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TaskReport {
    pub framework_id: FrameworkId,
    pub task: TaskInfo,
    /// The task's latest state on the agent.
    pub state: TaskState,
}

/// A status update travelling agent → master → framework; `status.uuid` is set
/// and the agent retries it until the framework acknowledges that uuid.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct StatusUpdate {
    pub framework_id: FrameworkId,
    pub status: TaskStatus,
    /// The task's newest state on the agent, which may be ahead of `status`
    /// when older updates are still waiting for their acknowledgement.
    pub latest_state: TaskState,
}

/// A summary of one task's usage, sent by the agent on an interval.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub struct TaskUsage {
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
    /// Cores used over the last sampling interval.
    pub cpus_used: f64,
    pub cpu_time_secs: f64,
    pub mem_bytes: u64,
    pub mem_peak_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub net_rx_bytes_per_sec: f64,
    pub net_tx_bytes_per_sec: f64,
    pub io_bytes_per_sec: f64,
    pub runq_p99_us: u64,
    pub throttled_secs: f64,
    /// 1 when measured by the eBPF programs, 0 from cgroupfs only.
    pub ebpf: u32,
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum AgentToMaster {
    Register {
        info: Box<AgentInfo>,
    },
    Reregister {
        agent_id: AgentId,
        info: Box<AgentInfo>,
        tasks: Vec<TaskReport>,
        frameworks: Vec<FrameworkInfo>,
    },
    StatusUpdate(Box<StatusUpdate>),
    Pong {
        seq: u64,
    },
    /// The agent is shutting down and has killed its tasks.
    Unregister {
        reason: String,
    },
    /// Usage of the agent's running tasks.
    Usage {
        tasks: Vec<TaskUsage>,
    },
}

#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum MasterToAgent {
    Registered {
        agent_id: AgentId,
        master_id: String,
        /// The master pings this often; an agent that hears nothing for
        /// `ping_interval_ms * (max_missed_pings + 1)` reconnects.
        ping_interval_ms: u64,
        max_missed_pings: u32,
    },
    /// Registration refused; the agent logs the message and exits.
    Refused {
        message: String,
    },
    Ping {
        seq: u64,
    },
    /// Boxed, so that the enum (and every ping) stays small.
    RunTask {
        framework: Box<FrameworkInfo>,
        task: Box<TaskInfo>,
    },
    KillTask {
        framework_id: FrameworkId,
        task_id: TaskId,
        kill_policy: Option<KillPolicy>,
    },
    AcknowledgeUpdate {
        framework_id: FrameworkId,
        task_id: TaskId,
        uuid: Vec<u8>,
    },
    /// Kill every task of a framework that has been removed.
    ShutdownFramework {
        framework_id: FrameworkId,
    },
    /// The agent's dynamic reservations and persistent volumes, all of them,
    /// after an operation changed them. The agent keeps them in its work
    /// directory, creates the volumes' directories and removes those of
    /// destroyed volumes.
    CheckpointResources {
        resources: Resources,
    },
}

/// Encodes one message as a complete frame (length prefix included).
pub fn encode<T>(msg: &T) -> Vec<u8>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
    >,
{
    let body = rkyv::to_bytes::<rancor::Error>(msg).expect("serializing into memory cannot fail");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Validates one frame's payload and returns the owned message.
pub fn decode<T>(payload: &AlignedVec) -> Result<T, FrameError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    rkyv::from_bytes::<T, rancor::Error>(payload).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Validates one frame's payload and gives access to the archived message in
/// place, without deserializing.
pub fn access<T>(payload: &AlignedVec) -> Result<&T::Archived, FrameError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T::Archived, rancor::Error>(payload).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Deserializes part of a validated archive into its owned form.
pub fn owned<A, T>(archived: &A) -> Result<T, FrameError>
where
    A: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| FrameError::Invalid(e.to_string()))
}

/// One frame's payload that has passed validation as a `T`. The archived
/// message is then read in place ([`Checked::get`]) as often as needed,
/// without checking it again; a receiver copies out only the parts it keeps.
pub struct Checked<T> {
    /// Validated as a `T::Archived`, and never changed afterwards.
    bytes: AlignedVec,
    _of: PhantomData<fn() -> T>,
}

impl<T> Checked<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
{
    /// Validates a frame's payload, once.
    pub fn new(payload: AlignedVec) -> Result<Checked<T>, FrameError> {
        access::<T>(&payload)?;
        Ok(Checked { bytes: payload, _of: PhantomData })
    }

    /// The archived message, in place.
    pub fn get(&self) -> &T::Archived {
        // SAFETY: `bytes` passed validation as a `T::Archived` in `new` and
        // cannot have changed since: nothing hands out a mutable reference.
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.bytes) }
    }

    /// The whole message, owned.
    pub fn to_owned(&self) -> Result<T, FrameError>
    where
        T::Archived: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    {
        owned(self.get())
    }
}

impl<T> Checked<T>
where
    T: rkyv::Archive
        + for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rancor::Error>,
        >,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
{
    /// A message archived and checked here, as if it had arrived in a frame
    /// (for callers that drive a receiver directly, such as tests).
    pub fn of(msg: &T) -> Checked<T> {
        let bytes = rkyv::to_bytes::<rancor::Error>(msg).expect("serializing into memory cannot fail");
        Checked::new(bytes).expect("a message just archived is valid")
    }
}

impl<T> Clone for Checked<T> {
    fn clone(&self) -> Checked<T> {
        Checked { bytes: self.bytes.clone(), _of: PhantomData }
    }
}

impl<T> std::fmt::Debug for Checked<T>
where
    T: rkyv::Archive,
    T::Archived:
        std::fmt::Debug + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// A frame decoder's buffer larger than this is shrunk once mostly empty.
const SHRINK_ABOVE: usize = 64 << 10;

/// The most room `FrameDecoder::read_buf` hands out at once.
const MAX_READ_ROOM: usize = 64 << 10;

/// Splits a byte stream into frame payloads, bounded by `max_frame_bytes`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Where the bytes not yet decoded start in `buf`: a frame taken moves
    /// this, not the bytes after it, so that a read of many small frames
    /// costs one move of what is left, when more bytes arrive.
    start: usize,
    max_frame_bytes: u32,
    /// Bytes at the end of `buf` handed out by `read_buf` and not yet filled.
    reserved: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: u32) -> FrameDecoder {
        FrameDecoder { buf: Vec::new(), start: 0, max_frame_bytes, reserved: 0 }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.commit(0);
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    fn compact(&mut self) {
        crate::compact_front(&mut self.buf, &mut self.start);
    }

    /// The bytes not yet decoded.
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Room to read into, for a reader that keeps no buffer of its own: at
    /// least `min` bytes, or the rest of a frame whose length has arrived,
    /// up to 64 KiB, so that a large frame takes few reads. The room grows
    /// with what arrives, never with what a frame's length promises. Then
    /// [`FrameDecoder::commit`] says how much of it the read filled.
    pub fn read_buf(&mut self, min: usize) -> &mut [u8] {
        self.commit(0);
        self.compact();
        let rest = match self.pending().get(..4) {
            Some(p) => {
                let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]).min(self.max_frame_bytes) as usize;
                (4 + len).saturating_sub(self.pending().len())
            }
            None => 0,
        };
        let n = rest.min(MAX_READ_ROOM).max(min);
        let at = self.buf.len();
        self.buf.resize(at + n, 0);
        self.reserved = n;
        &mut self.buf[at..]
    }

    /// `n` bytes of the last [`FrameDecoder::read_buf`] were filled.
    pub fn commit(&mut self, n: usize) {
        let unfilled = self.reserved.saturating_sub(n);
        self.buf.truncate(self.buf.len() - unfilled);
        self.reserved = 0;
    }

    /// How many bytes are buffered; never more than one maximal frame plus
    /// what one read returned, because the length is checked first.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start - self.reserved
    }

    /// The next complete frame's payload, copied into an aligned buffer, or
    /// `None` when more bytes are needed. An oversized or empty frame is an
    /// error; the connection should then be closed.
    pub fn next_frame(&mut self) -> Result<Option<AlignedVec>, FrameError> {
        self.commit(0);
        let p = self.pending();
        if p.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge { len, max: self.max_frame_bytes });
        }
        let total = 4 + len as usize;
        if p.len() < total {
            return Ok(None);
        }
        let mut payload = AlignedVec::with_capacity(len as usize);
        payload.extend_from_slice(&p[4..total]);
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        // A connection lives long and most frames are small: the room a large
        // frame needed is given back rather than kept for the connection.
        if self.buf.capacity() > SHRINK_ABOVE && self.buf.len() - self.start <= self.buf.capacity() / 4 {
            self.buf.drain(..self.start);
            self.start = 0;
            self.buf.shrink_to(self.buf.len().max(SHRINK_ABOVE / 4));
        }
        Ok(Some(payload))
    }

    /// Call at end of stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesos::CommandInfo;

    fn sample_task() -> TaskInfo {
        TaskInfo {
            name: "t".into(),
            task_id: TaskId::new("t1"),
            agent_id: AgentId::new("a1"),
            resources: Resources::parse("cpus:0.5;mem:64;ports:[31000-31001]").unwrap(),
            command: Some(CommandInfo::shell("echo hi")),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_through_decoder_in_pieces() {
        let msg = MasterToAgent::RunTask { framework: Box::default(), task: Box::new(sample_task()) };
        let mut bytes = encode(&msg);
        bytes.extend(encode(&MasterToAgent::Ping { seq: 7 }));
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut out = Vec::new();
        for chunk in bytes.chunks(3) {
            d.push(chunk);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(decode::<MasterToAgent>(&f).unwrap());
            }
        }
        d.finish().unwrap();
        assert_eq!(out, vec![msg, MasterToAgent::Ping { seq: 7 }]);
    }

    #[test]
    fn reading_into_the_decoder() {
        let msg = MasterToAgent::RunTask { framework: Box::default(), task: Box::new(sample_task()) };
        let mut bytes = encode(&MasterToAgent::Ping { seq: 3 });
        bytes.extend(encode(&msg));
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut src = &bytes[..];
        let mut out = Vec::new();
        let mut reads = 0;
        while !src.is_empty() {
            let room = d.read_buf(16);
            assert!(room.len() >= 16);
            let n = room.len().min(src.len()).min(40);
            room[..n].copy_from_slice(&src[..n]);
            d.commit(n);
            src = &src[n..];
            reads += 1;
            while let Some(f) = d.next_frame().unwrap() {
                out.push(decode::<MasterToAgent>(&f).unwrap());
            }
        }
        d.finish().unwrap();
        assert_eq!(out, vec![MasterToAgent::Ping { seq: 3 }, msg]);
        assert!(reads > 2, "{reads}");

        // Once a frame's length is in, the room is the rest of the frame.
        let big = encode(&MasterToAgent::RunTask { framework: Box::default(), task: Box::new(sample_task()) });
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        d.push(&big[..4]);
        assert_eq!(d.read_buf(16).len(), big.len() - 4);
        // A room not filled is not data.
        d.commit(0);
        assert_eq!(d.buffered(), 4);
        assert!(matches!(d.finish(), Err(FrameError::Truncated(4))));

        // A length alone does not get its frame's room: a peer that sends
        // the largest length and nothing more costs 64 KiB, not 16 MiB.
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        d.push(&DEFAULT_MAX_FRAME_BYTES.to_le_bytes());
        assert_eq!(d.read_buf(16).len(), MAX_READ_ROOM);
    }

    #[test]
    fn many_small_frames_from_one_read_come_out_whole_and_in_order() {
        let mut bytes = Vec::new();
        for seq in 0..1000 {
            bytes.extend(encode(&MasterToAgent::Ping { seq }));
        }
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut seen = Vec::new();
        // Reads that end mid-frame, with frames taken between them.
        for piece in bytes.chunks(4093) {
            d.read_buf(piece.len())[..piece.len()].copy_from_slice(piece);
            d.commit(piece.len());
            while let Some(f) = d.next_frame().unwrap() {
                let MasterToAgent::Ping { seq } = decode::<MasterToAgent>(&f).unwrap() else { panic!("not a ping") };
                seen.push(seq);
            }
            assert!(d.buffered() < 4093 + 64, "{} bytes buffered", d.buffered());
        }
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        d.finish().unwrap();
        assert!(d.buf.len() < 64, "the decoded bytes were not dropped: {} kept", d.buf.len());
    }

    #[test]
    fn a_large_frame_does_not_keep_its_room() {
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut big = (1u32 << 20).to_le_bytes().to_vec();
        big.resize(4 + (1 << 20), 7);
        d.push(&big);
        let ping = encode(&MasterToAgent::Ping { seq: 1 });
        d.push(&ping[..10]);
        assert_eq!(d.next_frame().unwrap().unwrap().len(), 1 << 20);
        assert!(d.buf.capacity() <= SHRINK_ABOVE, "{} bytes kept", d.buf.capacity());
        d.push(&ping[10..]);
        assert_eq!(decode::<MasterToAgent>(&d.next_frame().unwrap().unwrap()).unwrap(), MasterToAgent::Ping { seq: 1 });
        d.finish().unwrap();
    }

    #[test]
    fn oversized_empty_truncated_and_garbage() {
        let mut d = FrameDecoder::new(1024);
        d.push(&(4096u32).to_le_bytes());
        assert_eq!(d.next_frame().unwrap_err(), FrameError::TooLarge { len: 4096, max: 1024 });

        let mut d = FrameDecoder::new(1024);
        d.push(&0u32.to_le_bytes());
        assert_eq!(d.next_frame().unwrap_err(), FrameError::Empty);

        let mut d = FrameDecoder::new(1024);
        let f = encode(&MasterToAgent::Ping { seq: 1 });
        d.push(&f[..f.len() - 1]);
        assert!(d.next_frame().unwrap().is_none());
        assert!(matches!(d.finish(), Err(FrameError::Truncated(_))));

        // Random payloads never panic; they either fail validation or decode.
        let mut seed = 0x9e3779b97f4a7c15u64;
        for n in 1..300usize {
            let mut payload = AlignedVec::new();
            for _ in 0..n {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                payload.push(seed as u8);
            }
            let _ = decode::<AgentToMaster>(&payload);
        }
    }

    #[test]
    fn corrupted_frame_is_rejected() {
        let f = encode(&AgentToMaster::Register {
            info: Box::new(AgentInfo {
                hostname: "h".into(),
                port: 1,
                resources: Resources::parse("cpus:1").unwrap(),
                attributes: vec![],
                version: "x".into(),
            }),
        });
        // Setting any one byte to 0xff must never panic; where it breaks a
        // pointer, a length or a discriminant, validation must reject it.
        let mut rejected = 0;
        for i in 4..f.len() {
            let mut payload = AlignedVec::new();
            payload.extend_from_slice(&f[4..]);
            payload[i - 4] = 0xff;
            if matches!(decode::<AgentToMaster>(&payload), Err(FrameError::Invalid(_))) {
                rejected += 1;
            }
        }
        assert!(rejected > 0, "no corruption was detected");
        // A payload cut short is rejected too.
        let mut short = AlignedVec::new();
        short.extend_from_slice(&f[4..f.len() - 8]);
        assert!(matches!(decode::<AgentToMaster>(&short), Err(FrameError::Invalid(_))));
    }

    #[test]
    fn checked_once_then_read_in_place() {
        let msg = MasterToAgent::AcknowledgeUpdate {
            framework_id: FrameworkId::new("f1"),
            task_id: TaskId::new("t1"),
            uuid: vec![9; 16],
        };
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        d.push(&encode(&msg));
        let checked = Checked::<MasterToAgent>::new(d.next_frame().unwrap().unwrap()).unwrap();
        let ArchivedMasterToAgent::AcknowledgeUpdate { framework_id, task_id, uuid } = checked.get() else {
            panic!("not an acknowledgement: {checked:?}")
        };
        assert_eq!((framework_id.value.as_str(), task_id.value.as_str(), uuid.as_slice()), ("f1", "t1", &[9; 16][..]));
        // A part copied out, and the whole.
        let id: FrameworkId = owned(framework_id).unwrap();
        assert_eq!(id, FrameworkId::new("f1"));
        assert_eq!(checked.to_owned().unwrap(), msg);
        assert_eq!(Checked::of(&msg).to_owned().unwrap(), msg);

        // What fails validation is never let in.
        let bytes = rkyv::to_bytes::<rancor::Error>(&msg).unwrap();
        let mut short = AlignedVec::new();
        short.extend_from_slice(&bytes[..bytes.len() - 8]);
        assert!(matches!(Checked::<MasterToAgent>::new(short), Err(FrameError::Invalid(_))));
        let mut empty = AlignedVec::new();
        empty.extend_from_slice(&[0xff; 3]);
        assert!(matches!(Checked::<MasterToAgent>::new(empty), Err(FrameError::Invalid(_))));
    }

    #[test]
    fn small_messages_stay_small() {
        // Pings go to every agent every few seconds.
        assert!(
            encode(&MasterToAgent::Ping { seq: 1 }).len() <= 64,
            "{}",
            encode(&MasterToAgent::Ping { seq: 1 }).len()
        );
        assert!(encode(&AgentToMaster::Pong { seq: 1 }).len() <= 64);
    }

    #[test]
    fn hello() {
        let h = Hello::new(1 << 20);
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        assert!(is_agent_hello(&h.encode()));
        assert!(!is_agent_hello(b"GET / HTTP/1.1"));
        assert_eq!(Hello::decode(b"GET / HTTP/1.1\r\n\r\n"[..16].try_into().unwrap()), Err(FrameError::BadMagic));
    }
}
