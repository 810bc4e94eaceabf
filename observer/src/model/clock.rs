//! Changes of the system clock and who made them.
//!
//! A `ClockChange` is one clock-changing syscall decoded from the kernel (the request and its
//! result). A `ClockStep` is a discontinuity the agent measured (timerfd cancel); the
//! `StepJoiner` names the syscall that caused it. The two arrive in either order: the timerfd
//! wakes the agent inside the stepping syscall, before its exit tracepoint has streamed the
//! record, so a step waits up to `JOIN_WAIT_NS` for its cause.
use std::collections::VecDeque;

use observer_common::{
    CLOCK_FLAG_TIME, CLOCK_FLAG_TIMEX, CLOCK_FLAG_UNREADABLE, ClockAdjRecord, ClockSyscall,
};

use super::{stop::Actor, units::fmt_ns};

/// `struct __kernel_timex.modes` bits (include/uapi/linux/timex.h).
const ADJ_OFFSET: u32 = 0x0001;
const ADJ_FREQUENCY: u32 = 0x0002;
const ADJ_MAXERROR: u32 = 0x0004;
const ADJ_ESTERROR: u32 = 0x0008;
const ADJ_STATUS: u32 = 0x0010;
const ADJ_TIMECONST: u32 = 0x0020;
const ADJ_TAI: u32 = 0x0080;
const ADJ_SETOFFSET: u32 = 0x0100;
const ADJ_MICRO: u32 = 0x1000;
const ADJ_NANO: u32 = 0x2000;
const ADJ_TICK: u32 = 0x4000;
/// Old-style adjtime(3): a one-shot slew, offset always in µs.
const ADJ_ADJTIME: u32 = 0x8000;

const CLOCK_REALTIME: i32 = 0;

/// One thing a clock syscall asked for. A single adjtimex call may ask for several.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Set the clock to this wall time (clock_settime, settimeofday): a step.
    Set {
        wall_ns: i128,
    },
    /// Step the clock by this much (adjtimex ADJ_SETOFFSET).
    StepBy {
        offset_ns: i64,
    },
    /// Slew through the kernel's PLL/FLL (ADJ_OFFSET): the clock is steered, never stepped.
    Slew {
        offset_ns: i64,
    },
    /// Old-style adjtime(3) slew (ADJ_OFFSET_SINGLESHOT), at 500 ppm until done.
    SlewOnce {
        offset_ns: i64,
    },
    /// Frequency correction (ADJ_FREQUENCY), in ppm.
    Frequency {
        ppm: f64,
    },
    /// Status bits set (ADJ_STATUS): sync, PLL/FLL mode, leap second flags.
    Status {
        status: i32,
    },
    MaxError {
        ns: i64,
    },
    EstError {
        ns: i64,
    },
    TimeConstant,
    Tai,
    Tick,
}

impl Change {
    pub fn name(&self) -> &'static str {
        match self {
            Change::Set { .. } => "set",
            Change::StepBy { .. } => "step_by",
            Change::Slew { .. } => "slew",
            Change::SlewOnce { .. } => "slew_once",
            Change::Frequency { .. } => "frequency",
            Change::Status { .. } => "status",
            Change::MaxError { .. } => "maxerror",
            Change::EstError { .. } => "esterror",
            Change::TimeConstant => "time_constant",
            Change::Tai => "tai",
            Change::Tick => "tick",
        }
    }

    pub fn is_step(&self) -> bool {
        matches!(self, Change::Set { .. } | Change::StepBy { .. })
    }
}

/// One clock-changing syscall.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockChange {
    pub ts_mono_ns: u64,
    pub by: Actor,
    pub syscall: ClockSyscall,
    /// None for the syscalls that only act on CLOCK_REALTIME.
    pub clockid: Option<i32>,
    /// The syscall's return value; negative errno on failure.
    pub ret: i64,
    pub modes: u32,
    /// What was asked; empty when the caller's memory could not be read.
    pub changes: Vec<Change>,
    pub unreadable: bool,
}

