//! The metadata-service clients against HTTP endpoints on loopback that speak EC2's, GCE's and
//! OpenStack's protocols: the token flow and its fallback, required headers, 404 meaning no
//! user data, and slow or failing endpoints bounded by the deadline.

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use cairn_config::metadata::{Service, fetch};
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
    assert_eq!(fetch(Service::Ec2, &v2, soon()).unwrap().unwrap(), USER_DATA.as_bytes());
    let v1 = serve(ec2(false, Some(USER_DATA)));
    assert_eq!(fetch(Service::Ec2, &v1, soon()).unwrap().unwrap(), USER_DATA.as_bytes());
    let none = serve(ec2(true, None));
    assert_eq!(fetch(Service::Ec2, &none, soon()).unwrap(), None, "404: no user data, not an error");
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
    assert_eq!(fetch(Service::Gce, &gce, soon()).unwrap().unwrap(), USER_DATA.as_bytes());
    let openstack = serve(Router::new().route("/openstack/latest/user_data", get(|| async { USER_DATA })));
    assert_eq!(fetch(Service::OpenStack, &openstack, soon()).unwrap().unwrap(), USER_DATA.as_bytes());
    let empty = serve(Router::new());
    assert_eq!(fetch(Service::OpenStack, &empty, soon()).unwrap(), None);
    assert_eq!(
        fetch(Service::Url, &format!("{openstack}/openstack/latest/user_data"), soon()).unwrap().unwrap(),
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
