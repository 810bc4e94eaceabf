//! The kernel's tick rate (CONFIG_HZ), needed to turn a socket's RTO from jiffies into time.
//!
//! Userspace has no direct way to ask (sysconf gives USER_HZ, always 100). /proc/timer_list
//! prints the monotonic time and the jiffies counter together; jiffies start at
//! INITIAL_JIFFIES = 2^32 − 300·HZ (include/linux/jiffies.h) so that they wrap five minutes after
//! boot, hence `jiffies = 2^32 + HZ·(uptime − 300 s)`.

/// Tick rates Linux can be configured with (kernel/Kconfig.hz).
const CANDIDATES: [u64; 4] = [100, 250, 300, 1000];

/// HZ from the text of /proc/timer_list (None when it cannot be told).
pub fn from_timer_list(text: &str) -> Option<u64> {
    let now_ns: i128 = text.lines().find_map(|l| {
        l.strip_prefix("now at ")?
            .strip_suffix(" nsecs")?
            .parse()
            .ok()
    })?;
    let jiffies: i128 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies: ")?.parse().ok())?;
    let since_wrap_ns = now_ns - 300_000_000_000;
    // Within a minute of the wrap the estimate is too unsteady to trust.
    if since_wrap_ns.abs() < 60_000_000_000 {
        return None;
    }
    let hz = (jiffies - (1i128 << 32)) as f64 * 1e9 / since_wrap_ns as f64;
    CANDIDATES
        .into_iter()
        .find(|&c| (hz - c as f64).abs() <= c as f64 * 0.05)
}

/// The running kernel's HZ, when /proc/timer_list is readable (root) and says.
pub fn read() -> Option<u64> {
    from_timer_list(&std::fs::read_to_string("/proc/timer_list").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hz_from_timer_list() {
        // Excerpt from a 6.18 guest with HZ=250, 8000 s after boot.
        let t = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 7999949688878 nsecs\n\ncpu: 0\n jiffies: 4296892221\n";
        assert_eq!(from_timer_list(t), Some(250));
        let t = "now at 1000000000000 nsecs\njiffies: 4295667296\n"; // HZ 1000 at 1000 s
        assert_eq!(from_timer_list(t), Some(1000));
        assert_eq!(
            from_timer_list("now at 310000000000 nsecs\njiffies: 4294969796\n"),
            None
        );
        assert_eq!(from_timer_list("garbage"), None);
    }
}
