//! The HTTP API. Agents: `POST /v1/enroll` (with the group's enrollment token), then with their
//! own credential `POST /v1/checkin` and `POST /v1/events`; `GET /v1/tuf/DIR/FILE`, the TUF
//! repository (byte ranges; every byte is signed or named by what is, so it is public). Operators, with a bearer token:
//! `/v1/admin/...`. Also `/metrics` and `/healthz`.
//! Every refusal is a 4xx with `{"error": "..."}` naming the problem, and changes nothing.

use crate::error::{ApiError, ApiResult};
use crate::rollout::Server;
use crate::store::{EventFilter, InstanceFilter};
use crate::tokens;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cairn_release::admin::{Channel, ChannelVersion, EventRecord, Group, GroupChange, Instance, LockGroup};
use cairn_release::admin::{LockRelease, LockSlots, NewChannel, Package, RolloutStatus};
use cairn_release::checkin::{CHECKIN_PATH, CheckIn, ENROLL_PATH, EVENTS_PATH, EnrollRequest, Event};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;
use tower_http::services::ServeFile;

type S = State<Arc<Server>>;

/// The largest body an agent or FleetLock request may have (a check-in is a few hundred bytes).
pub const AGENT_BODY_LIMIT: usize = 64 << 10;

/// The routes; an agent or FleetLock request taking longer than `request_timeout` in all (its
/// body included) is cut off with 408.
pub fn router(server: Arc<Server>, request_timeout: std::time::Duration) -> Router {
    let admin = Router::new()
        .route("/channels", get(list_channels).post(create_channel))
        .route("/channels/{name}", put(set_channel))
        .route("/packages", get(list_packages))
        .route("/groups", get(list_groups).post(create_group))
        .route("/groups/{name}", get(get_group).patch(update_group))
        .route("/instances", get(list_instances))
        .route("/instances/{id}", axum::routing::delete(forget_instance))
        .route("/groups/{name}/enrollment-token", post(new_enrollment_token).delete(remove_enrollment_token))
        .route("/locks/{group}/anonymous", put(set_lock_anonymous))
        .route("/events", get(list_events))
        .route("/rollout", get(rollout_status))
        .route("/locks", get(lock_status))
        .route("/locks/{group}", put(set_lock_slots))
        .route("/locks/{group}/release", post(release_lock))
        .route("/locks/{group}/token", post(new_lock_token).delete(remove_lock_token))
        .route_layer(middleware::from_fn_with_state(server.clone(), require_token));
    let agents = Router::new()
        .route(ENROLL_PATH, post(enroll))
        .route(CHECKIN_PATH, post(check_in))
        .route(EVENTS_PATH, post(report))
        .route(crate::fleetlock::PRE_REBOOT, post(crate::fleetlock::pre_reboot))
        .route(crate::fleetlock::STEADY_STATE, post(crate::fleetlock::steady_state))
        .layer(DefaultBodyLimit::max(AGENT_BODY_LIMIT))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, request_timeout));
    Router::new()
        .merge(agents)
        .route("/v1/tuf/{dir}/{file}", get(tuf_file))
        .route("/v1/tuf/chunks/{prefix}/{file}", get(tuf_chunk))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/v1/admin", admin)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(middleware::from_fn_with_state(server.clone(), observe))
        .with_state(server)
}

