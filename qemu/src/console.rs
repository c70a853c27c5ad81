//! The serial console: QEMU serves it on a unix socket; a reader thread appends everything to
//! memory and to a log file, and wakes waiters.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Console {
    state: Mutex<State>,
    changed: Condvar,
    writer: Arc<Mutex<UnixStream>>,
}

/// A handle that writes to a VM's serial console from another thread.
#[derive(Clone)]
pub struct ConsoleWriter(Arc<Mutex<UnixStream>>);

impl ConsoleWriter {
    pub fn send(&self, bytes: &[u8]) -> Result<()> {
        self.0.lock().expect("console lock").write_all(bytes).context("writing to the VM console")
    }
}

struct State {
    bytes: Vec<u8>,
    /// When each read arrived: (bytes received by then, instant), for timelines.
    arrivals: Vec<(usize, Instant)>,
    closed: bool,
}

pub(crate) fn connect(sock: &Path, log: &Path, echo: bool, child: &mut Child) -> Result<Arc<Console>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) => {
                if let Some(status) = child.try_wait()? {
                    bail!("QEMU exited ({status}) before serving its console");
                }
                if Instant::now() >= deadline {
                    return Err(e).context("connecting to the VM console");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let console = Arc::new(Console {
        state: Mutex::new(State { bytes: Vec::new(), arrivals: Vec::new(), closed: false }),
        changed: Condvar::new(),
        writer: Arc::new(Mutex::new(stream.try_clone()?)),
    });
    let mut log = std::fs::File::create(log)?;
    let reader = console.clone();
    let mut stream = stream;
    std::thread::Builder::new().name("vm-console".into()).spawn(move || {
        let mut buf = [0u8; 8192];
        let mut stdout = std::io::stdout();
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _ = log.write_all(&buf[..n]);
            if echo {
                let _ = stdout.write_all(&buf[..n]);
                let _ = stdout.flush();
            }
            let mut st = reader.state.lock().expect("console lock");
            st.bytes.extend_from_slice(&buf[..n]);
            let received = st.bytes.len();
            st.arrivals.push((received, Instant::now()));
            reader.changed.notify_all();
        }
        let mut st = reader.state.lock().expect("console lock");
        st.closed = true;
        reader.changed.notify_all();
    })?;
    Ok(console)
}

impl Console {
    /// Bytes received so far: pass it as `from` to wait only for what comes later.
    pub fn mark(&self) -> usize {
        self.state.lock().expect("console lock").bytes.len()
    }

    /// Everything received after byte `from`.
    pub fn text_from(&self, from: usize) -> String {
        let st = self.state.lock().expect("console lock");
        String::from_utf8_lossy(&st.bytes[from.min(st.bytes.len())..]).into_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.state.lock().expect("console lock").bytes).into_owned()
    }

    /// The first complete line after `from` containing one of `needles`.
    pub fn find_line(&self, needles: &[&str], from: usize) -> Option<(usize, String)> {
        let st = self.state.lock().expect("console lock");
        let text = String::from_utf8_lossy(&st.bytes[from.min(st.bytes.len())..]).into_owned();
        let complete = if st.closed { text.as_str() } else { text.rsplit_once('\n').map(|(a, _)| a).unwrap_or("") };
        complete.lines().find_map(|line| {
            needles.iter().position(|n| line.contains(n)).map(|i| (i, line.trim_end_matches('\r').to_string()))
        })
    }

    /// Every complete line after `from` containing `needle`, with when its end arrived.
    pub fn timed_lines(&self, needle: &str, from: usize) -> Vec<(Instant, String)> {
        let st = self.state.lock().expect("console lock");
        let from = from.min(st.bytes.len());
        let mut out = Vec::new();
        let mut start = from;
        for (i, b) in st.bytes[from..].iter().enumerate() {
            if *b != b'\n' {
                continue;
            }
            let end = from + i + 1;
            let line = String::from_utf8_lossy(&st.bytes[start..end]);
            if line.contains(needle) {
                let at = st.arrivals.iter().find(|(received, _)| *received >= end).map(|(_, t)| *t);
                out.push((at.expect("every byte arrived at some time"), line.trim_end().to_string()));
            }
            start = end;
        }
        out
    }

    pub fn tail(&self, lines: usize) -> String {
        let text = self.text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub(crate) fn wait_change(&self, timeout: Duration) {
        let st = self.state.lock().expect("console lock");
        let len = st.bytes.len();
        let _ = self.changed.wait_timeout_while(st, timeout, |s| s.bytes.len() == len && !s.closed);
    }

    pub(crate) fn wait_closed(&self, timeout: Duration) {
        let st = self.state.lock().expect("console lock");
        let _ = self.changed.wait_timeout_while(st, timeout, |s| !s.closed);
    }

    pub fn send(&self, bytes: &[u8]) -> Result<()> {
        self.writer().send(bytes)
    }

    pub fn writer(&self) -> ConsoleWriter {
        ConsoleWriter(self.writer.clone())
    }
}
