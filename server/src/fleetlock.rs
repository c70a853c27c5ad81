//! The FleetLock protocol (Zincati, airlock): `POST /v1/pre-reboot` takes a reboot slot in a
//! group, `POST /v1/steady-state` gives it back. Every request carries `fleet-lock-protocol:
//! true` and `{"client_params": {"id", "group"}}`; 200 is success, anything else a failure
//! with `{"kind", "value"}`. The kinds are few and stable (clients count them):
//! `invalid_request` and `invalid_client_identity` (400), `unauthorized` (401, only for groups
//! with a token), `unknown_group` (400), `failed_lock` (500, every slot taken), `internal` (500).

use crate::locks::Lock;
use crate::rollout::Server;
use crate::tokens;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
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

/// The header, the body and, for a group with a token, the token: `(group, id)`.
async fn parse(s: &Server, headers: &HeaderMap, body: &Bytes) -> Result<(String, String), Failure> {
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
    match s.locks.token_of(&s.db, &group, s.now_ms()).await.map_err(internal)? {
        None => Err(failure(StatusCode::BAD_REQUEST, "unknown_group", format!("unknown group {group:?}"))),
        Some(Some(hash)) => {
            let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(tokens::from_header);
            if given.map(tokens::hash).as_deref() == Some(hash.as_str()) {
                Ok((group, id))
            } else {
                Err(failure(StatusCode::UNAUTHORIZED, "unauthorized", format!("group {group:?} needs its lock token")))
            }
        }
        Some(None) => Ok((group, id)),
    }
}

pub async fn pre_reboot(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let (group, id) = match parse(&s, &headers, &body).await {
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
        Ok(Lock::Full { slots, holders }) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed_lock",
            format!("all {slots} reboot slot(s) of group {group:?} are held (by {})", holders.join(", ")),
        )
        .into_response(),
        Ok(Lock::UnknownGroup) => {
            failure(StatusCode::BAD_REQUEST, "unknown_group", format!("unknown group {group:?}")).into_response()
        }
        Err(e) => internal(e).into_response(),
    }
}

pub async fn steady_state(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let (group, id) = match parse(&s, &headers, &body).await {
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
