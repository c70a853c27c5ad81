//! Property-based fuzzing on stable Rust: real documents, mutated at random (bytes flipped,
//! inserted, deleted, runs duplicated), fed to what reads untrusted input: the cloud-config
//! parser, the release and feed metadata verifiers, the agent and FleetLock request handlers of
//! cairn-server, and the FAT and ISO 9660 config-volume readers. Nothing may panic, hang or
//! answer 500 for bad input; what is accepted must still satisfy the checks.
//!
//! CI runs proptest's default 256 cases per property (a few seconds); by hand, many more:
//! `PROPTEST_CASES=100000 cargo test --release -p cairn-tests --test fuzz`.

use proptest::prelude::*;
use std::path::Path;
use std::time::Duration;

/// One edit of a document.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    /// Copies `len` bytes at `from` to `to` (duplicated keys, nesting, repeated lines).
    Duplicate {
        from: usize,
        len: usize,
        to: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes that matter to the formats: YAML and JSON punctuation, quotes, newlines, NUL, 0xff.
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b":-[]{}\"'\n\r\t #!&*|>,\\\0\xff".to_vec())];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Edit::Flip(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), 1..64usize, any::<usize>()).prop_map(|(from, len, to)| Edit::Duplicate { from, len, to }),
    ]
}

/// `doc` with `edits` applied (positions taken modulo the length at the time).
fn mutate(doc: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut d = doc.to_vec();
    for e in edits {
        let n = d.len().max(1);
        match *e {
            Edit::Flip(at, b) if !d.is_empty() => d[at % n] = b,
            Edit::Insert(at, b) => d.insert(at % (d.len() + 1), b),
            Edit::Delete(at) if !d.is_empty() => {
                d.remove(at % n);
            }
            Edit::Duplicate { from, len, to } if !d.is_empty() => {
                let from = from % n;
                let run: Vec<u8> = d[from..(from + len).min(d.len())].to_vec();
                let to = to % (d.len() + 1);
                d.splice(to..to, run);
            }
            _ => {}
        }
    }
    d
}

/// Runs `f` on a thread of its own and fails if it does not return within `limit` (a hang is
/// a finding too).
fn bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("the reader hung (or panicked) on a mutated input")
}

/// The lines of `doc` as YAML counts them: `\r\n`, `\n` and a lone `\r` each end one (a lone
/// `\r` is a line break to YAML, not to `str::lines`).
fn yaml_lines(doc: &[u8]) -> usize {
    String::from_utf8_lossy(doc).replace("\r\n", "\n").replace('\r', "\n").lines().count().max(1)
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../config/tests/corpus");
    let mut docs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("the cloud-config corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| std::fs::read(p).expect("a corpus document"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 10, "the corpus is missing");
    docs
}

proptest! {
    /// Any mutation of a real cloud-config: parsed without panicking, every diagnostic at a
    /// line and column inside the document, and an accepted document's values still valid.
    #[test]
    fn cloud_config_parser(pick in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..12)) {
        let docs = corpus();
        let doc = mutate(&docs[pick.index(docs.len())], &edits);
        let lines = yaml_lines(&doc);
        match cairn_config::parse(&doc) {
            cairn_config::Parsed::Invalid(diagnostics) => {
                prop_assert!(!diagnostics.is_empty());
                for d in diagnostics {
                    prop_assert!(d.line >= 1 && d.line <= lines, "{d} in a document of {lines} lines");
                }
            }
            cairn_config::Parsed::Config(c, warnings) => {
                for d in warnings {
                    prop_assert!(d.line >= 1 && d.line <= lines, "{d}");
                }
                if let Some(h) = &c.hostname {
                    prop_assert!(cairn_config::document::is_hostname(h), "{h:?}");
                }
                for u in &c.users {
                    for field in [&u.homedir, &u.shell, &u.gecos, &u.passwd].into_iter().flatten() {
                        prop_assert!(!field.contains(':') && !field.contains('\n'), "{field:?}");
                    }
                }
                for f in &c.write_files {
                    prop_assert!(f.path.starts_with('/') && !f.path.split('/').any(|p| p == ".."), "{}", f.path);
                }
            }
            cairn_config::Parsed::Empty => {}
        }
    }
}

