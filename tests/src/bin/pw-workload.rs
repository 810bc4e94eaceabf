//! Workloads for the privileged tests. Each makes real pauses and reports the kernel's own
//! accounting of them, so tests compare pausewatch with ground truth, not with expectations.
//!
//!   pw-workload spin SECS CPU NAME THREADS [SLEEP_US]
//!                                            spin THREADS threads pinned to CPU ("any": not
//!                                            pinned) for SECS (with SLEEP_US: alternate 500 µs of work with a sleep, so
//!                                            waits follow wakeups), then print {"pid", "threads":
//!                                            [{tid, comm, run_delay_ns}]} from each thread's
//!                                            /proc/thread-self/schedstat
//!   pw-workload fork-on-stdin SECS CPU       wait for a line on stdin, fork a child that spins
//!                                            pinned for SECS, spin too, print {"pid","child"}
//!   pw-workload sleep-on-stdin CPU N         pinned to CPU, print {"pid"}; then for every line
//!                                            "go" on stdin sleep 1 ms N times and print
//!                                            {"slept": N}, until "exit" or EOF (a thread with a
//!                                            few waits that then sleeps for as long as the test
//!                                            likes)
//!   pw-workload tcp-serve ADDR:PORT          accept one connection, read it to EOF, close,
//!                                            print {"pid","bytes"}
//!   pw-workload tcp-send ADDR:PORT SECS      connect, write for SECS, shut down and wait for
//!                                            the peer's EOF (everything acknowledged), print
//!                                            {"pid","tid","local","bytes"}
//!   pw-workload rt-hog SECS CPU              spin as SCHED_FIFO 1 pinned to CPU for SECS
//!   pw-workload step-clock NS [HOW [may-fail]] step CLOCK_REALTIME by NS (signed) with
//!                                            clock_settime (HOW settime, the default) or
//!                                            adjtimex ADJ_SETOFFSET (HOW setoffset), print
//!                                            {"pid","requested_ns"}; may-fail prints the
//!                                            failure's "errno" instead of failing
//!   pw-workload slew-clock US HOLD_SECS      ask the kernel PLL to slew by US µs (adjtimex
//!                                            ADJ_OFFSET with STA_PLL), hold it HOLD_SECS, then
//!                                            restore the status and offset found; print {"pid"}
//!   pw-workload touch-file PATH              drop PATH's page cache, map it, touch every page
//!                                            (MADV_RANDOM: one major fault each), print
//!                                            {"pid","tid","minflt","majflt","addr"} from
//!                                            /proc/self/stat
//!   pw-workload fsync-file PATH BYTES        write BYTES to PATH, fsync it, print
//!                                            {"pid","tid","fsync_ns"} measured around the call,
//!                                            and keep the file open a second longer (as a
//!                                            database keeps its log open)
//!   pw-workload touch-anon MIB               map MIB MiB of anonymous memory without huge pages
//!   pw-workload refault-anon MIB TIMES       fault MIB MiB of anonymous memory TIMES times over
//!                                            and write one byte per 4 KiB page (one minor fault
//!                                            each); print {"pid","minflt"}
//!   pw-workload swap-anon MIB                map MIB MiB of anonymous memory without huge pages,
//!                                            write a non-zero byte to every 4 KiB page, print
//!                                            {"pid","tid","phase":"written"} and wait for a line
//!                                            on stdin (the test lets the cgroup swap it out and
//!                                            lifts the limit); then read every page back (each
//!                                            swapped-out one a swap-in fault), print {"pid",
//!                                            "tid","phase":"read","minflt","majflt"} (the read's
//!                                            deltas from /proc/self/stat) and wait for a line
//!                                            again before exiting (so its delay accounting can
//!                                            be read while it lives)
//!   pw-workload read-file PATH               read PATH to the end (filling the page cache),
//!                                            print {"pid","tid","bytes"}
//!   pw-workload pingpong SECS CPU            two threads pinned to CPU bounce a byte over a
//!                                            pair of pipes for SECS: every wakeup waits in the
//!                                            run queue for the waker to sleep (a storm of short
//!                                            pauses); print {"pid","round_trips"}
//!   pw-workload fork-storm SECS              fork short-lived children (each runs a few
//!                                            threads that yield, then exits) as fast as it can
//!                                            for SECS; print {"pid","children","threads"}
//!   pw-workload fsync-loop PATH COUNT        COUNT times: write 4 KiB at the end of PATH and
//!                                            fdatasync it (a database's commit log); print
//!                                            {"pid","syncs"}
//!   pw-workload msync-file PATH PAGES        create PATH of PAGES pages, map it shared, dirty
//!                                            every page and msync(MS_SYNC) the mapping; print
//!                                            {"pid","addr"}
//!   pw-workload tcp-rr COUNT                 COUNT request/response round trips of 64 bytes
//!                                            between two threads over loopback TCP (an RPC
//!                                            client and server); print {"pid","round_trips"}
//!   pw-workload many-procs N SECS            fork N children that each sleep 1 s at a time
//!                                            for SECS (a host with N live processes), wait for
//!                                            them; print {"pid","children"}
use std::{
    io::BufRead,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; pid 0 is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            panic!(
                "sched_setaffinity to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn set_name(name: &str) {
    let c = std::ffi::CString::new(&name.as_bytes()[..name.len().min(15)]).unwrap();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

fn spin_until(stop: &AtomicBool, deadline: Instant) {
    spin_sleep_until(stop, deadline, 0);
}

/// Spins until the deadline; with `sleep_us` > 0, sleeps that long after every ~500 µs of work.
fn spin_sleep_until(stop: &AtomicBool, deadline: Instant, sleep_us: u64) {
    let mut x = 0u64;
    let mut burst = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if sleep_us > 0 && burst.elapsed() >= Duration::from_micros(500) {
            std::thread::sleep(Duration::from_micros(sleep_us));
            burst = Instant::now();
        }
        for i in 0..1000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

/// This thread's run-queue wait so far: field 2 of /proc/thread-self/schedstat.
fn own_run_delay() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    s.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("run_delay field")
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

fn spin(secs: f64, cpu: Option<usize>, name: &str, threads: usize, sleep_us: u64) {
    if let Some(cpu) = cpu {
        pin(cpu);
    }
    set_name(name);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (1..threads)
        .map(|i| {
            let stop = stop.clone();
            let tname = format!("{name}-t{i}");
            std::thread::spawn(move || {
                if let Some(cpu) = cpu {
                    pin(cpu);
                }
                set_name(&tname);
                spin_sleep_until(&stop, deadline, sleep_us);
                // Last act of the thread: read the kernel's number, then exit.
                serde_json::json!({"tid": gettid(), "comm": tname, "run_delay_ns": own_run_delay()})
            })
        })
        .collect();
    spin_sleep_until(&stop, deadline, sleep_us);
    let mut out =
        vec![serde_json::json!({"tid": gettid(), "comm": name, "run_delay_ns": own_run_delay()})];
    for h in handles {
        out.push(h.join().expect("thread"));
    }
    println!(
        "{}",
        serde_json::json!({"pid": std::process::id(), "threads": out})
    );
}

fn fork_on_stdin(secs: f64, cpu: usize) {
    set_name("pw-parent");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
    // SAFETY: single-threaded process; the child only spins and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        pin(cpu);
        set_name("pw-child");
        spin_until(
            &AtomicBool::new(false),
            Instant::now() + Duration::from_secs_f64(secs),
        );
        // SAFETY: leave the child without running the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    pin(cpu);
    println!(
        "{}",
        serde_json::json!({"pid": std::process::id(), "child": child})
    );
    spin_until(
        &AtomicBool::new(false),
        Instant::now() + Duration::from_secs_f64(secs),
    );
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
}

fn sleep_on_stdin(cpu: usize, n: u32) {
    pin(cpu);
    set_name("pw-sleeper");
    println!("{}", serde_json::json!({"pid": std::process::id()}));
    for line in std::io::stdin().lock().lines() {
        match line.expect("stdin").trim() {
            "go" => {
                for _ in 0..n {
                    std::thread::sleep(Duration::from_millis(1));
                }
                println!("{}", serde_json::json!({"slept": n}));
            }
            _ => return,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| {
        args.get(i)
            .unwrap_or_else(|| panic!("missing argument {i}; see the module docs"))
    };
    match args.get(1).map(String::as_str) {
        Some("spin") => spin(
            arg(2).parse().unwrap(),
            (arg(3) != "any").then(|| arg(3).parse().unwrap()),
            arg(4),
            arg(5).parse().unwrap(),
            args.get(6).map_or(0, |s| s.parse().unwrap()),
        ),
        Some("fork-on-stdin") => fork_on_stdin(arg(2).parse().unwrap(), arg(3).parse().unwrap()),
        Some("sleep-on-stdin") => sleep_on_stdin(arg(2).parse().unwrap(), arg(3).parse().unwrap()),
        Some("tcp-serve") => tcp_serve(arg(2)),
        Some("tcp-send") => tcp_send(arg(2), arg(3).parse().unwrap()),
        Some("rt-hog") => rt_hog(arg(2).parse().unwrap(), arg(3).parse().unwrap()),
        Some("step-clock") => step_clock(
            arg(2).parse().unwrap(),
            args.get(3).map_or("settime", String::as_str),
            args.get(4).is_some_and(|s| s == "may-fail"),
        ),
        Some("slew-clock") => slew_clock(arg(2).parse().unwrap(), arg(3).parse().unwrap()),
        Some("touch-file") => touch_file(arg(2)),
        Some("fsync-file") => fsync_file(arg(2), arg(3).parse().unwrap()),
        Some("read-file") => read_file(arg(2)),
        Some("touch-anon") => touch_anon(arg(2).parse().unwrap()),
        Some("refault-anon") => refault_anon(arg(2).parse().unwrap(), arg(3).parse().unwrap()),
        Some("swap-anon") => swap_anon(arg(2).parse().unwrap()),
        Some("pingpong") => pingpong(arg(2).parse().unwrap(), arg(3).parse().unwrap()),
        Some("fork-storm") => fork_storm(arg(2).parse().unwrap()),
        Some("fsync-loop") => fsync_loop(arg(2), arg(3).parse().unwrap()),
        Some("msync-file") => msync_file(arg(2), arg(3).parse().unwrap()),
        Some("tcp-rr") => tcp_rr(arg(2).parse().unwrap()),
        Some("many-procs") => many_procs(arg(2).parse().unwrap(), arg(3).parse().unwrap()),
        _ => panic!("usage: see the module docs"),
    }
}

fn tcp_serve(addr: &str) {
    use std::io::Read as _;
    let l = std::net::TcpListener::bind(addr).expect("bind");
    // The test waits for this line before connecting.
    println!("{{\"listening\":true}}");
    let (mut c, _) = l.accept().expect("accept");
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    drop(c);
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "bytes": bytes })
    );
}

fn tcp_send(addr: &str, secs: f64) {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    let local = c.local_addr().expect("local addr").to_string();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let chunk = vec![0x5au8; 16 * 1024];
    let mut bytes = 0u64;
    while Instant::now() < deadline {
        c.write_all(&chunk).expect("write");
        bytes += chunk.len() as u64;
        std::thread::sleep(Duration::from_millis(5));
    }
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    // The peer closes after reading our EOF: everything sent has been acknowledged.
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("waiting for the peer's EOF");
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "tid": gettid(), "local": local, "bytes": bytes })
    );
}

