//! Naming what the kernel programs saw by number: the file behind an fd or a faulting address
//! (checked against the inode the kernel read, so a reused fd is never misnamed), and the
//! device behind a dev_t.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use procfs::process::{MMapPath, MemoryMap, Process};

/// How long a process's memory map is reused before being read again.
const MAPS_TTL: Duration = Duration::from_secs(1);
/// Processes whose maps are cached at once (the oldest are dropped beyond this).
const MAPS_CACHED: usize = 64;

#[derive(Default)]
pub struct FileNames {
    maps: HashMap<u32, (Instant, Vec<MemoryMap>)>,
    devices: HashMap<u32, Option<String>>,
}

/// (major, minor) of a kernel dev_t (major << 20 | minor).
pub fn kernel_dev_parts(dev: u32) -> (u64, u64) {
    (u64::from(dev >> 20), u64::from(dev & 0xfffff))
}

impl FileNames {
    /// The path of `pid`'s open file `fd`, if it is still the inode `ino` on `dev` (both 0:
    /// not checked, the kernel could not read them).
    pub fn fd_path(&self, pid: u32, fd: u64, dev: u32, ino: u64) -> Option<String> {
        let link = format!("/proc/{pid}/fd/{fd}");
        let path = std::fs::read_link(&link).ok()?;
        if ino != 0 {
            let md = std::fs::metadata(&link).ok()?;
            let (maj, min) = kernel_dev_parts(dev);
            if md.ino() != ino
                || libc::major(md.dev()) as u64 != maj
                || libc::minor(md.dev()) as u64 != min
            {
                return None;
            }
        }
        Some(path.to_string_lossy().into_owned())
    }

    /// The file mapped at `addr` in `pid` (None: anonymous memory, or the process is gone).
    /// `file` is the (kernel dev_t, inode) the kernel saw at the fault, when it read one: a
    /// mapping of another file there (the cached map is stale: unmapped and mapped again) or
    /// no mapping at all (mapped since the map was read) makes it read the map again, and a
    /// mapping that still does not match names nothing rather than the wrong file.
    pub fn mapping(&mut self, pid: u32, addr: u64, file: Option<(u32, u64)>) -> Option<String> {
        let now = Instant::now();
        let cached = self
            .maps
            .get(&pid)
            .is_some_and(|(t, _)| now.duration_since(*t) < MAPS_TTL);
        if cached && let Some(found) = self.lookup(pid, addr, file) {
            return found;
        }
        let maps = Process::new(pid as i32).and_then(|p| p.maps()).ok()?;
        let oldest = self
            .maps
            .iter()
            .filter(|(p, _)| **p != pid)
            .min_by_key(|(_, (t, _))| *t)
            .map(|(p, _)| *p);
        if let Some(oldest) = oldest.filter(|_| self.maps.len() >= MAPS_CACHED) {
            self.maps.remove(&oldest);
        }
        self.maps.insert(pid, (now, maps.0));
        self.lookup(pid, addr, file).flatten()
    }

