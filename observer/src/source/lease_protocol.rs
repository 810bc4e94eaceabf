//! The lease protocol (docs/lease-protocol.md): one request per line, one reply per request.
//!
//! ```text
//! request = verb SP name *(SP key "=" value) LF        ; at most MAX_LINE bytes
//! verb    = "acquire" / "renew" / "release" / "act" / "reject"
//! name    = 1*128 ( ALPHA / DIGIT / "." / "_" / "-" / ":" / "/" / "@" )
//! key     = "ttl" (duration: 10s, 1500ms) / "token" (u64) / "expires_wall_ns" (Unix ns)
//!         / "tid" (a thread of the reporting process) / "pid" (report for another process)
//! reply   = "ok" SP verb SP name [SP detail] LF / "error" SP message LF
//! ```
use thiserror::Error;

use crate::model::lease::Verb;

/// Longest request line accepted, newline included.
pub const MAX_LINE: usize = 1024;
const MAX_NAME: usize = 128;

/// One parsed request, not yet authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub verb: Verb,
    pub name: String,
    pub ttl_ns: Option<u64>,
    pub token: Option<u64>,
    pub expires_wall_ns: Option<i64>,
    pub tid: Option<u32>,
    /// Report for this process instead of the sender (needs the permission kill(2) would).
    pub pid: Option<u32>,
}

impl Request {
    /// The request as a line (what `pausewatch lease` sends).
    pub fn to_line(&self) -> String {
        let mut s = format!("{} {}", self.verb.name(), self.name);
        if let Some(t) = self.ttl_ns {
            s += &format!(" ttl={}ns", t);
        }
        if let Some(t) = self.token {
            s += &format!(" token={t}");
        }
        if let Some(w) = self.expires_wall_ns {
            s += &format!(" expires_wall_ns={w}");
        }
        if let Some(t) = self.tid {
            s += &format!(" tid={t}");
        }
        if let Some(p) = self.pid {
            s += &format!(" pid={p}");
        }
        s.push('\n');
        s
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("empty request: expected 'VERB NAME [key=value ...]'")]
    Empty,
    #[error("unknown verb '{0}': expected acquire, renew, release, act or reject")]
    UnknownVerb(String),
    #[error("missing lease name: expected '{0} NAME [key=value ...]'")]
    MissingName(&'static str),
    #[error("lease name '{0}' is not valid: 1 to 128 of letters, digits and . _ - : / @")]
    BadName(String),
    #[error("'{0}' is not key=value")]
    NotKeyValue(String),
    #[error("unknown key '{0}': expected ttl, token, expires_wall_ns, tid or pid")]
    UnknownKey(String),
    #[error("{key}={value}: {why}")]
    BadValue {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("key '{0}' given twice")]
    Duplicate(&'static str),
    #[error("request longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("request is not UTF-8")]
    NotUtf8,
}

pub fn valid_name(n: &str) -> bool {
    (1..=MAX_NAME).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b))
}

fn set<T>(slot: &mut Option<T>, key: &'static str, v: T) -> Result<(), ProtocolError> {
    if slot.is_some() {
        return Err(ProtocolError::Duplicate(key));
    }
    *slot = Some(v);
    Ok(())
}

fn number<T: std::str::FromStr>(
    key: &'static str,
    value: &str,
    why: &'static str,
) -> Result<T, ProtocolError> {
    value.parse().map_err(|_| ProtocolError::BadValue {
        key,
        value: value.chars().take(64).collect(),
        why,
    })
}

