//! `cairn-bench-static FILE`: the ceiling for `cairn-bench-server`, a plain static file server
//! (tower-http's ServeFile on the same HTTP stack, runtime and core count as cairn-server)
//! answering every request with FILE. Prints its address, then serves until killed.

use std::net::TcpListener;

fn main() {
    let file = std::env::args().nth(1).expect("usage: cairn-bench-static FILE");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        println!("cairn-server listening on http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new().fallback_service(tower_http::services::ServeFile::new(file));
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        // TCP_NODELAY as cairn-server sets it: ServeFile writes the body apart from the headers.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.expect("serve");
    });
}