impl ClockChange {
    /// `nano_status`: the clock's STA_NANO bit as last sampled, which decides the unit of
    /// ADJ_OFFSET when the call does not say (ADJ_NANO / ADJ_MICRO). None for a record no
    /// syscall could have made (unknown syscall, no calling thread).
    pub fn from_record(r: &ClockAdjRecord, nano_status: bool) -> Option<Self> {
        let syscall = ClockSyscall::from_u32(r.syscall)?;
        let by = Actor::from_task_id(&r.by)?;
        let mut changes = Vec::new();
        let time_ns = || i128::from(r.set_sec) * 1_000_000_000 + i128::from(r.set_nsec);
        match syscall {
            ClockSyscall::ClockSettime | ClockSyscall::Settimeofday => {
                if r.flags & CLOCK_FLAG_TIME != 0 {
                    changes.push(Change::Set { wall_ns: time_ns() });
                }
            }
            ClockSyscall::Adjtimex | ClockSyscall::ClockAdjtime => {
                if r.flags & CLOCK_FLAG_TIMEX != 0 {
                    changes = timex_changes(r, nano_status, time_ns());
                }
            }
        }
        Some(Self {
            ts_mono_ns: r.ts_mono_ns,
            by,
            syscall,
            clockid: matches!(
                syscall,
                ClockSyscall::ClockSettime | ClockSyscall::ClockAdjtime
            )
            .then_some(r.clockid),
            ret: r.ret,
            modes: r.modes,
            changes,
            unreadable: r.flags & CLOCK_FLAG_UNREADABLE != 0,
        })
    }

    pub fn ok(&self) -> bool {
        self.ret >= 0
    }

    /// Acts on the system wall clock (not a PTP hardware clock through clock_adjtime).
    pub fn on_realtime(&self) -> bool {
        self.clockid.is_none_or(|c| c == CLOCK_REALTIME)
    }

    /// A successful call that stepped the system clock.
    pub fn stepped(&self) -> bool {
        self.ok() && self.on_realtime() && self.changes.iter().any(Change::is_step)
    }

    /// The step this call asked for, given CLOCK_REALTIME − CLOCK_MONOTONIC just before it.
    pub fn requested_step_ns(&self, offset_before_ns: i128) -> Option<i64> {
        self.changes.iter().find_map(|c| match *c {
            Change::Set { wall_ns } => {
                let was = i128::from(self.ts_mono_ns) + offset_before_ns;
                i64::try_from(wall_ns - was).ok()
            }
            Change::StepBy { offset_ns } => Some(offset_ns),
            _ => None,
        })
    }

    /// "clock_settime by pid 4242 (date, uid 0)"
    pub fn describe(&self) -> String {
        format!("{} by {}", self.syscall.name(), self.by.describe())
    }
}

fn timex_changes(r: &ClockAdjRecord, nano_status: bool, time_ns: i128) -> Vec<Change> {
    let m = r.modes;
    let mut out = Vec::new();
    if m & ADJ_ADJTIME != 0 {
        out.push(Change::SlewOnce {
            offset_ns: r.offset.saturating_mul(1000),
        });
        return out;
    }
    if m & ADJ_SETOFFSET != 0 {
        out.push(Change::StepBy {
            offset_ns: i64::try_from(time_ns).unwrap_or(i64::MAX),
        });
    }
    if m & ADJ_OFFSET != 0 {
        let nano = m & ADJ_NANO != 0 || (nano_status && m & ADJ_MICRO == 0);
        out.push(Change::Slew {
            offset_ns: if nano {
                r.offset
            } else {
                r.offset.saturating_mul(1000)
            },
        });
    }
    if m & ADJ_FREQUENCY != 0 {
        out.push(Change::Frequency {
            ppm: r.freq as f64 / 65536.0,
        });
    }
    if m & ADJ_STATUS != 0 {
        out.push(Change::Status { status: r.status });
    }
    if m & ADJ_MAXERROR != 0 {
        out.push(Change::MaxError {
            ns: r.maxerror.saturating_mul(1000),
        });
    }
    if m & ADJ_ESTERROR != 0 {
        out.push(Change::EstError {
            ns: r.esterror.saturating_mul(1000),
        });
    }
    if m & ADJ_TIMECONST != 0 {
        out.push(Change::TimeConstant);
    }
    if m & ADJ_TAI != 0 {
        out.push(Change::Tai);
    }
    if m & ADJ_TICK != 0 {
        out.push(Change::Tick);
    }
    out
}

/// A discontinuity of the wall clock, measured by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockStep {
    pub ts_mono_ns: u64,
    /// Signed: negative when the clock went back.
    pub step_ns: i64,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC before the step.
    pub offset_before_ns: i128,
}

/// A measured step and, when known, the syscall that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinedStep {
    pub step: ClockStep,
    pub by: Option<ClockChange>,
}

impl JoinedStep {
    pub fn requested_step_ns(&self) -> Option<i64> {
        self.by
            .as_ref()
            .and_then(|c| c.requested_step_ns(self.step.offset_before_ns))
    }

