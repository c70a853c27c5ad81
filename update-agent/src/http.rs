//! Feeds over HTTP(S): a `Transport` that asks for byte ranges, and a reader that resumes a
//! download where it broke (a reset, a hang past the read timeout, a 5xx), waiting longer after
//! each failure. The wait is a parameter so tests do not sleep.

use crate::ports::{FetchError, SourceError, Transport};
use std::io::Read;
use std::time::Duration;

pub struct HttpTransport {
    base: String,
    client: reqwest::blocking::Client,
}

/// The agent's HTTP client (feeds, the rollout server, the FleetLock server). The blocking
/// client applies `timeout` to each read and write, not to a whole body: a hung server fails the
/// read, and the resuming reader takes it from there.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .user_agent(concat!("cairn-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl HttpTransport {
    pub fn new(base: &str, read_timeout: Duration) -> Result<HttpTransport, SourceError> {
        let client = client(read_timeout).map_err(|e| SourceError::fetch(base)(network(e)))?;
        Ok(HttpTransport { base: base.trim_end_matches('/').to_string(), client })
    }
}

/// A client-side failure (no connection, a reset, a timeout), with its causes.
pub fn network(e: reqwest::Error) -> FetchError {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    FetchError::Network(text)
}

impl Transport for HttpTransport {
    fn open(&self, path: &str, offset: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        // A rollout server may point at artifacts elsewhere by URL.
        let absolute = path.starts_with("https://") || path.starts_with("http://");
        let url = if absolute { path.to_string() } else { format!("{}/{path}", self.base) };
        let fail = SourceError::fetch(path);
        let mut req = self.client.get(&url);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().map_err(|e| fail(network(e)))?;
        let status = resp.status();
        match (status.as_u16(), offset) {
            (200, 0) | (206, _) => Ok(Box::new(resp)),
            // A server without range support: skip what we have.
            (200, _) => {
                let mut r = resp;
                std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink()).map_err(|e| fail(e.into()))?;
                Ok(Box::new(r))
            }
            (code, _) => Err(fail(FetchError::Status(code))),
        }
    }
}

/// Reads `path` from `transport` to the end, reopening at the current offset after a failure,
/// up to `retries` times, calling `wait` with a doubling delay in between.
pub struct ResumingReader<'a> {
    transport: &'a dyn Transport,
    path: String,
    offset: u64,
    inner: Option<Box<dyn Read + Send>>,
    retries: u32,
    delay: Duration,
    wait: &'a (dyn Fn(Duration) + Sync),
}

impl<'a> ResumingReader<'a> {
    pub fn new(transport: &'a dyn Transport, path: &str, retries: u32, wait: &'a (dyn Fn(Duration) + Sync)) -> Self {
        ResumingReader {
            transport,
            path: path.into(),
            offset: 0,
            inner: None,
            retries,
            delay: Duration::from_millis(500),
            wait,
        }
    }

    fn give_up_or_wait(&mut self, e: std::io::Error) -> std::io::Result<()> {
        if self.retries == 0 {
            return Err(e);
        }
        self.retries -= 1;
        (self.wait)(self.delay);
        self.delay = (self.delay * 2).min(Duration::from_secs(60));
        Ok(())
    }
}

