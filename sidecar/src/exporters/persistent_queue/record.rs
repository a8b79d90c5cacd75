//! The on-disk format: segment files of `[length][CRC32][payload]` records, and their scan.

use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::model::{span_count, TraceRequest};

/// Bytes before each payload: length and CRC32, both little-endian u32.
pub const RECORD_HEADER: u64 = 8;

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Encodes one record: header + payload.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What a scan of one segment found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of valid records from the start of the file.
    pub end: u64,
    pub records: u64,
    pub spans: u64,
    /// Why the scan stopped before the end of the file: `truncated`, `checksum` or `decode`.
    pub damage: Option<&'static str>,
}

/// Validates a segment's records in order; stops at the first damaged one.
pub fn scan(data: &[u8]) -> Scan {
    let mut s = Scan::default();
    let mut off = 0usize;
    while off < data.len() {
        let rest = &data[off..];
        if rest.len() < RECORD_HEADER as usize {
            s.damage = Some("truncated");
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(payload) = rest.get(RECORD_HEADER as usize..RECORD_HEADER as usize + len) else {
            s.damage = Some("truncated");
            break;
        };
        if crc32fast::hash(payload) != crc {
            s.damage = Some("checksum");
            break;
        }
        match TraceRequest::decode(payload) {
            Ok(req) => s.spans += span_count(&req.resource_spans) as u64,
            Err(_) => {
                s.damage = Some("decode");
                break;
            }
        }
        off += RECORD_HEADER as usize + len;
        s.records += 1;
        s.end = off as u64;
    }
    s
}
