//! Start-up: scans every segment, cuts damaged tails off, and rebuilds the queue's state.

use std::fs::OpenOptions;
use std::path::Path;

use super::record::{scan, segment_path};
use super::{OpenError, SegMeta, State};
use crate::metrics::{Metric, Metrics};

/// Scans every segment in `dir`, truncating damaged tails (counted), removing empty files.
pub(super) fn replay(id: &str, dir: &Path, metrics: &Metrics) -> Result<State, OpenError> {
    let mut state = State::default();
    let entries = std::fs::read_dir(dir).map_err(|source| OpenError::Folder {
        dir: dir.to_owned(),
        source,
    })?;
    let mut seqs: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".wal")?.parse::<u64>().ok()
        })
        .collect();
    seqs.sort_unstable();
    let (mut records, mut spans) = (0u64, 0u64);
    for seq in seqs {
        let path = segment_path(dir, seq);
        let data = std::fs::read(&path).map_err(|source| OpenError::Segment {
            file: path.clone(),
            source,
        })?;
        let s = scan(&data);
        if let Some(reason) = s.damage {
            metrics.count(
                Metric::ExporterQueueCorruptRecords,
                &[("exporter", id), ("reason", reason)],
                1,
            );
            tracing::warn!(
                exporter = %id,
                file = %path.display(),
                reason,
                valid_bytes = s.end,
                skipped_bytes = data.len() as u64 - s.end,
                "damaged record in the persistent queue: skipped it and the rest of its segment"
            );
            // Cut the damage off, so it is neither read nor reported again.
            let cut = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(s.end).and_then(|_| f.sync_all()));
            if let Err(e) = cut {
                tracing::warn!(exporter = %id, file = %path.display(), "cannot truncate the damaged segment: {e}");
            }
        }
        if s.records == 0 {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        records += s.records;
        spans += s.spans;
        state.bytes += s.end;
        state.pending += s.records;
        state.segs.insert(
            seq,
            SegMeta {
                end: s.end,
                records: s.records,
                spans: s.spans,
                sealed: true,
                ..SegMeta::default()
            },
        );
    }
    if records > 0 {
        metrics.count(
            Metric::ExporterQueueReplayedRecords,
            &[("exporter", id)],
            records,
        );
        tracing::info!(exporter = %id, records, spans, bytes = state.bytes, "replaying the persistent queue");
    }
    Ok(state)
}
