//! The metadata-service clients against HTTP endpoints on loopback that speak EC2's, GCE's and
//! OpenStack's protocols: the token flow and its fallback, required headers, 404 meaning no
//! user data, and slow or failing endpoints bounded by the deadline.

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use cairn_config::datasource::{Datasource, DatasourceError, Found};
use cairn_config::datasource::{ec2::Ec2, gce::Gce, openstack::OpenStack, url::Url};
use cairn_config::instance::InstanceMetadata;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Serves `app` on 127.0.0.1 from a thread of its own; returns the base URL.
fn serve(app: Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}")
}

const USER_DATA: &str = "#cloud-config\nhostname: from-metadata\n";

#[derive(Clone, Copy)]
enum Service {
    Ec2,
    Gce,
    OpenStack,
    Url,
}

fn fetch(service: Service, base: &str, until: Instant) -> Result<Option<Found>, DatasourceError> {
    let base = base.to_string();
    match service {
        Service::Ec2 => Ec2 { base }.fetch(until),
        Service::Gce => Gce { base }.fetch(until),
        Service::OpenStack => OpenStack { base }.fetch(until),
        Service::Url => Url { url: base }.fetch(until),
    }
}

/// The user data found (`None`: the service has none, a 404).
fn user_data(found: Result<Option<Found>, DatasourceError>) -> Option<Vec<u8>> {
    found.unwrap().map(|f| f.data).filter(|d| !d.is_empty())
}

/// The instance metadata found, which must have come without a warning.
fn instance(found: Result<Option<Found>, DatasourceError>) -> InstanceMetadata {
    let found = found.unwrap().unwrap_or_default();
    assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    found.instance
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// IMDSv2: a token from PUT (with a TTL header), required on the GET.
fn ec2(v2: bool, user_data: Option<&'static str>) -> Router {
    let app = Router::new().route(
        "/latest/user-data",
        get(move |h: HeaderMap| async move {
            if v2 && h.get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok()) != Some("tok-123") {
                return (StatusCode::UNAUTHORIZED, String::new());
            }
            match user_data {
                Some(d) => (StatusCode::OK, d.to_string()),
                None => (StatusCode::NOT_FOUND, String::new()),
            }
        }),
    );
    if v2 {
        app.route(
            "/latest/api/token",
            put(|h: HeaderMap| async move {
                match h.get("x-aws-ec2-metadata-token-ttl-seconds") {
                    Some(_) => (StatusCode::OK, "tok-123".to_string()),
                    None => (StatusCode::BAD_REQUEST, String::new()),
                }
            }),
        )
    } else {
        // IMDSv1-only: the token path does not exist.
        app.route("/latest/api/token", put(|| async { StatusCode::NOT_FOUND }))
    }
}

#[test]
fn ec2_uses_the_imdsv2_token_and_falls_back_to_v1() {
    let v2 = serve(ec2(true, Some(USER_DATA)));
    assert_eq!(user_data(fetch(Service::Ec2, &v2, soon())).unwrap(), USER_DATA.as_bytes());
    let v1 = serve(ec2(false, Some(USER_DATA)));
    assert_eq!(user_data(fetch(Service::Ec2, &v1, soon())).unwrap(), USER_DATA.as_bytes());
    let none = serve(ec2(true, None));
    assert_eq!(user_data(fetch(Service::Ec2, &none, soon())), None, "404: no user data, not an error");
}

#[test]
fn gce_needs_its_header_and_openstack_its_path() {
    let gce = serve(Router::new().route(
        "/computeMetadata/v1/instance/attributes/user-data",
        get(|h: HeaderMap| async move {
            if h.get("metadata-flavor").and_then(|v| v.to_str().ok()) == Some("Google") {
                (StatusCode::OK, USER_DATA)
            } else {
                (StatusCode::FORBIDDEN, "")
            }
        }),
    ));
    assert_eq!(user_data(fetch(Service::Gce, &gce, soon())).unwrap(), USER_DATA.as_bytes());
    let openstack = serve(Router::new().route("/openstack/latest/user_data", get(|| async { USER_DATA })));
    assert_eq!(user_data(fetch(Service::OpenStack, &openstack, soon())).unwrap(), USER_DATA.as_bytes());
    let empty = serve(Router::new());
    assert_eq!(user_data(fetch(Service::OpenStack, &empty, soon())), None);
    assert_eq!(
        user_data(fetch(Service::Url, &format!("{openstack}/openstack/latest/user_data"), soon())).unwrap(),
        USER_DATA.as_bytes()
    );
}

#[test]
fn slow_failing_and_absent_services_cost_no_more_than_the_deadline() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let slow = serve(Router::new().route(
        "/openstack/latest/user_data",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                USER_DATA
            }
        }),
    ));
    let started = Instant::now();
    let err = fetch(Service::OpenStack, &slow, Instant::now() + Duration::from_millis(500)).unwrap_err();
    let took = started.elapsed();
    assert!(err.to_string().contains("deadline"), "{err}");
    assert!(took < Duration::from_secs(2), "took {took:?} for a 500 ms deadline");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let failing = serve(Router::new().route("/latest/user-data", get(|| async { StatusCode::INTERNAL_SERVER_ERROR })));
    let err = fetch(Service::Ec2, &failing, soon()).unwrap_err();
    assert!(err.to_string().contains("HTTP"), "{err}");

    // Nothing listens: refused at once, well inside the deadline.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    assert!(fetch(Service::Gce, &format!("http://127.0.0.1:{port}"), soon()).is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
}

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u0 pair-a";
const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH9Lk3ryv0PmxVxZHd0ch4u1 pair-b";

