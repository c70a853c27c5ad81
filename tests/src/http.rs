//! A static file server on 127.0.0.1 for tests and benchmarks: GET with byte ranges, one
//! thread per connection, stopped when dropped. VMs reach it at 10.0.2.2:<port>. It can be told
//! to misbehave (hang, drop connections, answer 5xx or garbage) to test the agent's handling.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How every request is answered while set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Read the request, never answer.
    Hang,
    /// Close the connection without an answer.
    Reset,
    /// Answer with this status and no body.
    Status(u16),
    /// Answer 200 with bytes that are no file of the feed.
    Garbage,
}

pub struct FileServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    fault: Arc<Mutex<Option<Fault>>>,
}

impl FileServer {
    pub fn start(root: &Path) -> std::io::Result<FileServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let fault = Arc::new(Mutex::new(None));
        let fault2 = fault.clone();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = stream {
                    let root = root.clone();
                    let fault = *fault2.lock().unwrap_or_else(|e| e.into_inner());
                    let stop = stop2.clone();
                    std::thread::spawn(move || {
                        let _ = serve(s, &root, fault, &stop);
                    });
                }
            }
        });
        Ok(FileServer { port, stop, fault })
    }

    /// Misbehave from the next connection on (`None`: serve files again).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut stream: TcpStream, root: &Path, fault: Option<Fault>, stop: &AtomicBool) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut from = 0u64;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            from = r.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    match fault {
        None => {}
        Some(Fault::Hang) => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(());
        }
        Some(Fault::Reset) => return stream.shutdown(std::net::Shutdown::Both),
        Some(Fault::Status(code)) => {
            return write!(stream, "HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        Some(Fault::Garbage) => {
            let body: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
            return stream.write_all(&body);
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let file: Option<PathBuf> = (!path.split('/').any(|c| c == "..")).then(|| root.join(path.trim_start_matches('/')));
    let Some(mut f) = file.and_then(|p| std::fs::File::open(p).ok()) else {
        return stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    let len = f.metadata()?.len();
    let from = from.min(len);
    f.seek(SeekFrom::Start(from))?;
    let status = if from > 0 { "206 Partial Content" } else { "200 OK" };
    write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", len - from)?;
    std::io::copy(&mut f.take(len - from), &mut stream)?;
    stream.flush()
}

/// The answer (status line, headers and body) to `GET /` on the test machine's loopback `port`
/// (forwarded to a VM), retried until it answers 200 or `deadline` passes (a container starts
/// after its host is ready).
pub fn get_until(port: u16, deadline: Duration) -> anyhow::Result<String> {
    get_answer(port, "/", deadline)
}

/// The body alone of `GET path`, retried as `get_until` does.
pub fn get_until_path(port: u16, path: &str, deadline: Duration) -> anyhow::Result<String> {
    let answer = get_answer(port, path, deadline)?;
    Ok(answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

fn get_answer(port: u16, path: &str, deadline: Duration) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let start = std::time::Instant::now();
    let mut last = String::new();
    while start.elapsed() < deadline {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: cairn\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) if body.starts_with("HTTP/1.") && body.contains(" 200 ") => return Ok(body),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        // QEMU accepts a forwarded connection even when nothing listens in the guest (the read
        // then times out): pace the retries rather than spin.
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("nothing answered 200 to GET {path} on forwarded port {port} within {deadline:?}; last: {last}")
}

/// Serves `app` on 127.0.0.1 from a thread of its own until the process ends; returns the port.
pub fn serve_router(app: axum::Router) -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            axum::serve(listener, app).await.expect("serving");
        });
    });
    Ok(port)
}