    /// "clock stepped back 2 s (clock_settime by pid 42 (date, uid 0))"
    pub fn describe(&self) -> String {
        let dir = if self.step.step_ns < 0 {
            "back"
        } else {
            "forward"
        };
        let size = fmt_ns(self.step.step_ns.unsigned_abs());
        match &self.by {
            Some(c) => format!("clock stepped {dir} {size} ({})", c.describe()),
            None => format!("clock stepped {dir} {size} (cause not seen)"),
        }
    }
}

/// How long a measured step waits for the syscall record that caused it.
pub const JOIN_WAIT_NS: u64 = 250_000_000;
/// How far before a step its cause may have entered the syscall.
const CAUSE_WINDOW_NS: u64 = 2_000_000_000;
/// Changes kept for joining.
const MAX_RECENT: usize = 64;

/// Joins measured steps with the syscalls that stepped the clock.
#[derive(Debug, Default)]
pub struct StepJoiner {
    /// Stepping syscalls not yet joined to a step, oldest first.
    causes: VecDeque<ClockChange>,
    /// Steps waiting for their cause, oldest first.
    pending: VecDeque<ClockStep>,
}

impl StepJoiner {
    /// A syscall record: joins the oldest pending step it can explain.
    pub fn on_change(&mut self, c: &ClockChange) -> Option<JoinedStep> {
        if !c.stepped() {
            return None;
        }
        if let Some(i) = self.pending.iter().position(|s| explains(c, s)) {
            let step = self.pending.remove(i)?;
            return Some(JoinedStep {
                step,
                by: Some(c.clone()),
            });
        }
        if self.causes.len() >= MAX_RECENT {
            self.causes.pop_front();
        }
        self.causes.push_back(c.clone());
        None
    }

    /// A measured step: joined at once when its cause is already here, else kept waiting.
    pub fn on_step(&mut self, step: ClockStep) -> Option<JoinedStep> {
        if let Some(i) = self.causes.iter().rposition(|c| explains(c, &step)) {
            let by = self.causes.remove(i);
            return Some(JoinedStep { step, by });
        }
        if self.pending.len() >= MAX_RECENT {
            self.pending.pop_front();
        }
        self.pending.push_back(step);
        None
    }

    /// No step is waiting for its cause.
    pub fn due_is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Steps whose cause did not come in time (a resume from suspend, a hypervisor or the
    /// kernel itself stepped the clock, or the record was dropped). `now` None: all of them.
    pub fn due(&mut self, now_mono_ns: Option<u64>) -> Vec<JoinedStep> {
        let mut out = Vec::new();
        while let Some(s) = self.pending.front() {
            if now_mono_ns.is_some_and(|now| now < s.ts_mono_ns.saturating_add(JOIN_WAIT_NS)) {
                break;
            }
            let step = self.pending.pop_front().expect("front exists");
            out.push(JoinedStep { step, by: None });
        }
        let horizon = now_mono_ns.map_or(u64::MAX, |n| n.saturating_sub(CAUSE_WINDOW_NS));
        self.causes.retain(|c| c.ts_mono_ns >= horizon);
        out
    }
}

/// The syscall entered before the step was measured, and not long before.
fn explains(c: &ClockChange, s: &ClockStep) -> bool {
    c.ts_mono_ns <= s.ts_mono_ns && s.ts_mono_ns - c.ts_mono_ns <= CAUSE_WINDOW_NS
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{TASK_COMM_LEN, TaskId};

    fn rec(syscall: ClockSyscall, ts: u64) -> ClockAdjRecord {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..4].copy_from_slice(b"date");
        let by = TaskId {
            tid: 42,
            tgid: 42,
            uid: 0,
            _pad0: 0,
            comm,
        };
        ClockAdjRecord::call(syscall, 0, ts, by)
    }

    #[test]
    fn a_settime_asks_for_the_step_it_names() {
        let mut r = rec(ClockSyscall::ClockSettime, 5_000_000_000);
        r.flags = CLOCK_FLAG_TIME;
        r.set_sec = 1_000;
        r.set_nsec = 500;
        let c = ClockChange::from_record(&r, false).unwrap();
        assert!(c.stepped());
        // Wall time before = 5 s + offset 990 s = 995 s; asked for 1000 s + 500 ns.
        assert_eq!(c.requested_step_ns(990_000_000_000), Some(5_000_000_500));
        assert_eq!(c.describe(), "clock_settime by pid 42 (date, uid 0)");
    }