#[test]
fn ec2_launch_keys_and_hostname_with_the_token() {
    let needs_token = |h: &HeaderMap| h.get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok()) == Some("tok-9");
    let tokens = Arc::new(AtomicUsize::new(0));
    let counted = tokens.clone();
    let app = Router::new()
        .route(
            "/latest/api/token",
            put(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { "tok-9" }
            }),
        )
        .route(
            "/latest/meta-data/hostname",
            get(move |h: HeaderMap| async move {
                if needs_token(&h) {
                    (StatusCode::OK, "ip-10-0-0-7.ec2.internal")
                } else {
                    (StatusCode::UNAUTHORIZED, "")
                }
            }),
        )
        .route("/latest/meta-data/public-keys/", get(|| async { "0=pair-a\n1=pair-b" }))
        .route("/latest/meta-data/public-keys/0/openssh-key", get(|| async { format!("{KEY_A}\n") }))
        .route("/latest/meta-data/public-keys/1/openssh-key", get(|| async { KEY_B }));
    let base = serve(app);
    let m = instance(fetch(Service::Ec2, &base, soon()));
    assert_eq!(m.hostname.as_deref(), Some("ip-10-0-0-7.ec2.internal"));
    assert_eq!(m.ssh_keys, [KEY_A, KEY_B]);
    assert_eq!(tokens.load(Ordering::SeqCst), 1, "user data and metadata share one IMDSv2 session");
    // An instance launched without a key pair: 404s, not errors.
    let bare = serve(Router::new().route("/latest/api/token", put(|| async { "t" })));
    assert!(instance(fetch(Service::Ec2, &bare, soon())).is_empty());
}

#[test]
fn gce_keys_honour_block_project_keys_and_openstack_reads_meta_data_json() {
    let flavor = |h: &HeaderMap| h.get("metadata-flavor").and_then(|v| v.to_str().ok()) == Some("Google");
    let gce = |block: bool| {
        Router::new()
            .route(
                "/computeMetadata/v1/instance/hostname",
                get(move |h: HeaderMap| async move {
                    if flavor(&h) { (StatusCode::OK, "vm-1.c.proj.internal") } else { (StatusCode::FORBIDDEN, "") }
                }),
            )
            .route("/computeMetadata/v1/instance/attributes/ssh-keys", get(|| async { format!("alice:{KEY_A}") }))
            .route("/computeMetadata/v1/project/attributes/ssh-keys", get(|| async { format!("bob:{KEY_B}") }))
            .route(
                "/computeMetadata/v1/instance/attributes/block-project-ssh-keys",
                get(move || async move { if block { (StatusCode::OK, "true") } else { (StatusCode::NOT_FOUND, "") } }),
            )
    };
    let m = instance(fetch(Service::Gce, &serve(gce(false)), soon()));
    assert_eq!(
        (m.hostname.as_deref(), m.ssh_keys),
        (Some("vm-1.c.proj.internal"), vec![KEY_A.to_string(), KEY_B.into()])
    );
    let m = instance(fetch(Service::Gce, &serve(gce(true)), soon()));
    assert_eq!(m.ssh_keys, [KEY_A], "project keys blocked");

    let json = format!(r#"{{"hostname": "nova-1", "public_keys": {{"k": "{KEY_A}"}}}}"#);
    let os = serve(Router::new().route("/openstack/latest/meta_data.json", get(move || async move { json })));
    let m = instance(fetch(Service::OpenStack, &os, soon()));
    assert_eq!((m.hostname.as_deref(), m.ssh_keys), (Some("nova-1"), vec![KEY_A.to_string()]));
    assert!(instance(fetch(Service::OpenStack, &serve(Router::new()), soon())).is_empty());
}

/// A container archive by plain http is used only when its digest matches; nothing of a
/// tampered one is kept.
#[test]
fn a_container_archive_by_http_is_checked_against_its_digest() {
    use cairn_config::cairn::Container;
    use sha2::{Digest, Sha256};
    let base = serve(Router::new().route("/web.tar", get(|| async { "archive bytes" })));
    let images = tempfile::tempdir().unwrap();
    let container = |sha256: Option<String>| Container {
        name: "web".into(),
        image: format!("{base}/web.tar"),
        sha256,
        restart: "always".into(),
        ..Container::default()
    };
    let err = cairn_config::container::archive(&container(Some("00".repeat(32))), images.path()).unwrap_err();
    assert!(err.to_string().contains("the archive's sha256 is"), "{err}");
    assert_eq!(std::fs::read_dir(images.path()).unwrap().count(), 0, "nothing kept: {err}");
    let err = cairn_config::container::archive(&container(None), images.path()).unwrap_err();
    assert!(err.to_string().contains("without a sha256"), "{err}");
    let right = hex::encode(Sha256::digest(b"archive bytes"));
    let file = cairn_config::container::archive(&container(Some(right)), images.path()).unwrap();
    assert_eq!(std::fs::read(file).unwrap(), b"archive bytes");
}
