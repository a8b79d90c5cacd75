//! What starts a reload: SIGHUP, and with `service.reload.watch` a change of the config file's
//! content that then holds still for `service.reload.debounce`. Both re-read the same file with
//! the same environment expansion (`load::load_file`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{ReloadError, Running};
use crate::config::ReloadConfig;

/// SIGHUP, caught from the moment this exists: SIGHUP's default action ends the process, so
/// the binary installs it before it starts anything or says `ready`.
pub struct Hangup(HangupSignal);

impl Hangup {
    pub fn install() -> Hangup {
        Hangup(hangup())
    }
}

/// Runs until SIGTERM or Ctrl-C, reloading `path` on SIGHUP and on file changes; returns the
/// sidecar for its shutdown. `loaded` is the file's content as read before the running config
/// was loaded from it: any later change reloads. New listeners are reported on stdout as at
/// start (`listening <component> <kind> <addr>`).
pub async fn serve(
    mut running: Running,
    path: PathBuf,
    loaded: Option<Vec<u8>>,
    Hangup(mut hangup): Hangup,
) -> Running {
    let stop = super::wait_for_signal();
    tokio::pin!(stop);
    // Capacity 1: changes seen while a reload runs fold into one more reload.
    let (tx, mut changed) = mpsc::channel::<()>(1);
    let mut watching = start_watch(&running.service().reload, &path, loaded, &tx);
    loop {
        let why = tokio::select! {
            _ = &mut stop => break,
            Some(()) = recv_hangup(&mut hangup) => "SIGHUP",
            Some(()) = changed.recv() => "file changed",
        };
        let loaded = std::fs::read(&path).ok();
        let before: Vec<_> = running.listening.iter().map(|l| l.addr).collect();
        let result = running.reload(crate::load::load_file(&path)).await;
        log(why, &path, &result);
        report_new_listeners(&running, &before);
        let want = &running.service().reload;
        if watching.as_ref().map(|(cfg, _)| cfg) != Some(want).filter(|w| w.watch) {
            if let Some((_, task)) = watching.take() {
                task.abort();
            }
            watching = start_watch(want, &path, loaded, &tx);
        }
    }
    if let Some((_, task)) = watching {
        task.abort();
    }
    running
}

fn log(why: &str, path: &Path, result: &Result<super::Reloaded, ReloadError>) {
    match result {
        Ok(r) if r.changes.is_empty() => {
            tracing::info!(trigger = why, config = %path.display(), "reload: nothing changed");
        }
        Ok(r) => tracing::info!(
            trigger = why,
            config = %path.display(),
            changes = %r.changes.join("; "),
            "reload applied"
        ),
        Err(ReloadError::Invalid(errors)) => {
            tracing::error!(trigger = why, config = %path.display(), "reload failed: invalid configuration; the running one stays");
            for e in &errors.0 {
                tracing::error!("  {e}");
            }
        }
        Err(e) => {
            tracing::error!(trigger = why, config = %path.display(), "reload failed: {e}");
        }
    }
}

fn report_new_listeners(running: &Running, before: &[std::net::SocketAddr]) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for l in running
        .listening
        .iter()
        .filter(|l| !before.contains(&l.addr))
    {
        let _ = writeln!(out, "listening {} {} {}", l.component, l.kind, l.addr);
    }
    let _ = out.flush();
}

#[cfg(unix)]
type HangupSignal = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type HangupSignal = Option<()>;

#[cfg(unix)]
fn hangup() -> HangupSignal {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot watch SIGHUP ({e}): reload by signal is off");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup() -> HangupSignal {
    None
}

async fn recv_hangup(h: &mut HangupSignal) -> Option<()> {
    #[cfg(unix)]
    if let Some(s) = h {
        return s.recv().await;
    }
    let _ = h;
    std::future::pending().await
}

fn start_watch(
    cfg: &ReloadConfig,
    path: &Path,
    loaded: Option<Vec<u8>>,
    tx: &mpsc::Sender<()>,
) -> Option<(ReloadConfig, tokio::task::JoinHandle<()>)> {
    cfg.watch.then(|| {
        let task = tokio::spawn(watch_file(
            path.to_owned(),
            loaded,
            cfg.debounce,
            tx.clone(),
        ));
        (cfg.clone(), task)
    })
}

/// Polls the file's content (a Kubernetes ConfigMap volume swaps a symlink, which inotify on
/// the file itself would miss) and reports a change once it has held still for `debounce`.
async fn watch_file(
    path: PathBuf,
    mut seen: Option<Vec<u8>>,
    debounce: Duration,
    tx: mpsc::Sender<()>,
) {
    let poll = (debounce / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut pending: Option<(Option<Vec<u8>>, tokio::time::Instant)> = None;
    loop {
        tokio::time::sleep(poll).await;
        let now = tokio::fs::read(&path).await.ok();
        if now == seen {
            pending = None;
            continue;
        }
        match &pending {
            Some((content, since)) if *content == now => {
                if since.elapsed() >= debounce {
                    seen = now;
                    pending = None;
                    // Full: a reload is already due and reads the newest file.
                    let _ = tx.try_send(());
                }
            }
            _ => pending = Some((now, tokio::time::Instant::now())),
        }
    }
}