/// A release manifest, made once.
fn release_manifest() -> Vec<u8> {
    static MANIFEST: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    MANIFEST
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let release = cairn_tests::server::fake_release(dir.path(), "2.1.0").expect("a release");
            std::fs::read(release.join("release.json")).expect("release.json")
        })
        .clone()
}

proptest! {
    /// A release manifest, mutated (as a targets key holder's mistake would sign it: TUF vouches
    /// for its bytes, not its sense): read without a panic, and what is accepted is safe to use
    /// (a valid version, plain artifact names, one UKI and one /usr with verity parameters).
    #[test]
    fn release_manifests(edits in prop::collection::vec(edit(), 1..12)) {
        use cairn_release::manifest::{ArtifactKind, Release, safe_name};
        let mutated = mutate(&release_manifest(), &edits);
        if let Ok(r) = Release::parse_trusted(&mutated) {
            prop_assert!(cairn_release::version::validate(&r.version).is_ok());
            prop_assert!(r.artifacts.iter().all(|a| safe_name(&a.name)));
            prop_assert!(r.artifact(ArtifactKind::Usr).verity.is_some());
            let _ = r.artifact(ArtifactKind::Uki);
        }
    }
}

/// An in-process cairn-server (SQLite in a temporary directory) and its router, with one
/// enrolled host whose credential is known.
struct Handlers {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    credential: String,
    _dir: tempfile::TempDir,
}

fn handlers() -> &'static Handlers {
    static H: std::sync::OnceLock<Handlers> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        use cairn_server::clock::{Clock, SystemClock};
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let (router, credential) = rt.block_on(async {
            let db = cairn_server::db::Db::sqlite(dir.path()).await.expect("sqlite");
            let credential = "cairn_fuzz_host_credential".to_string();
            let hash = cairn_server::tokens::hash(&credential);
            cairn_server::store::hosts::enroll(&db, "fuzz-host", "default", &hash, SystemClock.now_ms())
                .await
                .expect("enrolled");
            let server = cairn_server::rollout::Server::new(db, std::sync::Arc::new(SystemClock))
                .with_limits(cairn_server::identity::Limits::unlimited());
            server.locks.set_anonymous(&server.db, "default", true, 0).await.expect("an open lock group");
            let router = cairn_server::api::router(std::sync::Arc::new(server), Duration::from_secs(5));
            (router, credential)
        });
        Handlers { rt, router, credential, _dir: dir }
    })
}

