//! cairn-init's side of the control interface (cairn_release::control): reading requests and
//! writing responses, and `cairnctl`, its command-line client (the same binary, also installed as
//! `reboot` and `poweroff`).

pub use cairn_release::control::{Request, Response, SOCKET};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Reads one request from an accepted connection (bounded wait, bounded size).
pub fn read_request(stream: &UnixStream) -> Result<Request, String> {
    stream.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream.take_limited()).read_line(&mut line).map_err(|e| format!("reading request: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("bad request: {e}"))
}

pub fn write_response(mut stream: &UnixStream, r: &Response) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut text = serde_json::to_string(r).unwrap_or_else(|_| "{\"ok\":false}".into());
    text.push('\n');
    let _ = stream.write_all(text.as_bytes());
}

trait TakeLimited {
    fn take_limited(&self) -> std::io::Take<&UnixStream>;
}

impl TakeLimited for UnixStream {
    fn take_limited(&self) -> std::io::Take<&UnixStream> {
        std::io::Read::take(self, 64 * 1024)
    }
}

const USAGE: &str = "usage: cairnctl status [--json]
       cairnctl start|stop|restart SERVICE
       cairnctl log SERVICE [-n LINES]
       cairnctl reboot | poweroff";

/// `cairnctl ARGS` (or `reboot` / `poweroff`). Returns the exit status.
pub fn cli(program: &str, args: &[String]) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let req = match (program, args.as_slice()) {
        ("reboot", _) | (_, ["reboot"]) => Request::Reboot,
        ("poweroff", _) | ("halt", _) | (_, ["poweroff"]) => Request::Poweroff,
        (_, ["status"]) | (_, ["status", "--json"]) | (_, []) => Request::Status,
        (_, ["start", s]) => Request::Start { service: s.to_string() },
        (_, ["stop", s]) => Request::Stop { service: s.to_string() },
        (_, ["restart", s]) => Request::Restart { service: s.to_string() },
        (_, ["log", s]) => Request::Log { service: s.to_string(), lines: 50 },
        (_, ["log", s, "-n", n]) => match n.parse() {
            Ok(lines) => Request::Log { service: s.to_string(), lines },
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    let json = args.contains(&"--json");
    match cairn_release::control::call(Path::new(SOCKET), &req) {
        Ok(r) if r.ok => {
            if let Some(services) = r.services {
                if json {
                    println!("{services}");
                } else {
                    print_status(&services);
                    println!("{}", cairn_release::clock::describe(&cairn_release::clock::kernel_sync()));
                }
            }
            if let Some(log) = r.log {
                print!("{log}");
            }
            0
        }
        Ok(r) => {
            eprintln!("cairnctl: {}", r.error.unwrap_or_else(|| "failed".into()));
            1
        }
        Err(e) => {
            eprintln!("cairnctl: {e}");
            2
        }
    }
}

fn usage() -> i32 {
    eprintln!("{USAGE}");
    2
}

fn print_status(services: &serde_json::Value) {
    println!("{:<16} {:<9} {:>6} {:>8} {:>9}  NOTE", "SERVICE", "STATE", "PID", "RESTARTS", "UPTIME");
    for s in services.as_array().into_iter().flatten() {
        let pid = s["pid"].as_i64().map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let up = s["uptime_s"].as_u64().map(|u| format!("{u}s")).unwrap_or_else(|| "-".into());
        let note = s["error"].as_str().or(s["last_exit"].as_str()).unwrap_or("");
        println!(
            "{:<16} {:<9} {:>6} {:>8} {:>9}  {}",
            s["name"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            pid,
            s["restarts"],
            up,
            note
        );
    }
}
