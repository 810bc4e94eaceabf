//! Whether a lease holder is paused right now, read from /proc as its lease's deadline passes,
//! so that `lease_expired_during_pause` is raised while the holder is still paused and not
//! only when the pause ends (and its evidence reaches the agent).
//!
//! Paused means a state in which the thread cannot run: stopped (`T`, job control), traced
//! (`t`, a ptrace stop) or uninterruptible sleep (`D`). A thread waiting in a run queue is `R`
//! like a running one, so run-queue waits are only reported when they end.
use std::collections::HashMap;

use crate::model::stop::{SIGCONT, Signal, signal_name};

/// At most this many threads of a process are read for a process-scoped lease.
const MAX_THREADS: usize = 4096;

/// Stop signals in effect per process ("SIGSTOP from pid 4242 (bash, uid 0)"), to name who
/// stopped a holder before the stop ends. Bounded; cleared by SIGCONT.
#[derive(Debug, Default)]
pub struct StopSenders {
    by_pid: HashMap<u32, String>,
}

impl StopSenders {
    const MAX: usize = 4096;

    /// Remembers the sender of a delivered stop signal until SIGCONT.
    pub fn on_signal(&mut self, sig: &Signal) {
        if sig.delivered_stop() {
            let who = sig
                .sender
                .as_ref()
                .map_or("an unknown sender".to_string(), |a| a.describe());
            self.stopped(sig.pid, format!("{} from {who}", signal_name(sig.sig)));
        } else if sig.sig == SIGCONT {
            self.resumed(sig.pid);
        }
    }

    /// A stop signal was delivered to `pid` from `who`.
    pub fn stopped(&mut self, pid: u32, who: String) {
        if self.by_pid.len() >= Self::MAX && !self.by_pid.contains_key(&pid) {
            // Forget an arbitrary entry: at worst a stop is described without its sender.
            if let Some(&k) = self.by_pid.keys().next() {
                self.by_pid.remove(&k);
            }
        }
        self.by_pid.insert(pid, who);
    }

    /// `pid` was continued (or exited).
    pub fn resumed(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }

    pub fn of(&self, pid: u32) -> Option<&str> {
        self.by_pid.get(&pid).map(String::as_str)
    }
}

/// Why a thread in `state` cannot run, in the words of the incident's `cause`; None when it
/// could (running, runnable, voluntary sleep) or is gone.
pub fn describe(state: char, stopped_by: Option<&str>, wchan: Option<&str>) -> Option<String> {
    Some(match state {
        'T' => match stopped_by {
            Some(who) => format!("stopped: {who}"),
            None => "stopped (state T)".to_string(),
        },
        't' => "stopped: ptrace stop (state t)".to_string(),
        'D' => match wchan.filter(|w| !w.is_empty() && *w != "0") {
            Some(w) => format!("blocked: uninterruptible sleep in {w}"),
            None => "blocked: uninterruptible sleep (state D)".to_string(),
        },
        _ => return None,
    })
}

fn thread_state(pid: u32, tid: u32) -> Option<(char, Option<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // The state follows the parenthesised name, which may itself contain ") ".
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    let wchan = (state == 'D')
        .then(|| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan")).ok())
        .flatten();
    Some((state, wchan))
}

/// Whether the threads whose pauses count for a lease of `pid` (`tid`: that thread; None:
/// every thread) are paused now: (the paused thread, why). A stopped or traced thread wins
/// over one in D.
pub fn paused_now(
    pid: u32,
    tid: Option<u32>,
    senders: &StopSenders,
) -> Option<(Option<u32>, String)> {
    let tids: Vec<u32> = match tid {
        Some(t) => vec![t],
        None => std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .take(MAX_THREADS)
            .collect(),
    };
    let mut blocked = None;
    for t in tids {
        let Some((state, wchan)) = thread_state(pid, t) else {
            continue;
        };
        let Some(why) = describe(state, senders.of(pid), wchan.as_deref()) else {
            continue;
        };
        if state != 'D' {
            return Some((Some(t), why));
        }
        blocked.get_or_insert((Some(t), why));
    }
    blocked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_that_cannot_run() {
        assert_eq!(
            describe('T', Some("SIGSTOP from pid 7 (bash, uid 0)"), None).as_deref(),
            Some("stopped: SIGSTOP from pid 7 (bash, uid 0)")
        );
        assert_eq!(
            describe('T', None, None).as_deref(),
            Some("stopped (state T)")
        );
        assert!(describe('t', None, None).unwrap().contains("ptrace"));
        assert_eq!(
            describe('D', None, Some("folio_wait_bit_common")).as_deref(),
            Some("blocked: uninterruptible sleep in folio_wait_bit_common")
        );
        assert_eq!(
            describe('D', None, Some("0")).as_deref(),
            Some("blocked: uninterruptible sleep (state D)")
        );
        for s in ['R', 'S', 'I', 'Z', 'X'] {
            assert_eq!(describe(s, None, None), None, "{s}");
        }
    }

    #[test]
    fn a_running_process_is_not_paused_and_a_missing_one_is_not_either() {
        let none = StopSenders::default();
        // This thread, reading its own state, is running. (Not the whole test process: a
        // sibling test thread spawning a child sleeps in D in kernel_clone until the child
        // has exec'd, which is a real pause.)
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        assert_eq!(paused_now(std::process::id(), Some(me), &none), None);
        // A sleeping process (S) is not paused, once it is past its exec (which can read the
        // binary in D): polled until it is seen not paused, then it must stay so.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let settled = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            paused_now(pid, None, &none).is_none()
        });
        let again = paused_now(pid, None, &none);
        let _ = child.kill();
        let _ = child.wait();
        assert!(settled, "sleep never seen not paused");
        assert_eq!(again, None);
        assert_eq!(paused_now(u32::MAX, None, &none), None);
    }

    #[test]
    fn a_stopped_child_is_paused_with_its_sender() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        // SAFETY: kill with a valid pid and signal.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        let mut senders = StopSenders::default();
        senders.stopped(pid, "SIGSTOP from pid 1 (test, uid 0)".into());
        // Until the stop lands the child may be briefly in D (still exec'ing): poll for T.
        let mut got = None;
        for _ in 0..200 {
            got = paused_now(pid, None, &senders);
            if got
                .as_ref()
                .is_some_and(|(_, why)| why.starts_with("stopped"))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            got,
            Some((
                Some(pid),
                "stopped: SIGSTOP from pid 1 (test, uid 0)".to_string()
            ))
        );
    }

    #[test]
    fn senders_are_bounded_and_cleared_by_sigcont() {
        let mut s = StopSenders::default();
        for pid in 0..(StopSenders::MAX as u32 + 10) {
            s.stopped(pid, format!("SIGSTOP from pid {pid}"));
        }
        assert_eq!(s.by_pid.len(), StopSenders::MAX);
        let last = StopSenders::MAX as u32 + 9;
        assert!(s.of(last).is_some());
        s.resumed(last);
        assert!(s.of(last).is_none());
    }
}
