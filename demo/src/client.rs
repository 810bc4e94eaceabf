//! A client that holds a lease and writes under it, exactly as DDIA figure 9-4 warns against:
//! renew, check the lease is still valid on the local clock, do some work, write. A pause
//! between the check and the write lets the lease expire unnoticed.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::net::{LineConn, Pausewatch, gettid};

#[derive(clap::Args)]
pub struct Args {
    /// Name printed on every line.
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    lock: String,
    #[arg(long)]
    storage: String,
    /// pausewatch's lease socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long, default_value = "leader")]
    lease: String,
    /// Work between the validity check and the write.
    #[arg(long, value_parser = crate::duration, default_value = "1s")]
    work: Duration,
    /// Successful writes before releasing the lease and exiting.
    #[arg(long, default_value_t = 3)]
    writes: u32,
    /// Report the lease's deadline as the lock service's wall-clock expiry.
    #[arg(long)]
    wall_clock: bool,
}

/// A `granted TOKEN TTL_NS EXPIRES_WALL_NS` reply.
fn granted(reply: &str) -> Option<(u64, u64, i64)> {
    let w: Vec<&str> = reply.split_whitespace().collect();
    match w.as_slice() {
        ["granted", t, ttl, wall] => Some((t.parse().ok()?, ttl.parse().ok()?, wall.parse().ok()?)),
        _ => None,
    }
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let mut lock = LineConn::connect(&a.lock)?;
    let mut storage = LineConn::connect(&a.storage)?;
    let mut pw = Pausewatch::connect(a.socket.as_deref())?;
    let tid = gettid();
    let deadline_words = |ttl: u64, wall: i64| {
        if a.wall_clock {
            format!("expires_wall_ns={wall}")
        } else {
            format!("ttl={ttl}ns")
        }
    };
    let (token, ttl, wall) = loop {
        let r = lock.ask(&format!("acquire {}", a.lease))?;
        if let Some(g) = granted(&r) {
            break g;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut valid_until = Instant::now() + Duration::from_nanos(ttl);
    let r = pw.report(&format!(
        "acquire {} token={token} tid={tid} {}",
        a.lease,
        deadline_words(ttl, wall)
    ))?;
    println!("{}: acquired token={token} pausewatch: {r}", a.id);
    let mut writes = 0;
    loop {
        let r = lock.ask(&format!("renew {} {token}", a.lease))?;
        match granted(&r) {
            Some((_, ttl, wall)) => {
                valid_until = Instant::now() + Duration::from_nanos(ttl);
                pw.report(&format!(
                    "renew {} tid={tid} {}",
                    a.lease,
                    deadline_words(ttl, wall)
                ))?;
            }
            // The lock service refused: a careful client would stop here. This one still
            // believes its last check.
            None => println!("{}: renew refused ({r})", a.id),
        }
        if Instant::now() < valid_until {
            println!("{}: lease valid, working token={token}", a.id);
            std::thread::sleep(a.work);
        }
        let r = pw.report(&format!("act {} token={token} tid={tid}", a.lease))?;
        println!("{}: acting token={token} pausewatch: {r}", a.id);
        let w = storage
            .ask(&format!("write {} {token} from-{}", a.lease, a.id))
            .context("writing to storage")?;
        if w == "ok" {
            writes += 1;
            println!("{}: wrote token={token}", a.id);
        } else if w.starts_with("rejected") {
            println!("{}: write rejected, token {token} is stale ({w})", a.id);
            return Ok(3);
        } else {
            bail!("storage said '{w}'");
        }
        if writes >= a.writes {
            pw.report(&format!("release {} tid={tid}", a.lease))?;
            println!("{}: released", a.id);
            return Ok(0);
        }
    }
}
