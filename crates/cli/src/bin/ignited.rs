//! `ignited`: reconciles VMs from a manifest directory or a Git repository (see
//! `ignite_runtime::reconcile` and `ignite_runtime::gitops`).
//! Thin: parse arguments, take the daemon lock, loop over reconcile passes.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[path = "../daemon/api.rs"]
mod api;
#[path = "../errors.rs"]
mod errors;
use ignite_runtime::reconcile::{read_manifest_dir, reconcile};
use ignite_runtime::{load_configuration, CreateOptions};
use ignite_store::Store;

/// ignited: declarative VMs from a manifest directory.
#[derive(Debug, Parser)]
#[command(name = "ignited", version)]
struct Cli {
    /// State directory
    #[arg(long, global = true, env = "IGNITE_ROOT", default_value = ignite_store::DEFAULT_ROOT)]
    root: PathBuf,
    /// Ignite configuration path
    #[arg(long, global = true, env = "IGNITE_CONFIG")]
    ignite_config: Option<PathBuf>,
    /// Log level (trace, debug, info, warn, error)
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Unix socket of the HTTP/JSON API and /metrics ("none" to disable)
    #[arg(long, global = true, env = "IGNITED_SOCKET", default_value = "/run/ignite/ignited.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Reconcile the VMs described in a manifest directory, continuously
    Daemon {
        /// Directory of VM manifests (YAML/JSON, v1alpha2-4, several per file with ---)
        #[arg(long, default_value = "/etc/ignite/manifests")]
        manifest_dir: PathBuf,
        /// Seconds between full resyncs (changes in the directory are picked up at once, by inotify)
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// Run one pass and exit
        #[arg(long)]
        once: bool,
    },
    /// Reconcile the VMs described in a Git repository, writing their status back
    Gitops {
        /// Repository URL (file://, ssh, https; credentials as git has them)
        repo: String,
        /// Branch to follow
        #[arg(long, default_value = "main")]
        branch: String,
        /// Directory of the manifests inside the repository
        #[arg(long, default_value = ".")]
        path: PathBuf,
        /// Seconds between polls of the repository
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// Do not write VM status back to the repository
        #[arg(long)]
        read_only: bool,
        /// This host's name when several hosts follow the repository: manifests annotated
        /// ignite.weave.works/host run only on the host of that name
        #[arg(long)]
        host: Option<String>,
        /// Run one pass and exit
        #[arg(long)]
        once: bool,
    },
}