impl Read for ResumingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.inner.is_none() {
                match self.transport.open(&self.path, self.offset) {
                    Ok(r) => self.inner = Some(r),
                    Err(e) if e.is_transient() => {
                        self.give_up_or_wait(std::io::Error::other(e))?;
                        continue;
                    }
                    Err(e) => return Err(std::io::Error::other(e)),
                }
            }
            match self.inner.as_mut().expect("opened").read(buf) {
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.inner = None;
                    self.give_up_or_wait(e)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// How the test server misbehaves on each request, in order; then it behaves.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// Send half the body, then reset the connection.
        CutHalfway,
        Status500,
        Status404,
        /// Ignore Range and send the whole file with 200.
        NoRanges,
        /// Send half the body, then stall with the connection open.
        HangHalfway,
    }

    /// A real HTTP/1.1 server on 127.0.0.1 serving `body` at every path.
    fn serve(body: Vec<u8>, faults: Vec<Fault>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut faults = faults.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut range_from = 0usize;
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range_from = r.trim().trim_end_matches('-').parse().unwrap();
                    }
                }
                let fault = faults.next();
                log2.lock().unwrap().push(format!("{} from {range_from} {fault:?}", first.trim()));
                match fault {
                    Some(Fault::Status500) => {
                        let _ =
                            stream.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    Some(Fault::Status404) => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    Some(Fault::NoRanges) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(&body);
                    }
                    Some(Fault::HangHalfway) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(&body[..body.len() / 2]);
                        let _ = stream.flush();
                        // A stalled server: the client's read timeout must end this, not us.
                        std::thread::spawn(move || {
                            std::thread::sleep(std::time::Duration::from_secs(30));
                            drop(stream);
                        });
                    }
                    cut => {
                        let part = &body[range_from..];
                        let status = if range_from > 0 { "206 Partial Content" } else { "200 OK" };
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            part.len()
                        );
                        let n = if matches!(cut, Some(Fault::CutHalfway)) { part.len() / 2 } else { part.len() };
                        let _ = stream.write_all(&part[..n]);
                    }
                }
            }
        });
        (base, log)
    }

    fn body() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn resumes_after_resets_and_server_errors_with_ranges() {
        let (base, log) = serve(body(), vec![Fault::CutHalfway, Fault::Status500, Fault::CutHalfway]);
        let t = HttpTransport::new(&base, Duration::from_secs(10)).unwrap();
        let waits = Mutex::new(Vec::new());
        let wait = |d: Duration| waits.lock().unwrap().push(d);
        let mut r = ResumingReader::new(&t, "releases/2/usr.img.zst", 5, &wait);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert!(got == body(), "resumed download differs");
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 4, "{log:?}");
        assert!(log[0].contains("from 0"), "{log:?}");
        assert!(log[1].contains("from 1500000"), "resumed at the break: {log:?}");
        assert_eq!(
            *waits.lock().unwrap(),
            vec![Duration::from_millis(500), Duration::from_secs(1), Duration::from_secs(2)]
        );
    }

    #[test]
    fn a_hung_server_times_out_and_the_download_resumes() {
        let (base, log) = serve(body(), vec![Fault::HangHalfway]);
        let t = HttpTransport::new(&base, Duration::from_millis(300)).unwrap();
        let wait = |_: Duration| {};
        let mut got = Vec::new();
        ResumingReader::new(&t, "x", 3, &wait).read_to_end(&mut got).unwrap();
        assert!(got == body());
        let log = log.lock().unwrap().clone();
        assert!(log.len() == 2 && log[1].contains("from 1500000"), "{log:?}");
    }

    #[test]
    fn a_server_without_ranges_still_resumes_correctly() {
        let (base, _) = serve(body(), vec![Fault::CutHalfway, Fault::NoRanges]);
        let t = HttpTransport::new(&base, Duration::from_secs(10)).unwrap();
        let wait = |_: Duration| {};
        let mut got = Vec::new();
        ResumingReader::new(&t, "x", 3, &wait).read_to_end(&mut got).unwrap();
        assert!(got == body());
    }

    #[test]
    fn gives_up_after_its_retries_and_never_retries_a_404() {
        let (base, log) = serve(body(), vec![Fault::Status500; 10]);
        let t = HttpTransport::new(&base, Duration::from_secs(10)).unwrap();
        let wait = |_: Duration| {};
        let mut got = Vec::new();
        let e = ResumingReader::new(&t, "x", 2, &wait).read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("HTTP 500"), "{e}");
        assert_eq!(log.lock().unwrap().len(), 3);
        // A refusal is final: one request, no retry.
        let (base, log) = serve(body(), vec![Fault::Status404]);
        let t = HttpTransport::new(&base, Duration::from_secs(10)).unwrap();
        let e = ResumingReader::new(&t, "x", 2, &wait).read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("HTTP 404"), "{e}");
        assert_eq!(log.lock().unwrap().len(), 1, "not retried");
    }
}
