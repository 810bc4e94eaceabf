//! The lease socket: a Unix stream socket where processes report their leases, one request
//! per line (`lease_protocol`). Every connection is served by its own task; requests go to the
//! agent loop one at a time over a bounded channel (a flooding client waits, others do not
//! notice), and the loop's reply goes back on the same connection.
//!
//! Who is reporting comes from the socket (SO_PEERCRED), never from the message: a `pid=` in
//! a request is honoured only if the sender could send that process a signal (kill(2) rules).
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::lease_protocol::{MAX_LINE, ProtocolError, Request, parse};

pub const DEFAULT_PATH: &str = "/run/pausewatch/lease.sock";
/// Connections served at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 256;

/// The sending process, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// 0 when the sender is in a pid namespace this one cannot see.
    pub pid: u32,
    pub uid: u32,
}

/// One request waiting for the agent.
#[derive(Debug)]
pub struct Message {
    pub peer: Peer,
    pub request: Result<Request, ProtocolError>,
    pub reply: oneshot::Sender<String>,
}

/// Counters shared with the connection tasks.
#[derive(Debug, Default)]
pub struct SocketStats {
    pub connections: AtomicU64,
    pub refused_connections: AtomicU64,
    clients: AtomicUsize,
}

pub struct LeaseSocket {
    pub path: PathBuf,
    pub rx: mpsc::Receiver<Message>,
    pub stats: Arc<SocketStats>,
    task: JoinHandle<()>,
}

impl Drop for LeaseSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "{path} is in use by another running pausewatch (pass --lease-socket to use another path)"
    )]
    InUse { path: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Resolves `--lease-socket-group`: a group name or a numeric gid.
pub fn resolve_group(g: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(g).context("group name contains a NUL byte")?;
    // SAFETY: getgrnam reads a NUL-terminated name and returns a pointer into static storage
    // (or NULL), which is read at once, before any other call could overwrite it.
    let gr = unsafe { libc::getgrnam(name.as_ptr()) };
    if gr.is_null() {
        bail!("no group named '{g}' (check /etc/group)");
    }
    // SAFETY: non-null result of getgrnam points to a valid struct group.
    Ok(unsafe { (*gr).gr_gid })
}

/// Binds the socket at `path` with `mode` and, if given, group `gid`, and starts serving.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<LeaseSocket, BindError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the lease socket directory {}", dir.display()))?;
    }
    if path.exists() {
        // A socket file left by a pausewatch that died is removed; a live one is not stolen.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse {
                path: path.display().to_string(),
            });
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale lease socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the lease socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    let (tx, rx) = mpsc::channel(64);
    let stats = Arc::new(SocketStats::default());
    let task = tokio::spawn(accept_loop(listener, tx, stats.clone()));
    Ok(LeaseSocket {
        path: path.to_path_buf(),
        rx,
        stats,
        task,
    })
}

async fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Message>, stats: Arc<SocketStats>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // EMFILE and friends: wait a little instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if stats.clients.load(Ordering::Relaxed) >= MAX_CLIENTS {
            stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            let _ = stream
                .write_all(
                    format!("error too many clients ({MAX_CLIENTS}): try again later\n").as_bytes(),
                )
                .await;
            continue;
        }
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.clients.fetch_add(1, Ordering::Relaxed);
        let (tx, stats) = (tx.clone(), stats.clone());
        tokio::spawn(async move {
            let _ = serve(stream, tx).await;
            stats.clients.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Discards input up to and including the next newline (the rest of an oversized request).
async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R) -> std::io::Result<()> {
    loop {
        let buf = rd.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                rd.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                rd.consume(n);
            }
        }
    }
}

async fn serve(stream: UnixStream, tx: mpsc::Sender<Message>) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        uid: cred.uid(),
    };
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(MAX_LINE, rd);
    loop {
        let mut line = Vec::with_capacity(128);
        let n = (&mut rd)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let request = if line.last() == Some(&b'\n') {
            line.pop();
            parse(&line)
        } else if line.len() >= MAX_LINE {
            skip_line(&mut rd).await?;
            Err(ProtocolError::TooLong)
        } else {
            // The last request of a connection, without its newline.
            parse(&line)
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx
            .send(Message {
                peer,
                request,
                reply: reply_tx,
            })
            .await
            .is_err()
        {
            return Ok(()); // the agent is shutting down
        }
        let mut reply = reply_rx
            .await
            .unwrap_or_else(|_| "error pausewatch is shutting down".to_string());
        reply.push('\n');
        wr.write_all(reply.as_bytes()).await?;
    }
}