/// Request latency by route, for `/metrics`.
async fn observe(State(s): S, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("other", |p| p.as_str()).to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    s.metrics.observe(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn require_token(State(s): S, req: Request, next: Next) -> Response {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = header.and_then(tokens::from_header) else {
        return ApiError::Unauthorized("an admin token is required (Authorization: Bearer TOKEN)".into())
            .into_response();
    };
    match s.admin_token_valid(token).await {
        Ok(true) => next.run(req).await,
        Ok(false) => ApiError::Unauthorized("the admin token is not valid".into()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// JSON bodies parsed here rather than by axum's extractor, so a bad one gets a JSON error that
/// says what is wrong and where.
fn parse<T: DeserializeOwned>(what: &str, body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

// ---- agents ----

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(tokens::from_header)
}

async fn enroll(State(s): S, ConnectInfo(peer): ConnectInfo<SocketAddr>, body: Bytes) -> ApiResult<Response> {
    s.limits.client(&peer.ip().to_string())?;
    let req: EnrollRequest = parse("enrollment", &body)?;
    Ok(Json(s.enroll(&req).await?).into_response())
}

/// Who the request is from: the credential is checked before the body is read.
async fn host(s: &Server, headers: &HeaderMap) -> ApiResult<crate::store::hosts::Enrolled> {
    let host = s.authenticate_host(bearer(headers)).await?;
    s.limits.client(&format!("host {}", host.instance_id))?;
    Ok(host)
}

async fn check_in(State(s): S, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    // No credential at all: refused before the body is read. One is checked with the host's row.
    let credential = match (s.agent_auth, bearer(&headers)) {
        (false, _) => None,
        (true, Some(b)) => Some(tokens::hash(b)),
        (true, None) => return Err(crate::identity::credential_required()),
    };
    let c: CheckIn = parse("check-in", &body)?;
    Ok(Json(s.check_in(&c, credential.as_deref()).await?).into_response())
}

async fn report(State(s): S, headers: HeaderMap, body: Bytes) -> ApiResult<StatusCode> {
    let host = if s.agent_auth { Some(host(&s, &headers).await?) } else { None };
    let e: Event = parse("event", &body)?;
    if let Some(host) = &host {
        crate::identity::check_claim(host, &e.instance_id, None)?;
    }
    s.report(&e).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A chunk of the TUF repository's store: public, as each is named by its hash and the index
/// naming it is signed.
async fn tuf_chunk(State(s): S, Path((prefix, file)): Path<(String, String)>, req: Request) -> ApiResult<Response> {
    let tuf = s.tuf.as_ref().ok_or_else(|| ApiError::NotFound("this server has no TUF repository".into()))?;
    let path = tuf.chunk(&prefix, &file).ok_or_else(|| ApiError::NotFound(format!("no chunk {prefix}/{file}")))?;
    let response = ServeFile::new(path).oneshot(req).await.map_err(|e| ApiError::Internal(e.into()))?;
    Ok(response.map(Body::new))
}

/// A file of the TUF repository: public, as every byte of it is signed or named by what is.
async fn tuf_file(State(s): S, Path((dir, file)): Path<(String, String)>, req: Request) -> ApiResult<Response> {
    let tuf = s.tuf.as_ref().ok_or_else(|| ApiError::NotFound("this server has no TUF repository".into()))?;
    let path = tuf.file(&dir, &file).ok_or_else(|| ApiError::NotFound(format!("no {dir}/{file} here")))?;
    let response = ServeFile::new(path).oneshot(req).await.map_err(|e| ApiError::Internal(e.into()))?;
    Ok(response.map(Body::new))
}

async fn metrics(State(s): S, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(want) = &s.metrics_token
        && bearer(&headers).map(tokens::hash).as_ref() != Some(want)
    {
        return Err(ApiError::Unauthorized("/metrics needs its token (Authorization: Bearer TOKEN)".into()));
    }
    let fleet = s.fleet_counts().await?;
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.render(&fleet),
    )
        .into_response())
}

// ---- channels ----

async fn list_channels(State(s): S) -> ApiResult<Json<Vec<Channel>>> {
    Ok(Json(s.channels().await?))
}

async fn create_channel(State(s): S, body: Bytes) -> ApiResult<(StatusCode, Json<Channel>)> {
    let c: NewChannel = parse("channel", &body)?;
    Ok((StatusCode::CREATED, Json(s.create_channel(c).await?)))
}

async fn set_channel(State(s): S, Path(name): Path<String>, body: Bytes) -> ApiResult<Json<Channel>> {
    let c: ChannelVersion = parse("channel", &body)?;
    Ok(Json(s.set_channel(name, c).await?))
}

// ---- packages ----

async fn list_packages(State(s): S) -> ApiResult<Json<Vec<Package>>> {
    Ok(Json(s.packages().await?))
}

// ---- groups ----

async fn list_groups(State(s): S) -> ApiResult<Json<Vec<Group>>> {
    Ok(Json(s.groups().await?))
}

async fn get_group(State(s): S, Path(name): Path<String>) -> ApiResult<Json<Group>> {
    Ok(Json(s.group(&name).await?))
}

async fn create_group(State(s): S, body: Bytes) -> ApiResult<(StatusCode, Json<Group>)> {
    let change: GroupChange = parse("group", &body)?;
    Ok((StatusCode::CREATED, Json(s.create_group(change).await?)))
}

async fn update_group(State(s): S, Path(name): Path<String>, body: Bytes) -> ApiResult<Json<Group>> {
    let change: GroupChange = parse("group", &body)?;
    Ok(Json(s.update_group(&name, change).await?))
}

// ---- fleet ----

async fn list_instances(State(s): S, Query(f): Query<InstanceFilter>) -> ApiResult<Json<Vec<Instance>>> {
    Ok(Json(s.instances(&f).await?))
}

async fn forget_instance(State(s): S, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.forget_instance(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn new_enrollment_token(State(s): S, Path(group): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let token = s.new_enrollment_token(&group).await?;
    Ok(Json(serde_json::json!({"group": group, "token": token})))
}

async fn remove_enrollment_token(State(s): S, Path(group): Path<String>) -> ApiResult<StatusCode> {
    s.remove_enrollment_token(&group).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_events(State(s): S, Query(f): Query<EventFilter>) -> ApiResult<Json<Vec<EventRecord>>> {
    Ok(Json(s.events(&f).await?))
}

/// `?group=NAME`: one group; none: all.
#[derive(Deserialize)]
struct GroupQuery {
    group: Option<String>,
}

async fn rollout_status(State(s): S, Query(q): Query<GroupQuery>) -> ApiResult<Json<Vec<RolloutStatus>>> {
    Ok(Json(s.rollout_status(q.group.as_deref()).await?))
}

// ---- reboot locks ----

async fn lock_status(State(s): S, Query(q): Query<GroupQuery>) -> ApiResult<Json<Vec<LockGroup>>> {
    Ok(Json(s.lock_status(q.group.as_deref()).await?))
}

async fn set_lock_slots(State(s): S, Path(group): Path<String>, body: Bytes) -> ApiResult<Json<Vec<LockGroup>>> {
    let req: LockSlots = parse("lock group", &body)?;
    Ok(Json(s.set_lock_slots(&group, req.slots).await?))
}

async fn release_lock(State(s): S, Path(group): Path<String>, body: Bytes) -> ApiResult<Json<serde_json::Value>> {
    let req: LockRelease = parse("release", &body)?;
    s.release_lock(&group, &req.id).await?;
    Ok(Json(serde_json::json!({"released": req.id, "group": group})))
}

async fn set_lock_anonymous(State(s): S, Path(group): Path<String>, body: Bytes) -> ApiResult<Json<Vec<LockGroup>>> {
    let req: cairn_release::admin::LockAnonymous = parse("lock group", &body)?;
    Ok(Json(s.set_lock_anonymous(&group, req.anonymous).await?))
}

async fn new_lock_token(State(s): S, Path(group): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let token = s.new_lock_token(&group).await?;
    Ok(Json(serde_json::json!({"group": group, "token": token})))
}

async fn remove_lock_token(State(s): S, Path(group): Path<String>) -> ApiResult<StatusCode> {
    s.remove_lock_token(&group).await?;
    Ok(StatusCode::NO_CONTENT)
}
