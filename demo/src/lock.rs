//! The lock service: leases with fencing tokens (DDIA figure 9-5).
//!
//! `acquire NAME` → `granted TOKEN TTL_NS EXPIRES_WALL_NS` or `busy REMAINING_NS`;
//! `renew NAME TOKEN` → `granted ...` or `lost`. A lease is free once its TTL has passed on the
//! lock service's own clock, whatever its holder believes.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::net::{serve_lines, wall_ns};

struct Lease {
    token: u64,
    expires: Instant,
}

pub fn serve(listen: &str, ttl: Duration) -> anyhow::Result<i32> {
    let leases: Mutex<(HashMap<String, Lease>, u64)> = Mutex::new((HashMap::new(), 0));
    serve_lines(listen, move |line| {
        let Ok(mut g) = leases.lock() else {
            return "error lock poisoned".into();
        };
        let (leases, last_token) = &mut *g;
        let now = Instant::now();
        let granted = |token: u64| {
            format!(
                "granted {token} {} {}",
                ttl.as_nanos(),
                wall_ns() + ttl.as_nanos() as i64
            )
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["acquire", name] => match leases.get(*name) {
                Some(l) if l.expires > now => {
                    format!("busy {}", (l.expires - now).as_nanos())
                }
                _ => {
                    *last_token += 1;
                    leases.insert(
                        name.to_string(),
                        Lease {
                            token: *last_token,
                            expires: now + ttl,
                        },
                    );
                    granted(*last_token)
                }
            },
            ["renew", name, token] => match (leases.get_mut(*name), token.parse::<u64>()) {
                (Some(l), Ok(t)) if l.token == t && l.expires > now => {
                    l.expires = now + ttl;
                    granted(t)
                }
                _ => "lost".into(),
            },
            _ => format!("error unknown request '{line}'"),
        }
    })
}