fn rt_hog(secs: f64, cpu: usize) {
    pin(cpu);
    set_name("pw-rt-hog");
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: valid pointer to a sched_param; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        panic!(
            "sched_setscheduler(SCHED_FIFO): {}",
            std::io::Error::last_os_error()
        );
    }
    let stop = AtomicBool::new(false);
    spin_until(&stop, Instant::now() + Duration::from_secs_f64(secs));
}

fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn step_clock(ns: i64, how: &str, may_fail: bool) {
    let r = match how {
        "settime" => {
            let target = realtime_ns() + i128::from(ns);
            let ts = libc::timespec {
                tv_sec: (target.div_euclid(1_000_000_000)) as libc::time_t,
                tv_nsec: (target.rem_euclid(1_000_000_000)) as libc::c_long,
            };
            // SAFETY: valid timespec; CLOCK_REALTIME.
            unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }
        }
        "setoffset" => {
            // SAFETY: a zeroed timex is valid.
            let mut tx: libc::timex = unsafe { std::mem::zeroed() };
            tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
            // ADJ_SETOFFSET with ADJ_NANO: `time` is (seconds, nanoseconds), the latter in
            // [0, 1e9).
            tx.time.tv_sec = ns.div_euclid(1_000_000_000) as libc::time_t;
            tx.time.tv_usec = ns.rem_euclid(1_000_000_000) as libc::suseconds_t;
            // SAFETY: valid pointer to a timex.
            unsafe { libc::adjtimex(&mut tx) }.min(0)
        }
        other => panic!("step-clock: unknown method {other:?} (settime or setoffset)"),
    };
    let errno = (r != 0).then(std::io::Error::last_os_error);
    if let Some(e) = &errno
        && !may_fail
    {
        panic!("step-clock {how}: {e}");
    }
    println!(
        "{}",
        serde_json::json!({
            "pid": std::process::id(),
            "requested_ns": ns,
            "errno": errno.and_then(|e| e.raw_os_error()),
        })
    );
}

