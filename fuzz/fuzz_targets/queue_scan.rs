//! The persistent queue's record scanner, over arbitrary (damaged) segment bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loom_sidecar::exporters::persistent_queue::{encode_record, scan, RECORD_HEADER};

// Replay trusts `end` to truncate a damaged segment: it must lie inside the file, on a record
// boundary, and the valid prefix must scan clean to the same counts. Re-encoding the records
// found must give back that prefix byte for byte.
fuzz_target!(|data: &[u8]| {
    let s = scan(data);
    let end = usize::try_from(s.end).expect("end fits");
    assert!(end <= data.len());
    assert_eq!(s.damage.is_none(), end == data.len());
    let prefix = scan(&data[..end]);
    assert_eq!(
        (prefix.end, prefix.records, prefix.spans, prefix.damage),
        (s.end, s.records, s.spans, None)
    );

    let mut off = 0;
    let mut rebuilt = Vec::with_capacity(end);
    for _ in 0..s.records {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().expect("4 bytes")) as usize;
        let payload = &data[off + RECORD_HEADER as usize..off + RECORD_HEADER as usize + len];
        encode_record(payload, &mut rebuilt);
        off += RECORD_HEADER as usize + len;
    }
    assert_eq!(&rebuilt[..], &data[..end]);
});
