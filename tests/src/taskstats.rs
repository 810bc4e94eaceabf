//! The kernel's delay accounting for a process, read over generic netlink (taskstats,
//! include/uapi/linux/taskstats.h): the ground truth for swap-in and block I/O waits.
//!
//! One request (TASKSTATS_CMD_GET with TASKSTATS_CMD_ATTR_TGID) after resolving the family
//! id; the reply's TASKSTATS_TYPE_AGGR_TGID nests a `struct taskstats` summed over the
//! process's live threads. Counters grow only while `kernel.task_delayacct` is 1.
use std::{io, mem::size_of};

const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const TASKSTATS_CMD_GET: u8 = 1;
const TASKSTATS_CMD_ATTR_TGID: u16 = 2;
const TASKSTATS_TYPE_AGGR_TGID: u16 = 5;
const TASKSTATS_TYPE_STATS: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;

/// The delay counters of `struct taskstats` (version ≥ 1 layout: they follow
/// version, ac_exitcode, ac_flag and ac_nice, padded to 16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delays {
    pub cpu_count: u64,
    pub cpu_delay_ns: u64,
    /// Waits for block I/O: from leaving the CPU in `io_schedule` to the wakeup.
    pub blkio_count: u64,
    pub blkio_delay_ns: u64,
    /// Calls of `swap_read_folio` (mm/page_io.c), readahead included, and their time: since
    /// Linux 5.19 the submission of the read, not the wait for it (which is block I/O).
    pub swapin_count: u64,
    pub swapin_delay_ns: u64,
}

impl Delays {
    /// Counter-wise `self − earlier`.
    pub fn since(&self, earlier: &Delays) -> Delays {
        Delays {
            cpu_count: self.cpu_count - earlier.cpu_count,
            cpu_delay_ns: self.cpu_delay_ns - earlier.cpu_delay_ns,
            blkio_count: self.blkio_count - earlier.blkio_count,
            blkio_delay_ns: self.blkio_delay_ns - earlier.blkio_delay_ns,
            swapin_count: self.swapin_count - earlier.swapin_count,
            swapin_delay_ns: self.swapin_delay_ns - earlier.swapin_delay_ns,
        }
    }
}

struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(a.len().next_multiple_of(4), 0);
    a
}

/// (type, payload) of each netlink attribute in `data`.
fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    out
}

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Sends one generic-netlink request and returns the reply's attributes (after the 16-byte
    /// netlink and 4-byte genl headers).
    fn request(&self, family: u16, cmd: u8, payload: &[u8]) -> io::Result<Vec<u8>> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + 4 + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
        msg.extend_from_slice(&[cmd, 1, 0, 0]); // genl: command, version, reserved
        msg.extend_from_slice(payload);
        // SAFETY: sending our own buffer; a zeroed sockaddr_nl addresses the kernel.
        let sent = unsafe {
            let mut to: libc::sockaddr_nl = std::mem::zeroed();
            to.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                std::ptr::from_ref(&to).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16384];
        // SAFETY: receiving into our own buffer of that length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        if buf.len() < 20 {
            return Err(io::Error::other("short netlink reply"));
        }
        if u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
            let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return Err(io::Error::from_raw_os_error(-errno));
        }
        Ok(buf[20..].to_vec())
    }
}

/// Delay accounting summed over the live threads of process `tgid`.
pub fn delays(tgid: u32) -> io::Result<Delays> {
    let sock = Socket::open()?;
    let reply = sock.request(
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        &attr(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0"),
    )?;
    let family = attrs(&reply)
        .into_iter()
        .find(|(k, v)| *k == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
        .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
        .ok_or_else(|| {
            io::Error::other("no TASKSTATS generic netlink family (CONFIG_TASKSTATS)")
        })?;
    let reply = sock.request(
        family,
        TASKSTATS_CMD_GET,
        &attr(TASKSTATS_CMD_ATTR_TGID, &tgid.to_ne_bytes()),
    )?;
    let stats = attrs(&reply)
        .into_iter()
        .filter(|(k, _)| *k == TASKSTATS_TYPE_AGGR_TGID)
        .flat_map(|(_, v)| attrs(v))
        .find(|(k, v)| *k == TASKSTATS_TYPE_STATS && v.len() >= 64)
        .map(|(_, v)| v)
        .ok_or_else(|| io::Error::other(format!("no taskstats for pid {tgid} in the reply")))?;
    let word = |i: usize| u64::from_ne_bytes(stats[16 + 8 * i..24 + 8 * i].try_into().unwrap());
    Ok(Delays {
        cpu_count: word(0),
        cpu_delay_ns: word(1),
        blkio_count: word(2),
        blkio_delay_ns: word(3),
        swapin_count: word(4),
        swapin_delay_ns: word(5),
    })
}
