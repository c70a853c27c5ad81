//! Feeds over HTTP(S): a `Transport` that asks for byte ranges, and a reader that resumes a
//! download where it broke (a reset, a hang past the read timeout, a 5xx), waiting longer after
//! each failure. The wait is a parameter so tests do not sleep.

use crate::ports::{FetchError, SourceError, Transport};
use std::io::Read;
use std::time::Duration;

pub struct HttpTransport {
    base: String,
    client: reqwest::blocking::Client,
    /// The longest one file may take to download, resumptions included.
    download_timeout: Option<Duration>,
}

/// How the agent's HTTP client is set up.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Applied to each read and write, not to a whole body: a hung server fails the read, and
    /// the resuming reader takes it from there.
    pub read_timeout: Duration,
    /// Plain http:// allowed (labs and tests); otherwise every request, redirects and URLs a
    /// server offers included, must be https://.
    pub insecure: bool,
    /// A PEM file of certificate authorities trusted besides the system's.
    pub ca_bundle: Option<std::path::PathBuf>,
}

impl ClientOptions {
    /// Plain http allowed: for tests against loopback servers.
    pub fn insecure(read_timeout: Duration) -> ClientOptions {
        ClientOptions { read_timeout, insecure: true, ca_bundle: None }
    }
}

/// Why the HTTP client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ca_bundle {path}: {message}")]
    CaBundle { path: String, message: String },
    #[error("{0}")]
    Build(#[from] reqwest::Error),
}

/// The agent's HTTP client (feeds, the rollout server, the FleetLock server).
pub fn client(options: &ClientOptions) -> Result<reqwest::blocking::Client, ClientError> {
    let mut builder = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(options.read_timeout)
        .https_only(!options.insecure)
        .user_agent(concat!("cairn-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &options.ca_bundle {
        let bad = |message: String| ClientError::CaBundle { path: path.display().to_string(), message };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        if certificates.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder.build()?)
}

impl HttpTransport {
    pub fn new(base: &str, client: reqwest::blocking::Client) -> HttpTransport {
        HttpTransport { base: base.trim_end_matches('/').to_string(), client, download_timeout: None }
    }

    /// Gives up on a download that takes longer than `limit` in all, however it trickles.
    pub fn with_download_timeout(self, limit: Duration) -> HttpTransport {
        HttpTransport { download_timeout: Some(limit), ..self }
    }

    /// A transport for tests against loopback servers (plain http, `read_timeout`).
    pub fn insecure(base: &str, read_timeout: Duration) -> Result<HttpTransport, SourceError> {
        let client = client(&ClientOptions::insecure(read_timeout))
            .map_err(|e| SourceError::fetch(base)(FetchError::Network(e.to_string())))?;
        Ok(HttpTransport::new(base, client))
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
    fn download_timeout(&self) -> Option<Duration> {
        self.download_timeout
    }

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
/// A download past the transport's `download_timeout` is abandoned, however it trickles.
pub struct ResumingReader<'a> {
    transport: &'a dyn Transport,
    path: String,
    offset: u64,
    inner: Option<Box<dyn Read + Send>>,
    retries: u32,
    delay: Duration,
    wait: &'a (dyn Fn(Duration) + Sync),
    deadline: Option<(std::time::Instant, Duration)>,
}

impl<'a> ResumingReader<'a> {
    pub fn new(transport: &'a dyn Transport, path: &str, retries: u32, wait: &'a (dyn Fn(Duration) + Sync)) -> Self {
        let deadline = transport.download_timeout().map(|limit| (std::time::Instant::now() + limit, limit));
        ResumingReader {
            transport,
            path: path.into(),
            offset: 0,
            inner: None,
            retries,
            delay: Duration::from_millis(500),
            wait,
            deadline,
        }
    }

    fn past_deadline(&self) -> std::io::Result<()> {
        match self.deadline {
            Some((at, limit)) if std::time::Instant::now() >= at => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{}: abandoned after {} s (download_timeout) at byte {}",
                    self.path,
                    limit.as_secs(),
                    self.offset
                ),
            )),
            _ => Ok(()),
        }
    }

    fn give_up_or_wait(&mut self, e: std::io::Error) -> std::io::Result<()> {
        self.past_deadline()?;
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
            self.past_deadline()?;
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
        /// Send the body a byte every 20 ms: every read gets something, the whole never ends.
        Drip,
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
                    Some(Fault::Drip) => {
                        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        std::thread::spawn(move || {
                            for b in body.iter().skip(range_from) {
                                if stream.write_all(&[*b]).is_err() {
                                    return;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(20));
                            }
                        });
                        return;
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
        let t = HttpTransport::insecure(&base, Duration::from_secs(10)).unwrap();
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

    /// A feed that drips bytes (each read succeeds, so no read timeout fires) is abandoned at
    /// the whole download's deadline, not resumed into another one.
    #[test]
    fn a_dripping_feed_is_abandoned_at_the_download_deadline() {
        let (base, log) = serve(body(), vec![Fault::Drip, Fault::Drip, Fault::Drip]);
        let t = HttpTransport::insecure(&base, Duration::from_secs(10))
            .unwrap()
            .with_download_timeout(Duration::from_secs(1));
        let wait = |_: Duration| {};
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let e = ResumingReader::new(&t, "usr.img.zst", 3, &wait).read_to_end(&mut got).unwrap_err();
        let took = started.elapsed();
        assert!(e.to_string().contains("abandoned after 1 s (download_timeout)"), "{e}");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "{took:?}");
        assert!(!got.is_empty() && got.len() < 1000, "{} bytes dripped in", got.len());
        assert_eq!(log.lock().unwrap().len(), 1, "not reopened after the deadline");
    }

    #[test]
    fn a_hung_server_times_out_and_the_download_resumes() {
        let (base, log) = serve(body(), vec![Fault::HangHalfway]);
        let t = HttpTransport::insecure(&base, Duration::from_millis(300)).unwrap();
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
        let t = HttpTransport::insecure(&base, Duration::from_secs(10)).unwrap();
        let wait = |_: Duration| {};
        let mut got = Vec::new();
        ResumingReader::new(&t, "x", 3, &wait).read_to_end(&mut got).unwrap();
        assert!(got == body());
    }

    #[test]
    fn gives_up_after_its_retries_and_never_retries_a_404() {
        let (base, log) = serve(body(), vec![Fault::Status500; 10]);
        let t = HttpTransport::insecure(&base, Duration::from_secs(10)).unwrap();
        let wait = |_: Duration| {};
        let mut got = Vec::new();
        let e = ResumingReader::new(&t, "x", 2, &wait).read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("HTTP 500"), "{e}");
        assert_eq!(log.lock().unwrap().len(), 3);
        // A refusal is final: one request, no retry.
        let (base, log) = serve(body(), vec![Fault::Status404]);
        let t = HttpTransport::insecure(&base, Duration::from_secs(10)).unwrap();
        let e = ResumingReader::new(&t, "x", 2, &wait).read_to_end(&mut got).unwrap_err();
        assert!(e.to_string().contains("HTTP 404"), "{e}");
        assert_eq!(log.lock().unwrap().len(), 1, "not retried");
    }
}
