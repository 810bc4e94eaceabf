//! pausewatch-demo: the lease bug of *Designing Data-Intensive Applications* (figures 9-4 and
//! 9-5) with real processes, and the scenarios that make it happen under pausewatch.
mod client;
mod lock;
mod net;
mod scenario;
mod storage;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pausewatch-demo", about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration such as 2s or 500ms ({e})"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Grants leases with increasing fencing tokens (TCP, one request per line).
    LockService {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, value_parser = duration, default_value = "2s")]
        ttl: Duration,
    },
    /// Accepts writes only with the newest fencing token it has seen; reports refusals to
    /// pausewatch.
    Storage {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// pausewatch's lease socket.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Holds a lease and writes under it: renew, check the lease is valid, work, write.
    Client(client::Args),
    /// Runs a whole scenario under pausewatch and prints what pausewatch reported.
    Scenario(scenario::Args),
}

/// Names this process (its comm, as pausewatch reports it).
fn set_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

fn main() {
    let r = match Cli::parse().cmd {
        Cmd::LockService { listen, ttl } => {
            set_name("lock-service");
            lock::serve(&listen, ttl)
        }
        Cmd::Storage { listen, socket } => {
            set_name("storage");
            storage::serve(&listen, socket)
        }
        Cmd::Client(a) => {
            set_name(&format!("client-{}", a.id));
            client::run(a)
        }
        Cmd::Scenario(a) => {
            set_name("scenario");
            scenario::run(a)
        }
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("pausewatch-demo: {e:#}");
            std::process::exit(1);
        }
    }
}