/// The process a request is about, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub pid: u32,
    pub tid: Option<u32>,
    pub comm: String,
}

/// kill(2)'s rule (kernel/signal.c kill_ok_by_cred, v6.18): the sender's uid matches the
/// target's real or saved uid, or the sender has CAP_KILL.
pub fn may_signal(
    sender_uid: u32,
    sender_cap_kill: bool,
    target_ruid: u32,
    target_suid: u32,
) -> bool {
    sender_cap_kill || sender_uid == target_ruid || sender_uid == target_suid
}

const CAP_KILL: u32 = 5;

/// Checks who a request is about: the sender itself, or (with `pid=`) a process the sender may
/// signal; a `tid=` must be a thread of that process.
pub fn authenticate(peer: Peer, req: &Request) -> Result<Subject, String> {
    if peer.pid == 0 {
        return Err(
            "cannot identify the sending process (it is in a pid namespace pausewatch cannot see)"
                .to_string(),
        );
    }
    let pid = req.pid.unwrap_or(peer.pid);
    let status = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .map_err(|_| format!("no process with pid {pid}"))?;
    if status.tgid as u32 != pid {
        return Err(format!(
            "{pid} is a thread of process {}: send pid={} tid={pid}",
            status.tgid, status.tgid
        ));
    }
    if pid != peer.pid {
        let sender = procfs::process::Process::new(peer.pid as i32)
            .and_then(|p| p.status())
            .map_err(|_| "the sending process exited".to_string())?;
        let cap_kill = sender.capeff & (1 << CAP_KILL) != 0;
        if !may_signal(peer.uid, cap_kill, status.ruid, status.suid) {
            return Err(format!(
                "pid {} (uid {}) may not report for pid {pid}: that needs the permission kill(2) would (same uid, or CAP_KILL)",
                peer.pid, peer.uid
            ));
        }
    }
    if let Some(tid) = req.tid
        && !Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
    {
        return Err(format!("tid {tid} is not a thread of process {pid}"));
    }
    Ok(Subject {
        pid,
        tid: req.tid,
        comm: status.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_rule() {
        assert!(may_signal(1000, false, 1000, 1000));
        assert!(may_signal(1000, false, 0, 1000), "saved uid");
        assert!(!may_signal(1000, false, 0, 0));
        assert!(may_signal(1000, true, 0, 0), "CAP_KILL");
    }

    fn req(pid: Option<u32>, tid: Option<u32>) -> Request {
        Request {
            verb: crate::model::lease::Verb::Act,
            name: "x".into(),
            ttl_ns: None,
            token: None,
            expires_wall_ns: None,
            tid,
            pid,
        }
    }

    #[test]
    fn subjects() {
        let me = std::process::id();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let peer = Peer { pid: me, uid };
        assert_eq!(authenticate(peer, &req(None, None)).unwrap().pid, me);
        assert_eq!(
            authenticate(peer, &req(None, Some(me))).unwrap().tid,
            Some(me)
        );
        // pid 1 runs as root: another uid may not report for it.
        let stranger = Peer {
            pid: me,
            uid: 4_000_000,
        };
        match authenticate(stranger, &req(Some(1), None)) {
            // As root the test process has CAP_KILL, and CAP_KILL may.
            Ok(s) => assert!(uid == 0 && s.pid == 1),
            Err(e) => assert!(e.contains("may not report"), "{e}"),
        }
        let e = authenticate(peer, &req(None, Some(1))).unwrap_err();
        assert!(e.contains("not a thread"), "{e}");
        let e = authenticate(peer, &req(Some(i32::MAX as u32), None)).unwrap_err();
        assert!(e.contains("no process"), "{e}");
        let e = authenticate(Peer { pid: 0, uid }, &req(None, None)).unwrap_err();
        assert!(e.contains("pid namespace"), "{e}");
    }
}