fn adjtimex(tx: &mut libc::timex) -> i32 {
    // SAFETY: valid pointer to a timex.
    let r = unsafe { libc::adjtimex(tx) };
    if r < 0 {
        panic!(
            "adjtimex(modes {:#x}): {}",
            tx.modes,
            std::io::Error::last_os_error()
        );
    }
    r
}

fn slew_clock(us: i64, hold_secs: f64) {
    const STA_PLL: i32 = 0x0001;
    // SAFETY: a zeroed timex is valid; modes 0 only reads.
    let mut was: libc::timex = unsafe { std::mem::zeroed() };
    adjtimex(&mut was);
    // SAFETY: as above.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_STATUS | libc::ADJ_OFFSET | libc::ADJ_MICRO;
    tx.status = was.status | STA_PLL;
    tx.offset = us;
    adjtimex(&mut tx);
    std::thread::sleep(Duration::from_secs_f64(hold_secs));
    // SAFETY: as above.
    let mut back: libc::timex = unsafe { std::mem::zeroed() };
    back.modes = libc::ADJ_STATUS | libc::ADJ_OFFSET;
    back.status = was.status;
    back.offset = 0;
    adjtimex(&mut back);
    println!("{}", serde_json::json!({ "pid": std::process::id() }));
}

/// (minflt, majflt) of this process from /proc/self/stat (fields 10 and 12).
fn fault_counts() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    (f[7].parse().unwrap(), f[9].parse().unwrap())
}

