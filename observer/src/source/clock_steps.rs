//! Wall-clock steps, as they happen: a timerfd on CLOCK_REALTIME armed with
//! TFD_TIMER_CANCEL_ON_SET is cancelled (read fails with ECANCELED) whenever the clock is set
//! discontinuously (clock_settime, settimeofday, adjtimex ADJ_SETOFFSET, a resume that moves
//! it). The step is the change in CLOCK_REALTIME − CLOCK_MONOTONIC since the last sample.
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use tokio::io::{Interest, unix::AsyncFd};

use super::clock::WallClock;

/// One step of the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub ts_mono_ns: u64,
    /// Signed: negative when the clock went back.
    pub step_ns: i64,
    /// The reading after the step.
    pub clock: WallClock,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC before it (the last sample).
    pub offset_before_ns: i128,
}

pub struct ClockSteps {
    fd: AsyncFd<OwnedFd>,
    last: WallClock,
}

/// A far-future absolute expiry (year 2255), so the timer itself never fires.
const FAR_FUTURE_S: i64 = 9_000_000_000;

impl ClockSteps {
    pub fn new(now: WallClock) -> std::io::Result<Self> {
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns the descriptor and deregisters it before closing it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let s = Self { fd, last: now };
        s.arm()?;
        Ok(s)
    }

    fn arm(&self) -> std::io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: FAR_FUTURE_S,
                tv_nsec: 0,
            },
        };
        // SAFETY: valid fd and pointer to a valid itimerspec; old value not requested.
        let r = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The agent's periodic sample: slewing moves the offset slowly, and a step is measured
    /// against the latest sample.
    pub fn resample(&mut self, now: WallClock) {
        self.last = now;
    }

    /// Waits for the next step.
    pub async fn next(&mut self) -> std::io::Result<Step> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer from a valid fd.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n >= 0 {
                // The far-future timer expired (the clock was set past 2255): re-arm.
                self.arm()?;
                continue;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ECANCELED) => {
                    let now = WallClock::sample();
                    let before = self.last.offset_ns;
                    let step = now.offset_ns - before;
                    self.last = now;
                    self.arm()?;
                    return Ok(Step {
                        ts_mono_ns: WallClock::mono_now(),
                        step_ns: i64::try_from(step).unwrap_or(if step < 0 {
                            i64::MIN
                        } else {
                            i64::MAX
                        }),
                        clock: now,
                        offset_before_ns: before,
                    });
                }
                Some(libc::EAGAIN) => guard.clear_ready(),
                _ => return Err(err),
            }
        }
    }
}