/// Parses one request line (without its newline; a trailing CR is ignored).
pub fn parse(line: &[u8]) -> Result<Request, ProtocolError> {
    if line.len() >= MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    let line = std::str::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
    let mut words = line.trim_end_matches('\r').split_ascii_whitespace();
    let verb_word = words.next().ok_or(ProtocolError::Empty)?;
    let verb = Verb::ALL
        .into_iter()
        .find(|v| v.name() == verb_word)
        .ok_or_else(|| ProtocolError::UnknownVerb(verb_word.chars().take(32).collect()))?;
    let name = words
        .next()
        .ok_or(ProtocolError::MissingName(verb.name()))?;
    if !valid_name(name) {
        return Err(ProtocolError::BadName(name.chars().take(64).collect()));
    }
    let mut r = Request {
        verb,
        name: name.to_string(),
        ttl_ns: None,
        token: None,
        expires_wall_ns: None,
        tid: None,
        pid: None,
    };
    for kv in words {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ProtocolError::NotKeyValue(kv.chars().take(64).collect()))?;
        match k {
            "ttl" => {
                let d = humantime::parse_duration(v).map_err(|_| ProtocolError::BadValue {
                    key: "ttl",
                    value: v.chars().take(64).collect(),
                    why: "not a duration such as 10s or 1500ms",
                })?;
                let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                if ns == 0 {
                    return Err(ProtocolError::BadValue {
                        key: "ttl",
                        value: v.to_string(),
                        why: "must be greater than zero",
                    });
                }
                set(&mut r.ttl_ns, "ttl", ns)?;
            }
            "token" => set(
                &mut r.token,
                "token",
                number("token", v, "not an unsigned 64-bit integer")?,
            )?,
            "expires_wall_ns" => set(
                &mut r.expires_wall_ns,
                "expires_wall_ns",
                number("expires_wall_ns", v, "not a Unix time in nanoseconds")?,
            )?,
            "tid" => set(&mut r.tid, "tid", id("tid", v)?)?,
            "pid" => set(&mut r.pid, "pid", id("pid", v)?)?,
            _ => return Err(ProtocolError::UnknownKey(k.chars().take(32).collect())),
        }
    }
    Ok(r)
}

fn id(key: &'static str, v: &str) -> Result<u32, ProtocolError> {
    match v.parse::<u32>() {
        Ok(n) if n > 0 && n <= i32::MAX as u32 => Ok(n),
        _ => Err(ProtocolError::BadValue {
            key,
            value: v.chars().take(64).collect(),
            why: "not a positive process or thread id",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key() {
        let r = parse(
            b"acquire leader/db-1 ttl=10s token=33 expires_wall_ns=1700000000000000000 tid=12 pid=11\r",
        )
        .unwrap();
        assert_eq!(r.verb, Verb::Acquire);
        assert_eq!(r.name, "leader/db-1");
        assert_eq!(r.ttl_ns, Some(10_000_000_000));
        assert_eq!(r.token, Some(33));
        assert_eq!(r.expires_wall_ns, Some(1_700_000_000_000_000_000));
        assert_eq!((r.tid, r.pid), (Some(12), Some(11)));
        // The line it prints parses back to the same request.
        let line = r.to_line();
        assert_eq!(parse(line.trim_end().as_bytes()).unwrap(), r);
    }

    #[test]
    fn rejects_with_the_reason() {
        for (line, want) in [
            (&b""[..], "empty request"),
            (b"   ", "empty request"),
            (b"grab x", "unknown verb 'grab'"),
            (b"act", "missing lease name"),
            (b"act bad name!", "'name!' is not key=value"),
            (b"act na\xffme", "not UTF-8"),
            (b"act x!", "lease name 'x!' is not valid"),
            (b"act x color=red", "unknown key 'color'"),
            (b"act x ttl=soon", "not a duration"),
            (b"act x ttl=0s", "greater than zero"),
            (b"act x token=-1", "unsigned 64-bit"),
            (b"act x tid=0", "positive process or thread id"),
            (b"act x pid=99999999999", "positive process or thread id"),
            (b"act x token=1 token=2", "given twice"),
        ] {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(line));
        }
        let long = format!("act {}", "x".repeat(MAX_LINE));
        assert_eq!(parse(long.as_bytes()), Err(ProtocolError::TooLong));
        let long_name = format!("act {}", "x".repeat(129));
        assert!(matches!(
            parse(long_name.as_bytes()),
            Err(ProtocolError::BadName(_))
        ));
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic.
        #[test]
        fn bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = parse(&bytes);
        }

        /// Requests built from protocol words: whatever parses prints back to itself.
        #[test]
        fn words_round_trip(words in proptest::collection::vec(proptest::sample::select(vec![
            "acquire", "renew", "release", "act", "reject", "leader", "a/b", "x!", "ttl=1s",
            "ttl=250ms", "ttl=0s", "token=7", "token=x", "tid=3", "pid=2", "pid=0",
            "expires_wall_ns=-5", "=", "ttl=", "\r", "zz=1",
        ]), 0..8)) {
            if let Ok(r) = parse(words.join(" ").as_bytes()) {
                proptest::prop_assert_eq!(parse(r.to_line().trim_end().as_bytes()).unwrap(), r);
            }
        }
    }
}