    /// In the cached map: Some(name) for a matching mapping (None inside: anonymous), None
    /// when nothing there matches.
    fn lookup(&self, pid: u32, addr: u64, file: Option<(u32, u64)>) -> Option<Option<String>> {
        let (_, maps) = self.maps.get(&pid)?;
        let m = maps
            .iter()
            .find(|m| m.address.0 <= addr && addr < m.address.1)?;
        if let Some((dev, ino)) = file.filter(|&(_, ino)| ino != 0) {
            let (maj, min) = kernel_dev_parts(dev);
            if m.inode != ino || (dev != 0 && (m.dev.0 as u64, m.dev.1 as u64) != (maj, min)) {
                return None;
            }
        }
        Some(match &m.pathname {
            MMapPath::Path(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
    }

    /// "loop0" for a block device; the mount source ("tmpfs", "overlay") for file systems
    /// without one.
    pub fn device(&mut self, dev: u32) -> Option<String> {
        if dev == 0 {
            return None;
        }
        self.devices
            .entry(dev)
            .or_insert_with(|| device_name(dev))
            .clone()
    }
}

fn device_name(dev: u32) -> Option<String> {
    let (maj, min) = kernel_dev_parts(dev);
    let uevent =
        std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/uevent")).unwrap_or_default();
    if let Some(name) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
        return Some(name.to_string());
    }
    // mountinfo: "36 35 0:21 / /run rw shared:1 - tmpfs tmpfs rw": field 3 is major:minor,
    // the source follows the " - fstype ".
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{maj}:{min}");
    info.lines().find_map(|l| {
        let mut f = l.split(' ');
        (f.nth(2)? == want).then(|| {
            let (_, tail) = l.split_once(" - ")?;
            let mut t = tail.split(' ');
            let fstype = t.next()?;
            Some(
                t.next()
                    .filter(|s| !s.is_empty())
                    .unwrap_or(fstype)
                    .to_string(),
            )
        })?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd as _;

    #[test]
    fn an_fd_is_named_only_while_it_is_the_same_inode() {
        let dir = std::env::temp_dir().join(format!("pw-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let f = std::fs::File::create(&path).unwrap();
        let md = f.metadata().unwrap();
        let dev = ((libc::major(md.dev()) as u32) << 20) | libc::minor(md.dev()) as u32;
        let names = FileNames::default();
        let pid = std::process::id();
        let fd = f.as_raw_fd() as u64;
        assert_eq!(
            names.fd_path(pid, fd, dev, md.ino()).as_deref(),
            path.to_str()
        );
        assert_eq!(
            names.fd_path(pid, fd, dev, md.ino() + 1),
            None,
            "another inode"
        );
        assert_eq!(
            names.fd_path(pid, fd, 0, 0).as_deref(),
            path.to_str(),
            "unchecked"
        );
        assert_eq!(
            names.fd_path(pid, 1 << 30, dev, md.ino()),
            None,
            "no such fd"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn addresses_resolve_to_their_mapping() {
        let mut names = FileNames::default();
        let pid = std::process::id();
        let here = addresses_resolve_to_their_mapping as *const () as u64;
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(names.mapping(pid, here, None).as_deref(), exe.to_str());
        let heap = Box::new(1u64);
        assert_eq!(names.mapping(pid, &*heap as *const u64 as u64, None), None);
    }

    #[test]
    fn a_file_mapped_after_the_map_was_cached_is_found_and_checked() {
        let mut names = FileNames::default();
        let pid = std::process::id();
        // Cache this process's map first.
        let here = addresses_resolve_to_their_mapping as *const () as u64;
        assert!(names.mapping(pid, here, None).is_some());
        let path = std::env::temp_dir().join(format!("pw-map-{pid}"));
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let md = f.metadata().unwrap();
        let kdev = (libc::major(md.dev()) << 20) | libc::minor(md.dev());
        // SAFETY: a fresh private read-only mapping of a file we own, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let a = addr as u64 + 4096;
        assert_eq!(
            names.mapping(pid, a, Some((kdev, md.ino()))).as_deref(),
            path.to_str(),
            "the stale cached map is read again"
        );
        assert_eq!(
            names.mapping(pid, a, Some((kdev, md.ino() + 1))),
            None,
            "another inode there is not named as this file"
        );
        // SAFETY: unmapping what we mapped above.
        unsafe { libc::munmap(addr, 8192) };
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn devices_have_names() {
        let md = std::fs::metadata("/proc/self/stat").unwrap();
        let dev = ((libc::major(md.dev()) as u32) << 20) | libc::minor(md.dev()) as u32;
        assert_eq!(FileNames::default().device(dev).as_deref(), Some("proc"));
        assert_eq!(FileNames::default().device(0), None);
    }
}
