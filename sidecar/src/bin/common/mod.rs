//! What both bench tools (`loadgen`, `nullbackend`) need: a protobuf walk over field boundaries
//! (neither tool may decode the requests it measures), their Tokio runtime, atomic file writes.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};

/// Reads a protobuf varint at `*pos`.
fn varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf
            .get(*pos)
            .ok_or_else(|| anyhow!("truncated varint at byte {pos}"))?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint longer than 10 bytes at byte {pos}")
}

/// Calls `f(field, start, end)` for every length-delimited field of the message in
/// `buf[start..end]`, skipping scalar fields.
pub fn for_each_len_field(
    buf: &[u8],
    start: usize,
    end: usize,
    mut f: impl FnMut(u64, usize, usize) -> Result<()>,
) -> Result<()> {
    let mut pos = start;
    while pos < end {
        let key = varint(buf, &mut pos)?;
        match key & 7 {
            0 => {
                varint(buf, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?)?;
                let field_end = pos
                    .checked_add(len)
                    .filter(|e| *e <= end)
                    .ok_or_else(|| anyhow!("field {} overruns its message", key >> 3))?;
                f(key >> 3, pos, field_end)?;
                pos = field_end;
            }
            w => bail!("unsupported wire type {w} at byte {pos}"),
        }
    }
    if pos != end {
        bail!("message overruns its end");
    }
    Ok(())
}

/// Calls `f(start, end)` for every span of the `ExportTraceServiceRequest` encoded in `buf`:
/// resource_spans (1) → scope_spans (2) → spans (2).
pub fn for_each_span(buf: &[u8], mut f: impl FnMut(usize, usize) -> Result<()>) -> Result<()> {
    for_each_len_field(buf, 0, buf.len(), |field, s, e| {
        if field != 1 {
            return Ok(());
        }
        for_each_len_field(buf, s, e, |field, s, e| {
            if field != 2 {
                return Ok(());
            }
            for_each_len_field(buf, s, e, |field, s, e| {
                if field == 2 {
                    f(s, e)?;
                }
                Ok(())
            })
        })
    })
}

/// A current-thread runtime for one thread, else a multi-thread one with `threads` workers.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    rt.map_err(|e| anyhow!("cannot start the runtime: {e}"))
}

/// Writes `bytes` to `path` through a temporary file, so a reader never sees half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The process exit status of a tool's `result`: 0, or 1 after printing the error chain.
pub fn exit_code(tool: &str, result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{tool}: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