/// `(status, body)` of a POST to the router, as from 127.0.0.1.
fn post(path: &str, body: Vec<u8>, bearer: Option<&str>, fleetlock: bool) -> (u16, String) {
    use tower::ServiceExt;
    let h = handlers();
    let mut req = axum::http::Request::post(path).header("content-type", "application/json");
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    if fleetlock {
        req = req.header("fleet-lock-protocol", "true");
    }
    let mut req = req.body(axum::body::Body::from(body)).expect("a request");
    let peer: std::net::SocketAddr = "127.0.0.1:1".parse().expect("an address");
    req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
    h.rt.block_on(async {
        let resp = h.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("a body");
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

proptest! {
    /// Mutated check-ins, events, enrollments and FleetLock requests, with the host's credential
    /// or none: never a 500 but the lock's own `failed_lock`, never a panic.
    #[test]
    fn agent_and_fleetlock_handlers(which in 0..5usize, edits in prop::collection::vec(edit(), 1..10), authed in any::<bool>()) {
        let h = handlers();
        let (path, doc, fleetlock) = match which {
            0 => ("/v1/checkin", serde_json::to_vec(&cairn_tests::server::checkin("fuzz-host", "default", "1")).unwrap(), false),
            1 => ("/v1/events", serde_json::to_vec(&cairn_tests::server::event("fuzz-host", "staged", "1")).unwrap(), false),
            2 => ("/v1/enroll", br#"{"format":1,"instance_id":"new-host","group":"default","token":"cairn_x"}"#.to_vec(), false),
            3 => ("/v1/pre-reboot", br#"{"client_params":{"id":"fuzz-host","group":"default"}}"#.to_vec(), true),
            _ => ("/v1/steady-state", br#"{"client_params":{"id":"fuzz-host","group":"default"}}"#.to_vec(), true),
        };
        let body = mutate(&doc, &edits);
        let (status, reply) = post(path, body, authed.then_some(h.credential.as_str()), fleetlock);
        let failed_lock = fleetlock && reply.contains("\"failed_lock\"");
        prop_assert!(status < 500 || failed_lock, "{path}: {status} {reply}");
        // The real request still works after whatever came before.
        if which == 4 {
            let (status, reply) = post(path, doc, Some(&h.credential), true);
            prop_assert_eq!(status, 200, "{}", reply);
        }
    }
}

/// A FAT config drive (mkfs.vfat, mtools) and an ISO 9660 one (genisoimage -J -r), as
/// OpenStack and cloud-localds make them, built once.
fn volumes() -> &'static (tempfile::TempDir, Vec<u8>, Vec<u8>) {
    static V: std::sync::OnceLock<(tempfile::TempDir, Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        use std::process::Command;
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree/openstack/latest");
        std::fs::create_dir_all(&tree).expect("tree");
        std::fs::write(tree.join("user_data"), "#cloud-config\nhostname: fuzzed\n").expect("user_data");
        std::fs::write(tree.join("meta_data.json"), r#"{"uuid": "u", "hostname": "h"}"#).expect("meta");
        let fat = dir.path().join("fat.img");
        std::fs::File::create(&fat).expect("fat.img").set_len(2 << 20).expect("size");
        let ok =
            |c: &mut Command| assert!(c.output().expect("mkfs.vfat, mtools, genisoimage").status.success(), "{c:?}");
        ok(Command::new("mkfs.vfat").args(["-n", "config-2"]).arg(&fat));
        ok(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-s")
            .arg("-i")
            .arg(&fat)
            .arg(dir.path().join("tree/openstack"))
            .arg("::/"));
        let iso = dir.path().join("cd.iso");
        ok(Command::new("genisoimage")
            .args(["-quiet", "-J", "-r", "-V", "config-2", "-o"])
            .arg(&iso)
            .arg(dir.path().join("tree")));
        let (fat, iso) = (std::fs::read(&fat).expect("fat"), std::fs::read(&iso).expect("iso"));
        (dir, fat, iso)
    })
}

/// The edits as flips inside the first `span` bytes (where the file systems keep their
/// metadata): sizes and offsets stay, so the readers meet corrupted tables, not a shifted image.
fn confined(edits: &[Edit], span: usize) -> Vec<Edit> {
    edits
        .iter()
        .map(|e| match *e {
            Edit::Flip(at, b) | Edit::Insert(at, b) => Edit::Flip(at % span, b),
            Edit::Delete(at) => Edit::Flip(at % span, 0),
            Edit::Duplicate { from, to, .. } => Edit::Flip(to % span, from as u8),
        })
        .collect()
}

proptest! {
    /// Config volumes with corrupted metadata: the readers return data or an error, within a
    /// second, without panicking, and never more than the document limit.
    #[test]
    fn fat_and_iso_config_volume_readers(iso in any::<bool>(), edits in prop::collection::vec(edit(), 1..24)) {
        let (dir, fat_img, iso_img) = volumes();
        let (image, span) = if iso { (iso_img, 40 * 2048) } else { (fat_img, 64 * 1024) };
        let bytes = mutate(image, &confined(&edits, span.min(image.len())));
        let path = dir.path().join(format!("case-{:?}.img", std::thread::current().id()));
        std::fs::write(&path, &bytes).expect("the mutated image");
        let read = bounded(Duration::from_secs(10), move || {
            let mut f = std::fs::File::open(&path).expect("image");
            let label = if iso { cairn_config::local::iso_label(&mut f) } else { cairn_config::local::fat_label(&mut f) };
            let f = std::fs::File::open(&path).expect("image");
            let data = if iso {
                cairn_config::local::iso_file(f, "openstack/latest/user_data")
            } else {
                cairn_config::local::fat_file(f, "openstack/latest/user_data")
            };
            (label, data.map(|d| d.map(|d| d.len())).map_err(|e| e.to_string()))
        });
        if let (_, Ok(Some(len))) = read {
            prop_assert!(len as u64 <= cairn_config::document::MAX_SIZE);
        }
    }
}
