//! `pausewatch lease VERB NAME ...`: one request to a running pausewatch, its reply on stdout.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    cli::LeaseArgs,
    source::lease_protocol::{ProtocolError, Request, parse, valid_name},
};

pub fn run(a: LeaseArgs) -> anyhow::Result<()> {
    // The lease belongs to whoever ran this command (a script), unless told otherwise: this
    // process exits at once and could not hold anything.
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() } as u32;
    if !valid_name(&a.name) {
        bail!("{}", ProtocolError::BadName(a.name));
    }
    let req = Request {
        verb: a.verb.into(),
        name: a.name,
        ttl_ns: a
            .ttl
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        token: a.token,
        expires_wall_ns: a.expires_wall_ns,
        tid: a.tid,
        pid: Some(a.pid.unwrap_or(parent)),
    };
    let line = req.to_line();
    // Refuse here what the agent would refuse, with the same words.
    parse(line.trim_end().as_bytes()).map_err(|e| anyhow!("{e}"))?;
    let mut s = UnixStream::connect(&a.socket).map_err(|e| {
        anyhow!(
            "cannot reach pausewatch at {}: {e} (is it running, and is this its --lease-socket?)",
            a.socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .context("setting a read timeout")?;
    s.write_all(line.as_bytes())
        .with_context(|| format!("sending to {}", a.socket.display()))?;
    let mut reply = String::new();
    BufReader::new(&s)
        .read_line(&mut reply)
        .with_context(|| format!("waiting for the reply from {}", a.socket.display()))?;
    let reply = reply.trim_end();
    match reply.strip_prefix("error ") {
        Some(e) => bail!("{e}"),
        None if reply.starts_with("ok") => {
            println!("{reply}");
            Ok(())
        }
        None => bail!("unexpected reply from pausewatch: '{reply}'"),
    }
}