fn touch_file(path: &str) {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path).expect("open");
    let len = f.metadata().expect("stat").len() as usize;
    // SAFETY: valid fd and length; the mapping is only read through `p` while it exists.
    unsafe {
        // Clean pages (the test synced the file): DONTNEED drops them from the page cache.
        assert_eq!(
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED),
            0
        );
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::madvise(p, len, libc::MADV_RANDOM), 0);
        let mut sum = 0u64;
        for off in (0..len).step_by(4096) {
            sum = sum.wrapping_add(u64::from(std::ptr::read_volatile(p.cast::<u8>().add(off))));
        }
        std::hint::black_box(sum);
        let (minflt, majflt) = fault_counts();
        println!(
            "{}",
            serde_json::json!({"pid": std::process::id(), "tid": gettid(), "minflt": minflt, "majflt": majflt, "addr": p as u64, "len": len})
        );
        // Keep the mapping while pausewatch (which collects every 20 ms) names the file
        // behind the last faults from /proc/<pid>/maps, as a real process would.
        std::thread::sleep(std::time::Duration::from_millis(300));
        libc::munmap(p, len);
    }
}

fn fsync_file(path: &str, bytes: usize) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(&vec![0x5au8; bytes]).expect("write");
    let t = Instant::now();
    f.sync_all().expect("fsync");
    let fsync_ns = t.elapsed().as_nanos() as u64;
    println!(
        "{}",
        serde_json::json!({"pid": std::process::id(), "tid": gettid(), "fsync_ns": fsync_ns})
    );
    std::thread::sleep(Duration::from_secs(1));
    drop(f);
}

