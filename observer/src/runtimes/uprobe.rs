//! Attaching a loaded uprobe program at a file offset, with an optional USDT semaphore.
//!
//! aya 0.14's `UProbe::attach` has no way to pass a semaphore (`ref_ctr_offset`), so this does
//! what libbpf does: open a perf event on the kernel's `uprobe` PMU with the semaphore's file
//! offset in the config bits the PMU advertises, and hand it the program. The kernel then
//! increments the semaphore in every process mapping the file, present and future, for as long
//! as the event is open, and decrements it when the returned fd closes (which also detaches).
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const PMU_DIR: &str = "/sys/bus/event_source/devices/uprobe";
/// `_IOW('$', 8, __u32)` and `_IO('$', 0)` (include/uapi/linux/perf_event.h).
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// The leading fields of `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1); the
/// kernel treats the fields after `size` bytes as zero.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    /// uprobe_path
    config1: u64,
    /// probe_offset
    config2: u64,
}
const _: () = assert!(size_of::<PerfEventAttr>() == 72);

/// The uprobe PMU's type id and the bit at which it takes `ref_ctr_offset` (from its format
/// directory: "config:32-63" on every kernel since 4.20). None for the shift when the kernel
/// has no semaphore support.
fn pmu() -> io::Result<(u32, Option<u32>)> {
    let kind = std::fs::read_to_string(format!("{PMU_DIR}/type")).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{PMU_DIR}/type: {e} (kernel without the uprobe PMU)"),
        )
    })?;
    let kind = kind
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{PMU_DIR}/type is not a number")))?;
    let shift = std::fs::read_to_string(format!("{PMU_DIR}/format/ref_ctr_offset"))
        .ok()
        .and_then(|f| {
            f.trim()
                .strip_prefix("config:")?
                .split('-')
                .next()?
                .parse()
                .ok()
        });
    Ok((kind, shift))
}

/// Attaches `prog` (a loaded uprobe program) at `offset` in `path`, for every process.
pub fn attach(
    prog: BorrowedFd<'_>,
    path: &Path,
    offset: u64,
    ref_ctr_offset: u64,
) -> io::Result<OwnedFd> {
    let (kind, shift) = pmu()?;
    let config = match (ref_ctr_offset, shift) {
        (0, _) => 0,
        (r, Some(s)) if s < 64 => r << s,
        _ => {
            return Err(io::Error::other(
                "this kernel cannot enable USDT semaphores (no ref_ctr_offset in the uprobe PMU)",
            ));
        }
    };
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains a NUL byte"))?;
    let attr = PerfEventAttr {
        kind,
        size: size_of::<PerfEventAttr>() as u32,
        config,
        sample_period: 1,
        wakeup_events: 1,
        config1: cpath.as_ptr() as u64,
        config2: offset,
        ..Default::default()
    };
    // pid -1, cpu 0: every process (a uprobe event's BPF program runs on every CPU it fires on).
    // SAFETY: attr is a valid perf_event_attr prefix whose `size` says how much of it there is;
    // cpath outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: both fds are open for the duration of the calls; the ioctls take an int / nothing.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            PERF_EVENT_IOC_SET_BPF as _,
            prog.as_raw_fd(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE as _, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