/// A cheap fingerprint of the directory: names, sizes, mtimes.
fn fingerprint(dir: &std::path::Path) -> Vec<(String, u64, i128)> {
    let mut v: Vec<(String, u64, i128)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128;
                    Some((e.file_name().to_string_lossy().into_owned(), m.len(), t))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// An inotify watch on the manifest directory (None where the directory does not exist yet
/// or inotify is unavailable: then the loop polls every 500 ms).
fn watch_dir(dir: &std::path::Path) -> Option<std::os::fd::OwnedFd> {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
    let flags = WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::ATTRIB
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF;
    inotify::add_watch(&fd, dir, flags).ok()?;
    Some(fd)
}

/// Waits up to `max` for a change in the watched directory; changes are batched for 50 ms
/// (an editor's save, a `git checkout` of many files) so that one pass sees them all.
fn wait_for_change(watch: Option<&std::os::fd::OwnedFd>, max: Duration) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let Some(fd) = watch else {
        std::thread::sleep(max);
        return;
    };
    let ts = Timespec { tv_sec: max.as_secs() as i64, tv_nsec: i64::from(max.subsec_nanos()) };
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    if poll(&mut fds, Some(&ts)).unwrap_or(0) > 0 {
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 4096];
        while rustix::io::read(fd, &mut buf).map(|n| n > 0).unwrap_or(false) {}
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": "));
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let store = Store::open(&cli.root)?;
    // One daemon per state root.
    let lock_path = cli.root.join("ignited.lock");
    let lock = std::fs::File::options().create(true).truncate(false).write(true).open(&lock_path)?;
    if lock.try_lock().is_err() {
        anyhow::bail!("another ignited is running on {} (lock {})", cli.root.display(), lock_path.display());
    }
    let config = load_configuration(cli.ignite_config.as_deref())?;
    let metrics = Arc::new(api::Metrics::default());
    if cli.socket.as_os_str() != "none" {
        api::serve(cli.socket.clone(), store.clone(), config.clone(), metrics.clone())
            .map_err(|e| anyhow::anyhow!("cannot serve the API on {}: {e}", cli.socket.display()))?;
        tracing::info!("API and metrics on {}", cli.socket.display());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    match cli.command {
        Cmd::Daemon { manifest_dir, interval, once } => {
            tracing::info!("reconciling {} every {interval}s and on change", manifest_dir.display());
            let mut last_fp = None;
            let mut last_pass = Instant::now() - Duration::from_secs(interval);
            let mut watch = None;
            while !stop.load(Ordering::Relaxed) {
                if !manifest_dir.is_dir() {
                    watch = None; // removed (or not there yet): watch it again once it exists
                } else if watch.is_none() {
                    watch = watch_dir(&manifest_dir);
                }
                let fp = fingerprint(&manifest_dir);
                if Some(&fp) != last_fp.as_ref() || last_pass.elapsed() >= Duration::from_secs(interval) {
                    pass(&store, &config, read_manifest_dir(&manifest_dir), &metrics);
                    last_fp = Some(fp);
                    last_pass = Instant::now();
                    if once {
                        break;
                    }
                }
                wait_for_change(watch.as_ref(), Duration::from_millis(500));
            }
        }
        Cmd::Gitops { repo, branch, path, interval, read_only, host, once } => {
            let source = ignite_runtime::gitops::Source::new(&cli.root, &repo, &branch, &path);
            tracing::info!("following {repo} ({branch}, {}) every {interval}s", path.display());
            let mut backoff = Duration::from_secs(interval);
            let mut last_good = false;
            while !stop.load(Ordering::Relaxed) {
                let mut wait = Duration::from_secs(interval);
                match source.sync() {
                    Ok(head) => {
                        tracing::debug!("at {head}");
                        last_good = true;
                        backoff = Duration::from_secs(interval);
                    }
                    Err(e) => {
                        metrics.sync_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("cannot update from {repo}: {e}; keeping the last good state");
                        backoff = (backoff * 2).min(Duration::from_secs(300));
                        wait = backoff;
                    }
                }
                if last_good {
                    let manifests = ignite_runtime::reconcile::for_host(source.read_manifests(), host.as_deref());
                    pass(&store, &config, manifests, &metrics);
                    if !read_only {
                        match source.write_back(&store, host.as_deref()) {
                            Ok((pushed, retries)) => {
                                metrics.push_retries.fetch_add(u64::from(retries), Ordering::Relaxed);
                                if pushed {
                                    tracing::info!("pushed VM status to {repo}");
                                }
                            }
                            Err(e) => {
                                metrics.push_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::error!("cannot write status back: {e}");
                            }
                        }
                    }
                }
                if once {
                    break;
                }
                let until = Instant::now() + wait;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    Ok(())
}

/// One reconcile pass over what the manifests ask for, logged.
fn pass(
    store: &Store,
    config: &ignite_runtime::LoadedConfig,
    manifests: ignite_runtime::reconcile::Manifests,
    metrics: &api::Metrics,
) {
    let started = Instant::now();
    // What killed processes (a previous daemon included) left behind, first.
    match ignite_runtime::recover::recover_all(store) {
        Ok(r) => {
            for n in &r.networks {
                tracing::info!("VM {n}: released the network a killed start left");
            }
        }
        Err(e) => tracing::warn!("recovery: {e}"),
    }
    let mut report = reconcile(store, config, &manifests, &CreateOptions::default());
    // Problems with the manifests themselves first, then those of applying them.
    let mut errors = manifests.errors.clone();
    errors.append(&mut report.errors);
    report.errors = errors;
    let errors = &report.errors;
    for (what, list) in [
        ("created", &report.created),
        ("started", &report.started),
        ("stopped", &report.stopped),
        ("restarted with its disk", &report.restarted),
        ("removed", &report.removed),
    ] {
        for n in list {
            tracing::info!("VM {n}: {what}");
        }
    }
    for p in &report.pending {
        tracing::warn!("pending: {p}");
    }
    for e in errors {
        tracing::error!("{e}");
    }
    tracing::debug!("pass over {} VMs in {:.0} ms", manifests.desired.len(), started.elapsed().as_secs_f64() * 1000.0);
    metrics.last_pass_micros.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    metrics.record(&report);
}
