//! The FleetLock protocol (Zincati, airlock): `POST /v1/pre-reboot` takes a reboot slot in a
//! group, `POST /v1/steady-state` gives it back. Every request carries `fleet-lock-protocol:
//! true` and `{"client_params": {"id", "group"}}`; 200 is success, anything else a failure
//! with `{"kind", "value"}`. The kinds are few and stable (clients count them):
//! `invalid_request` and `invalid_client_identity` (400), `unauthorized` (401: no or a wrong
//! credential; 403: another host's), `unknown_group` (400), `failed_lock` (500, every slot
//! taken), `rate_limited` (429), `internal` (500).
//!
//! Who may lock: a Cairn host with its own credential (`Authorization: Bearer CREDENTIAL`) takes
//! and gives back only its own slot; a client with the group's token (airlock's model) any; and
//! in a group opened with `updatectl lock anonymous GROUP on`, anyone, for clients that cannot
//! authenticate (Zincati). Only authenticated callers learn who holds the slots.

use crate::locks::{Lock, Registration};
use crate::rollout::Server;
use crate::store::hosts::Enrolled;
use crate::tokens;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

pub const PRE_REBOOT: &str = "/v1/pre-reboot";
pub const STEADY_STATE: &str = "/v1/steady-state";
pub const HEADER: &str = "fleet-lock-protocol";

#[derive(Deserialize)]
struct Request {
    client_params: ClientParams,
}

#[derive(Deserialize)]
struct ClientParams {
    id: String,
    group: String,
}

#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    kind: &'static str,
    value: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({"kind": self.kind, "value": self.value}))).into_response()
    }
}

fn failure(status: StatusCode, kind: &'static str, value: impl Into<String>) -> Failure {
    Failure { status, kind, value: value.into() }
}

fn internal(e: anyhow::Error) -> Failure {
    tracing::error!(error = format!("{e:#}"), "fleetlock");
    failure(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error (see the server's log)")
}

/// `^[a-zA-Z0-9.-]+$`, as the protocol defines group names.
pub fn valid_group(group: &str) -> bool {
    !group.is_empty() && group.len() <= 128 && group.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

/// Non-empty, case-sensitive; printable and bounded here so it is safe in logs and tables.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.chars().all(|c| c.is_ascii_graphic())
}

/// Who is asking, as far as a group's lock is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A host with its own credential: only its own slot.
    Host,
    /// The group's token: any id.
    GroupToken,
    /// Nobody in particular, in a group open to that: any id.
    Anonymous,
}

impl Caller {
    fn authenticated(self) -> bool {
        self != Caller::Anonymous
    }
}

/// Decides who the caller is: `token_hash` is the bearer's hash, `host` the host it is the
/// credential of (if it is one).
pub fn authorize(
    group: &str,
    access: &Registration,
    token_hash: Option<&str>,
    host: Option<&Enrolled>,
    id: &str,
) -> Result<Caller, Failure> {
    if token_hash.is_some() && access.token.as_deref() == token_hash {
        return Ok(Caller::GroupToken);
    }
    if let Some(host) = host {
        if host.instance_id != id {
            let message = format!("this credential is host {:?}'s, not {id:?}'s", host.instance_id);
            return Err(failure(StatusCode::FORBIDDEN, "unauthorized", message));
        }
        return Ok(Caller::Host);
    }
    if token_hash.is_some() {
        return Err(failure(StatusCode::UNAUTHORIZED, "unauthorized", "the token or credential is not valid"));
    }
    if access.anonymous {
        return Ok(Caller::Anonymous);
    }
    Err(failure(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("group {group:?} needs a host credential or the group's token (Authorization: Bearer ...)"),
    ))
}

/// The header, the body and the caller's right to the group: `(group, id, caller)`.
async fn parse(
    s: &Server,
    headers: &HeaderMap,
    peer: SocketAddr,
    body: &Bytes,
) -> Result<(String, String, Caller), Failure> {
    if headers.get(HEADER).and_then(|v| v.to_str().ok()) != Some("true") {
        return Err(failure(StatusCode::BAD_REQUEST, "invalid_request", format!("missing header `{HEADER}: true`")));
    }
    let req: Request = serde_json::from_slice(body)
        .map_err(|e| failure(StatusCode::BAD_REQUEST, "invalid_request", format!("body: {e}")))?;
    let ClientParams { id, group } = req.client_params;
    if !valid_id(&id) {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "invalid_client_identity",
            format!("id {id:?}: must be 1 to 256 printable ASCII characters"),
        ));
    }
    if !valid_group(&group) {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "invalid_client_identity",
            format!("group {group:?}: must match ^[a-zA-Z0-9.-]+$"),
        ));
    }
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(tokens::from_header);
    let host = match bearer {
        Some(b) => s.authenticate_host(Some(b)).await.ok(),
        None => None,
    };
    let client = match &host {
        Some(h) => format!("host {}", h.instance_id),
        None => peer.ip().to_string(),
    };
    s.limits.client(&client).map_err(|_| {
        failure(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("too many lock requests from {client}"))
    })?;
    let Some(access) = s.locks.access_of(&s.db, &group, s.now_ms()).await.map_err(internal)? else {
        return Err(failure(StatusCode::BAD_REQUEST, "unknown_group", format!("unknown group {group:?}")));
    };
    let caller = authorize(&group, &access, bearer.map(tokens::hash).as_deref(), host.as_ref(), &id)?;
    Ok((group, id, caller))
}