fn read_file(path: &str) {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        match f.read(&mut buf).expect("read") {
            0 => break,
            n => bytes += n as u64,
        }
    }
    println!(
        "{}",
        serde_json::json!({"pid": std::process::id(), "tid": gettid(), "bytes": bytes})
    );
}

/// A fresh private anonymous mapping of `len` bytes without huge pages (one fault per 4 KiB
/// page); it lives until unmapped or the process exits.
fn anon_mapping(len: usize) -> *mut u8 {
    // SAFETY: mmap of a fresh anonymous region (no existing memory is affected), and madvise on
    // exactly that region.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::madvise(p, len, libc::MADV_NOHUGEPAGE), 0);
        p.cast::<u8>()
    }
}

fn touch_anon(mib: usize) {
    let len = mib << 20;
    let p = anon_mapping(len);
    // SAFETY: written only inside the mapping, then unmapped.
    unsafe {
        for off in (0..len).step_by(4096) {
            std::ptr::write_volatile(p.add(off), 1);
        }
        libc::munmap(p.cast(), len);
    }
    println!(
        "{}",
        serde_json::json!({"pid": std::process::id(), "minflt": fault_counts().0})
    );
}

/// Faults every page of `mib` MiB of anonymous memory `times` times, giving the pages back
/// (MADV_DONTNEED) in between: each fault takes a page the guest freed a moment before, which
/// the hypervisor already backs, so the time is the kernel's fault path and nothing of the
/// host's.
fn refault_anon(mib: usize, times: usize) {
    let len = mib << 20;
    let p = anon_mapping(len);
    // SAFETY: written only inside the mapping, then unmapped.
    unsafe {
        for _ in 0..times {
            for off in (0..len).step_by(4096) {
                std::ptr::write_volatile(p.add(off), 1);
            }
            assert_eq!(libc::madvise(p.cast(), len, libc::MADV_DONTNEED), 0);
        }
        libc::munmap(p.cast(), len);
    }
    println!(
        "{}",
        serde_json::json!({"pid": std::process::id(), "minflt": fault_counts().0})
    );
}

fn swap_anon(mib: usize) {
    let len = mib << 20;
    let wait_line = || {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
    };
    let p = anon_mapping(len);
    for off in (0..len).step_by(4096) {
        // SAFETY: inside the mapping. Non-zero: an all-zero page is never written to swap.
        unsafe { std::ptr::write_volatile(p.add(off), (off >> 12) as u8 | 1) };
    }
    let (pid, tid) = (std::process::id(), gettid());
    println!(
        "{}",
        serde_json::json!({"pid": pid, "tid": tid, "phase": "written"})
    );
    wait_line();
    let (minflt0, majflt0) = fault_counts();
    let mut sum = 0u64;
    for off in (0..len).step_by(4096) {
        // SAFETY: inside the mapping.
        sum += u64::from(unsafe { std::ptr::read_volatile(p.add(off)) });
    }
    let (minflt, majflt) = fault_counts();
    // One more fault (a fresh page: minor), as any thread that goes on running takes: pausewatch
    // tells a fault was major from the kernel's count at the thread's next fault (or exit), so
    // without it the reads' last fault would be settled only when this process exits.
    // SAFETY: a fresh private anonymous page, written once and unmapped.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        std::ptr::write_volatile(page.cast::<u8>(), 1);
        libc::munmap(page, 4096);
    }
    println!(
        "{}",
        serde_json::json!({"pid": pid, "tid": tid, "phase": "read", "minflt": minflt - minflt0, "majflt": majflt - majflt0, "sum": sum})
    );
    wait_line();
}

fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        0,
        "pipe2"
    );
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

fn pingpong(secs: f64, cpu: usize) {
    use std::io::{Read as _, Write as _};
    set_name("pw-pingpong");
    let (mut a_rx, mut a_tx) = pipe();
    let (mut b_rx, mut b_tx) = pipe();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let echo = std::thread::spawn(move || {
        pin(cpu);
        let mut byte = [0u8];
        // Ends when the other side closes its end (read returns 0).
        while a_rx.read(&mut byte).unwrap_or(0) == 1 {
            if b_tx.write_all(&byte).is_err() {
                break;
            }
        }
    });
    pin(cpu);
    let mut round_trips = 0u64;
    let mut byte = [1u8];
    while Instant::now() < deadline {
        for _ in 0..1000 {
            a_tx.write_all(&byte).unwrap();
            b_rx.read_exact(&mut byte).unwrap();
        }
        round_trips += 1000;
    }
    drop(a_tx);
    echo.join().unwrap();
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "round_trips": round_trips })
    );
}

fn fork_storm(secs: f64) {
    set_name("pw-forkstorm");
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (mut children, mut threads) = (0u64, 0u64);
    while Instant::now() < deadline {
        // SAFETY: this process is single-threaded here, so the child may create threads; it
        // uses only libc calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // Three threads that each yield a few times, so that each has scheduler state.
            let mut tids = [0 as libc::pthread_t; 3];
            extern "C" fn body(_: *mut libc::c_void) -> *mut libc::c_void {
                for _ in 0..4 {
                    // SAFETY: no preconditions.
                    unsafe { libc::sched_yield() };
                }
                std::ptr::null_mut()
            }
            for t in &mut tids {
                // SAFETY: `t` is valid storage; default attributes; `body` ignores its argument.
                unsafe { libc::pthread_create(t, std::ptr::null(), body, std::ptr::null_mut()) };
            }
            for t in tids {
                // SAFETY: joining threads created above.
                unsafe { libc::pthread_join(t, std::ptr::null_mut()) };
            }
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        children += 1;
        threads += 3;
    }
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "children": children, "threads": threads })
    );
}

fn fsync_loop(path: &str, count: u64) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let block = [0x5au8; 4096];
    for _ in 0..count {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
    }
    drop(f);
    let _ = std::fs::remove_file(path);
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "syncs": count })
    );
}

fn msync_file(path: &str, pages: usize) {
    let len = pages * 4096;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    f.set_len(len as u64).expect("set_len");
    // SAFETY: a fresh shared mapping of a file of `len` bytes that this process owns.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    for i in 0..pages {
        // SAFETY: within the mapping.
        unsafe { *(p as *mut u8).add(i * 4096) = 0x5a };
    }
    // SAFETY: the mapping made above.
    let r = unsafe { libc::msync(p, len, libc::MS_SYNC) };
    assert_eq!(r, 0, "msync: {}", std::io::Error::last_os_error());
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "addr": p as u64 })
    );
    // SAFETY: the mapping made above, not used after.
    unsafe { libc::munmap(p, len) };
}

fn tcp_rr(count: u64) {
    use std::io::{Read as _, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("local_addr");
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf).expect("server write");
        }
    });
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let mut buf = [7u8; 64];
    for _ in 0..count {
        c.write_all(&buf).expect("client write");
        c.read_exact(&mut buf).expect("client read");
    }
    drop(c);
    server.join().expect("server thread");
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "round_trips": count })
    );
}

fn many_procs(n: u32, secs: f64) {
    set_name("pw-manyprocs");
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut pids = Vec::new();
    for _ in 0..n {
        // SAFETY: single-threaded; the child only sleeps and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_secs(1));
            }
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        pids.push(pid);
    }
    for pid in &pids {
        let mut status = 0;
        // SAFETY: waiting for our own children.
        unsafe { libc::waitpid(*pid, &mut status, 0) };
    }
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "children": pids.len() })
    );
}
