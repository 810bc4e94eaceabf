//! The storage service: checks fencing tokens (DDIA figure 9-5). `write NAME TOKEN DATA` is
//! accepted only if TOKEN is at least the newest token seen for NAME; a refusal is reported to
//! pausewatch as `reject NAME token=TOKEN`.
use std::{collections::HashMap, path::PathBuf, sync::Mutex};

use crate::net::{Pausewatch, serve_lines};

pub fn serve(listen: &str, socket: Option<PathBuf>) -> anyhow::Result<i32> {
    let pw = Mutex::new(Pausewatch::connect(socket.as_deref())?);
    let newest: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::new());
    serve_lines(listen, move |line| {
        let words: Vec<&str> = line.splitn(4, ' ').collect();
        let (name, token) = match words.as_slice() {
            ["write", name, token, ..] => match token.parse::<u64>() {
                Ok(t) => (name.to_string(), t),
                Err(_) => return format!("error bad token '{token}'"),
            },
            _ => return format!("error unknown request '{line}'"),
        };
        let Ok(mut newest) = newest.lock() else {
            return "error storage poisoned".into();
        };
        let seen = newest.entry(name.clone()).or_insert(0);
        if token >= *seen {
            *seen = token;
            return "ok".into();
        }
        let current = *seen;
        drop(newest);
        if let Ok(mut pw) = pw.lock() {
            let _ = pw.report(&format!("reject {name} token={token}"));
        }
        format!("rejected {token} {current}")
    })
}