pub async fn pre_reboot(
    State(s): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (group, id, caller) = match parse(&s, &headers, peer, &body).await {
        Ok(p) => p,
        Err(f) => return f.into_response(),
    };
    match s.locks.lock(&s.db, &group, &id, s.now_ms()).await {
        Ok(Lock::Held { already }) => {
            if !already {
                tracing::info!(group, id, "reboot slot taken");
            }
            (StatusCode::OK, Json(serde_json::json!({}))).into_response()
        }
        Ok(Lock::Full { slots, holders }) => {
            // Who holds the slots is the fleet's business, not an anonymous caller's.
            let by = if caller.authenticated() { format!(" (by {})", holders.join(", ")) } else { String::new() };
            let message = format!("all {slots} reboot slot(s) of group {group:?} are held{by}");
            failure(StatusCode::INTERNAL_SERVER_ERROR, "failed_lock", message).into_response()
        }
        Ok(Lock::UnknownGroup) => {
            failure(StatusCode::BAD_REQUEST, "unknown_group", format!("unknown group {group:?}")).into_response()
        }
        Err(e) => internal(e).into_response(),
    }
}

pub async fn steady_state(
    State(s): State<Arc<Server>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (group, id, _) = match parse(&s, &headers, peer, &body).await {
        Ok(p) => p,
        Err(f) => return f.into_response(),
    };
    match s.locks.unlock(&s.db, &group, &id, s.now_ms(), "steady-state").await {
        Ok(Some(released)) => {
            if released {
                tracing::info!(group, id, "reboot slot released");
            }
            (StatusCode::OK, Json(serde_json::json!({}))).into_response()
        }
        Ok(None) => {
            failure(StatusCode::BAD_REQUEST, "unknown_group", format!("unknown group {group:?}")).into_response()
        }
        Err(e) => internal(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(token: Option<&str>, anonymous: bool) -> Registration {
        Registration { slots: 1, token: token.map(str::to_string), anonymous }
    }

    #[test]
    fn who_may_lock() {
        let host = Enrolled { instance_id: "h1".into(), group: "g".into() };
        let closed = access(Some("t"), false);
        assert_eq!(authorize("g", &closed, Some("t"), None, "anyone").ok(), Some(Caller::GroupToken));
        assert_eq!(authorize("g", &closed, Some("c"), Some(&host), "h1").ok(), Some(Caller::Host));
        let other = authorize("g", &closed, Some("c"), Some(&host), "h2").err().unwrap();
        assert_eq!((other.status, other.kind), (StatusCode::FORBIDDEN, "unauthorized"), "{}", other.value);
        assert_eq!(authorize("g", &closed, None, None, "h1").err().unwrap().status, StatusCode::UNAUTHORIZED);
        assert_eq!(authorize("g", &closed, Some("bad"), None, "h1").err().unwrap().status, StatusCode::UNAUTHORIZED);
        let open = access(None, true);
        assert_eq!(authorize("g", &open, None, None, "h1").ok(), Some(Caller::Anonymous));
        assert_eq!(authorize("g", &open, Some("bad"), None, "h1").err().unwrap().status, StatusCode::UNAUTHORIZED);
    }
}
