//! Line-per-request TCP plumbing and the pausewatch lease socket client.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{Context as _, bail};

/// Serves `handle(line) -> reply` on every connection, one thread per connection. Prints
/// "listening ADDR" first, so whoever started it knows where.
pub fn serve_lines<F>(listen: &str, handle: F) -> anyhow::Result<i32>
where
    F: Fn(&str) -> String + Send + Sync + 'static,
{
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    println!("listening {}", l.local_addr()?);
    let handle = std::sync::Arc::new(handle);
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let handle = handle.clone();
        std::thread::spawn(move || {
            let Ok(mut w) = conn.try_clone() else { return };
            for line in BufReader::new(conn).lines() {
                let Ok(line) = line else { return };
                let reply = handle(line.trim());
                if writeln!(w, "{reply}").is_err() {
                    return;
                }
            }
        });
    }
    Ok(0)
}

/// One connection, one request at a time.
pub struct LineConn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl LineConn {
    pub fn connect(addr: &str) -> anyhow::Result<Self> {
        let w = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        Ok(Self {
            r: BufReader::new(w.try_clone()?),
            w,
        })
    }

    pub fn ask(&mut self, req: &str) -> anyhow::Result<String> {
        writeln!(self.w, "{req}")?;
        let mut s = String::new();
        if self.r.read_line(&mut s)? == 0 {
            bail!("connection closed while asking '{req}'");
        }
        Ok(s.trim().to_string())
    }
}

/// pausewatch's lease socket (docs/lease-protocol.md); absent = not reporting.
pub struct Pausewatch(Option<(BufReader<UnixStream>, UnixStream)>);

impl Pausewatch {
    pub fn connect(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(p) = path else { return Ok(Self(None)) };
        let s = UnixStream::connect(p)
            .with_context(|| format!("connecting to pausewatch at {}", p.display()))?;
        Ok(Self(Some((BufReader::new(s.try_clone()?), s))))
    }

    /// Sends one request; pausewatch's reply is returned (an `error ...` reply is not fatal:
    /// the application goes on, as a real one would).
    pub fn report(&mut self, req: &str) -> anyhow::Result<String> {
        let Some((r, w)) = &mut self.0 else {
            return Ok(String::new());
        };
        writeln!(w, "{req}")?;
        let mut s = String::new();
        r.read_line(&mut s)?;
        Ok(s.trim().to_string())
    }
}

pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

pub fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