    #[test]
    fn adjtimex_modes_become_changes_with_units() {
        let mut r = rec(ClockSyscall::Adjtimex, 1);
        r.flags = CLOCK_FLAG_TIMEX;
        r.modes = ADJ_OFFSET | ADJ_FREQUENCY | ADJ_STATUS;
        r.offset = 5_000; // µs without STA_NANO
        r.freq = 65536 * 12;
        r.status = 1;
        let c = ClockChange::from_record(&r, false).unwrap();
        assert!(!c.stepped());
        assert_eq!(
            c.changes,
            vec![
                Change::Slew {
                    offset_ns: 5_000_000
                },
                Change::Frequency { ppm: 12.0 },
                Change::Status { status: 1 }
            ]
        );
        // With STA_NANO already set the same offset is in ns; ADJ_MICRO overrides it.
        let c = ClockChange::from_record(&r, true).unwrap();
        assert_eq!(c.changes[0], Change::Slew { offset_ns: 5_000 });
        r.modes |= ADJ_MICRO;
        let c = ClockChange::from_record(&r, true).unwrap();
        assert_eq!(
            c.changes[0],
            Change::Slew {
                offset_ns: 5_000_000
            }
        );
        // Old-style adjtime is a one-shot slew in µs, whatever else the bits say.
        r.modes = 0x8001;
        let c = ClockChange::from_record(&r, true).unwrap();
        assert_eq!(
            c.changes,
            vec![Change::SlewOnce {
                offset_ns: 5_000_000
            }]
        );
    }

    #[test]
    fn setoffset_is_a_step_and_failed_or_phc_calls_are_not() {
        let mut r = rec(ClockSyscall::ClockAdjtime, 1);
        r.flags = CLOCK_FLAG_TIMEX | CLOCK_FLAG_TIME;
        r.modes = ADJ_SETOFFSET;
        r.set_sec = -2;
        r.set_nsec = 0;
        let c = ClockChange::from_record(&r, false).unwrap();
        assert!(c.stepped());
        assert_eq!(c.requested_step_ns(0), Some(-2_000_000_000));
        r.ret = -1;
        assert!(!ClockChange::from_record(&r, false).unwrap().stepped());
        r.ret = 0;
        r.clockid = -29; // a PTP hardware clock's dynamic id
        assert!(!ClockChange::from_record(&r, false).unwrap().stepped());
    }

    fn stepping(ts: u64) -> ClockChange {
        let mut r = rec(ClockSyscall::ClockSettime, ts);
        r.flags = CLOCK_FLAG_TIME;
        ClockChange::from_record(&r, false).unwrap()
    }

    fn step(ts: u64) -> ClockStep {
        ClockStep {
            ts_mono_ns: ts,
            step_ns: 1_000_000_000,
            offset_before_ns: 0,
        }
    }

    #[test]
    fn a_step_joins_its_cause_in_either_order() {
        let mut j = StepJoiner::default();
        // Step first (the timerfd woke the agent inside the syscall), record after.
        assert!(j.on_step(step(1_000)).is_none());
        let joined = j.on_change(&stepping(900)).unwrap();
        assert_eq!(joined.step.ts_mono_ns, 1_000);
        assert_eq!(joined.by.unwrap().ts_mono_ns, 900);
        // Record first.
        assert!(j.on_change(&stepping(5_000)).is_none());
        let joined = j.on_step(step(5_100)).unwrap();
        assert_eq!(joined.by.unwrap().ts_mono_ns, 5_000);
        assert!(j.due(None).is_empty());
    }

    #[test]
    fn a_step_without_a_cause_is_released_after_the_wait() {
        let mut j = StepJoiner::default();
        assert!(j.on_step(step(1_000)).is_none());
        assert!(j.due(Some(1_000 + JOIN_WAIT_NS - 1)).is_empty());
        let out = j.due(Some(1_000 + JOIN_WAIT_NS));
        assert_eq!(out.len(), 1);
        assert!(out[0].by.is_none());
        assert!(out[0].describe().contains("cause not seen"));
        // A syscall that entered after the step, or long before it, is not its cause.
        assert!(j.on_step(step(10 * CAUSE_WINDOW_NS)).is_none());
        assert!(j.on_change(&stepping(10 * CAUSE_WINDOW_NS + 1)).is_none());
        assert!(j.on_change(&stepping(1)).is_none());
        assert_eq!(j.due(None).len(), 1);
    }
}
