//! Where NDJSON lines go: a writer thread behind a byte-bounded queue, so a slow or stalled
//! consumer (a full pipe, a slow disk) costs dropped lines, counted, and never stalls the
//! agent (whose stall would fill the ring buffer and lose kernel events instead).
//!
//! The agent writes whole lines into a `Spool` and flushes it; each flush hands one chunk of
//! whole lines to the thread. A file sink rotates by size at line boundaries: FILE, FILE.1 …
//! FILE.KEEP, oldest last.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

/// Chunks are handed over at this size even between flushes (whole lines only).
const CHUNK_BYTES: usize = 64 * 1024;

/// Counters shared with the writer thread.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Lines not queued because the queue was full (the consumer is too slow).
    pub dropped_lines: AtomicU64,
    /// Lines the sink refused (disk full, closed pipe).
    pub failed_lines: AtomicU64,
    /// Files rotated.
    pub rotations: AtomicU64,
    queued_bytes: AtomicUsize,
    /// A spell of failed writes that has ended: (lines lost in it, why), until the agent
    /// reports it in the recording.
    recovered: std::sync::Mutex<Option<(u64, String)>>,
}

impl SpoolStats {
    /// The last spell of failed writes, once writing works again (taken: reported once).
    pub fn take_recovery(&self) -> Option<(u64, String)> {
        self.recovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

/// Size-based rotation of an NDJSON file.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: u32,
}

enum Sink {
    Stdout(std::io::Stdout),
    File {
        path: PathBuf,
        file: File,
        written: u64,
        rotation: Rotation,
    },
    #[cfg(test)]
    Test(Box<dyn Write + Send>),
}

fn lines_in(chunk: &[u8]) -> u64 {
    chunk.iter().filter(|&&b| b == b'\n').count() as u64
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// FILE → FILE.1 → … → FILE.KEEP (dropped beyond); with KEEP 0, FILE is removed.
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Sink {
    /// Where lines go, for messages.
    fn name(&self) -> String {
        match self {
            Sink::Stdout(_) => "stdout".into(),
            Sink::File { path, .. } => path.display().to_string(),
            #[cfg(test)]
            Sink::Test(_) => "test".into(),
        }
    }

    /// Writes whole lines; on failure, the lines not written (the file is cut back to its
    /// last whole line, so a full disk never leaves half a line behind).
    fn write_chunk(
        &mut self,
        chunk: &[u8],
        stats: &SpoolStats,
    ) -> Result<(), (std::io::Error, u64)> {
        match self {
            Sink::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(chunk)
                    .and_then(|()| l.flush())
                    .map_err(|e| (e, lines_in(chunk)))
            }
            Sink::File {
                path,
                file,
                written,
                rotation,
            } => {
                // Whole lines only, a file never beyond the size unless one line alone is.
                let mut rest = chunk;
                while !rest.is_empty() {
                    let room = rotation.max_bytes.saturating_sub(*written) as usize;
                    let mut take = if rest.len() <= room {
                        rest.len()
                    } else {
                        rest[..room]
                            .iter()
                            .rposition(|&b| b == b'\n')
                            .map_or(0, |i| i + 1)
                    };
                    if take == 0 {
                        if *written > 0 {
                            let rotated = file.flush().and_then(|()| {
                                rotate(path, rotation.keep)?;
                                open_append(path)
                            });
                            *file = rotated.map_err(|e| (e, lines_in(rest)))?;
                            *written = 0;
                            stats.rotations.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        take = rest
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(rest.len(), |i| i + 1);
                    }
                    if let Err(e) = file.write_all(&rest[..take]) {
                        // Part of it may have gone out: cut it off.
                        let _ = file.set_len(*written);
                        return Err((e, lines_in(rest)));
                    }
                    *written += take as u64;
                    rest = &rest[take..];
                }
                Ok(())
            }
            #[cfg(test)]
            Sink::Test(w) => w.write_all(chunk).map_err(|e| (e, lines_in(chunk))),
        }
    }
}

/// The agent's end of the queue. `Write` it whole lines; `flush` hands them over.
pub struct Spool {
    pending: Vec<u8>,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    done: Option<mpsc::Receiver<()>>,
    pub stats: Arc<SpoolStats>,
    max_queued: usize,
}

impl Spool {
    pub fn stdout(max_queued: usize) -> Self {
        Self::start(Sink::Stdout(std::io::stdout()), max_queued)
    }

    /// Opens (appending to) `path`; an error says which file and why.
    pub fn file(path: &Path, rotation: Rotation, max_queued: usize) -> anyhow::Result<Self> {
        let file = open_append(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot write NDJSON to {}: {e} (check the directory exists and is writable)",
                path.display()
            )
        })?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self::start(
            Sink::File {
                path: path.to_path_buf(),
                file,
                written,
                rotation,
            },
            max_queued,
        ))
    }

    fn start(mut sink: Sink, max_queued: usize) -> Self {
        let stats = Arc::new(SpoolStats::default());
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let (done_tx, done) = mpsc::channel();
        let st = stats.clone();
        // Rotation creates files beside the recording, in a directory root may not own: a
        // file sink keeps the right to write there, nothing else.
        let keep: caps::CapsHashSet = match &sink {
            Sink::File { .. } => [caps::Capability::CAP_DAC_OVERRIDE].into(),
            _ => caps::CapsHashSet::new(),
        };
        crate::probe::privileges::spawn_reduced(
            std::thread::Builder::new().name("pw-ndjson".into()),
            keep,
            move || {
                // The current spell of failed writes: (lines lost, the first error, whether
                // stderr heard of it). A disk that stays nearly full alternates short spells
                // (a small chunk still fits): stderr hears at most once a minute.
                let mut spell: Option<(u64, String, bool)> = None;
                let mut warned_at: Option<std::time::Instant> = None;
                for chunk in rx {
                    st.queued_bytes.fetch_sub(chunk.len(), Ordering::Relaxed);
                    match sink.write_chunk(&chunk, &st) {
                        Ok(()) => {
                            if let Some((lost, why, told)) = spell.take() {
                                if told {
                                    eprintln!(
                                        "pausewatch: writing NDJSON to {} works again; {lost} lines were lost ({why})",
                                        sink.name()
                                    );
                                }
                                let mut r = st.recovered.lock().unwrap_or_else(|p| p.into_inner());
                                let before = r.as_ref().map_or(0, |(n, _)| *n);
                                *r = Some((before + lost, why));
                            }
                        }
                        Err((e, lost)) => {
                            st.failed_lines.fetch_add(lost, Ordering::Relaxed);
                            match &mut spell {
                                Some((n, _, _)) => *n += lost,
                                None => {
                                    let tell = warned_at
                                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                                    if tell {
                                        // The journal hears of it even when the recording
                                        // cannot.
                                        eprintln!(
                                            "pausewatch: cannot write NDJSON to {}: {e}; tracing goes on, and lines are counted as lost until writing works again",
                                            sink.name()
                                        );
                                        warned_at = Some(std::time::Instant::now());
                                    }
                                    spell = Some((lost, e.to_string(), tell));
                                }
                            }
                        }
                    }
                }
                if let Some((lost, why, _)) = spell {
                    eprintln!(
                        "pausewatch: {lost} NDJSON lines could not be written to {} ({why}), the end-of-run lines among them",
                        sink.name()
                    );
                }
                let _ = done_tx.send(());
            },
        )
        .expect("spawning the NDJSON writer thread");
        Self {
            pending: Vec::with_capacity(CHUNK_BYTES),
            tx: Some(tx),
            done: Some(done),
            stats,
            max_queued,
        }
    }

    #[cfg(test)]
    fn test(w: Box<dyn Write + Send>, max_queued: usize) -> Self {
        Self::start(Sink::Test(w), max_queued)
    }

    /// Bytes gathered before they are handed over: at most a quarter of the queue, so that a
    /// small `--json-buffer` still holds several chunks.
    fn chunk_limit(&self) -> usize {
        CHUNK_BYTES.min((self.max_queued / 4).max(1))
    }

    /// Hands the pending whole lines to the writer thread, or drops and counts them when the
    /// queue already holds `max_queued` bytes.
    fn hand_over(&mut self) {
        let end = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => return,
        };
        let rest = self.pending.split_off(end);
        let chunk = std::mem::replace(&mut self.pending, rest);
        let len = chunk.len();
        let queued = &self.stats.queued_bytes;
        // An empty queue takes any chunk: chunks are bounded by `chunk_limit`, and a chunk
        // larger than the whole queue must not be refused forever.
        let refused = match &self.tx {
            Some(tx)
                if queued.load(Ordering::Relaxed) == 0
                    || queued.load(Ordering::Relaxed) + len <= self.max_queued =>
            {
                queued.fetch_add(len, Ordering::Relaxed);
                tx.send(chunk).err().map(|e| {
                    queued.fetch_sub(len, Ordering::Relaxed);
                    e.0
                })
            }
            _ => Some(chunk),
        };
        if let Some(chunk) = refused {
            self.stats
                .dropped_lines
                .fetch_add(lines_in(&chunk), Ordering::Relaxed);
        }
    }

    /// Waits up to `timeout` for everything queued to be written (at exit).
    pub fn finish(&mut self, timeout: Duration) -> bool {
        self.hand_over();
        drop(self.tx.take());
        match self.done.take() {
            Some(done) => done.recv_timeout(timeout).is_ok(),
            None => true,
        }
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= self.chunk_limit() && buf.ends_with(b"\n") {
            self.hand_over();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over();
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.finish(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, mpsc::Receiver};

    /// A consumer that writes nothing until told to, like a stalled pipe reader.
    struct Stalled(Receiver<()>, Arc<Mutex<Vec<u8>>>);
    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            self.1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink that fails like a full disk until space is freed: what failed is counted, and
    /// the end of the spell is reported once, with its count and reason.
    #[test]
    fn a_spell_of_failed_writes_is_counted_and_its_end_reported_once() {
        struct Full(Arc<std::sync::atomic::AtomicBool>, Arc<Mutex<Vec<u8>>>);
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.0.load(Ordering::SeqCst) {
                    return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
                }
                self.1.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let full = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut s = Spool::test(Box::new(Full(full.clone(), got.clone())), 1 << 20);
        let settle = |s: &Spool| {
            let t = std::time::Instant::now();
            while s.stats.queued_bytes.load(Ordering::SeqCst) > 0 {
                assert!(t.elapsed() < Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for i in 0..3 {
            writeln!(s, "lost {i}").unwrap();
        }
        s.flush().unwrap();
        settle(&s);
        assert_eq!(s.stats.failed_lines.load(Ordering::SeqCst), 3);
        assert_eq!(s.stats.take_recovery(), None, "still failing");
        full.store(false, Ordering::SeqCst);
        writeln!(s, "kept").unwrap();
        s.flush().unwrap();
        settle(&s);
        let (lost, why) = s.stats.take_recovery().expect("the spell ended");
        assert_eq!(lost, 3);
        assert!(why.contains("No space left"), "{why}");
        assert_eq!(s.stats.take_recovery(), None, "reported once");
        assert!(s.finish(Duration::from_secs(5)));
        assert_eq!(&*got.lock().unwrap(), b"kept\n");
    }

    /// A burst bigger than the whole queue, to a consumer that keeps up, loses nothing: chunks
    /// are smaller than the queue (with 64 KiB chunks and a 64 KiB queue every full chunk
    /// used to be refused, and a busy host's pause lines all dropped).
    #[test]
    fn a_burst_larger_than_the_queue_reaches_a_fast_consumer() {
        struct Fast(Arc<Mutex<Vec<u8>>>);
        impl Write for Fast {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut s = Spool::test(Box::new(Fast(got.clone())), 64 * 1024);
        let lines = 5000;
        for i in 0..lines {
            writeln!(s, "{i:0>60}").unwrap();
            if i % 50 == 0 {
                // Let the writer keep up, as a reading consumer would.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        assert!(s.finish(Duration::from_secs(5)));
        assert_eq!(s.stats.dropped_lines.load(Ordering::Relaxed), 0);
        assert_eq!(
            String::from_utf8(got.lock().unwrap().clone())
                .unwrap()
                .lines()
                .count(),
            lines
        );
        // A single chunk larger than the queue is still taken when the queue is empty.
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut s = Spool::test(Box::new(Fast(got.clone())), 16);
        writeln!(s, "{}", "x".repeat(100)).unwrap();
        assert!(s.finish(Duration::from_secs(5)));
        assert_eq!(got.lock().unwrap().len(), 101);
    }

    #[test]
    fn a_stalled_consumer_costs_counted_lines_not_a_stall() {
        let (go, wait) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut s = Spool::test(Box::new(Stalled(wait, got.clone())), 100);
        // The first chunk is taken by the writer, which then blocks; the queue then fills.
        for i in 0..50 {
            writeln!(s, "line {i:04}").unwrap();
            s.flush().unwrap();
        }
        let dropped = s.stats.dropped_lines.load(Ordering::Relaxed);
        assert!(dropped > 0 && dropped < 50, "dropped {dropped}");
        for _ in 0..100 {
            let _ = go.send(());
        }
        assert!(s.finish(Duration::from_secs(5)));
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count() as u64 + dropped, 50);
        // Only whole lines reach the sink.
        assert!(text.lines().all(|l| l.len() == 9 && l.starts_with("line ")));
    }

    #[test]
    fn files_rotate_at_line_boundaries_and_keep_the_newest() {
        let dir = std::env::temp_dir().join(format!("pw-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.ndjson");
        let mut s = Spool::file(
            &path,
            Rotation {
                max_bytes: 100,
                keep: 2,
            },
            1 << 20,
        )
        .unwrap();
        for i in 0..40 {
            // 10 bytes per line, one chunk per line, except one chunk of 25 lines (250 bytes,
            // more than a file holds) that is spread over files at line boundaries.
            writeln!(s, "line {i:04}").unwrap();
            if !(5..30).contains(&i) {
                s.flush().unwrap();
            }
        }
        assert!(s.finish(Duration::from_secs(5)));
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let (cur, one, two) = (
            read(&path),
            read(&rotated(&path, 1)),
            read(&rotated(&path, 2)),
        );
        assert!(!rotated(&path, 3).exists());
        assert_eq!(cur.lines().count(), 10);
        assert!(cur.starts_with("line 0030") && cur.ends_with("line 0039\n"));
        assert!(one.starts_with("line 0020") && two.starts_with("line 0010"));
        assert_eq!(s.stats.rotations.load(Ordering::Relaxed), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_file_is_a_clear_error() {
        let e = Spool::file(
            Path::new("/nonexistent-dir/x.ndjson"),
            Rotation {
                max_bytes: 1,
                keep: 1,
            },
            1,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("/nonexistent-dir/x.ndjson") && e.contains("writable"),
            "{e}"
        );
    }
}
