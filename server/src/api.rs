//! The HTTP API. Agents: `POST /v1/checkin`, `POST /v1/events`, `GET /v1/packages/VERSION/FILE`
//! (byte ranges). Operators, with a bearer token: `/v1/admin/...`. Also `/metrics` and `/healthz`.
//! Every refusal is a 4xx with `{"error": "..."}` naming the problem, and changes nothing.

use crate::error::{ApiError, ApiResult};
use crate::policy::GroupPolicy;
use crate::rollout::Server;
use crate::store::{self, EventFilter, Group, InstanceFilter};
use crate::tokens;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cairn_release::admin::{
    ChannelVersion, GroupChange, LockRelease, LockSlots, NewChannel, RolloutStatus, UploadRequest,
};
use cairn_release::checkin::{CHECKIN_PATH, EVENTS_PATH, validate_name};
use cairn_release::manifest::{MANIFEST, SIGNATURE_SUFFIX, safe_name};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt;
use tower_http::services::ServeFile;

type S = State<Arc<Server>>;

pub fn router(server: Arc<Server>) -> Router {
    let admin = Router::new()
        .route("/channels", get(list_channels).post(create_channel))
        .route("/channels/{name}", put(set_channel))
        .route("/packages", get(list_packages).post(upload_package))
        .route("/packages/{version}", get(package_status).delete(delete_package))
        .route("/packages/{version}/artifacts/{name}", put(upload_artifact).layer(DefaultBodyLimit::disable()))
        .route("/groups", get(list_groups).post(create_group))
        .route("/groups/{name}", get(get_group).patch(update_group))
        .route("/instances", get(list_instances))
        .route("/events", get(list_events))
        .route("/rollout", get(rollout_status))
        .route("/locks", get(lock_status))
        .route("/locks/{group}", put(set_lock_slots))
        .route("/locks/{group}/release", post(release_lock))
        .route("/locks/{group}/token", post(new_lock_token).delete(remove_lock_token))
        .route_layer(middleware::from_fn_with_state(server.clone(), require_token));
    Router::new()
        .route(CHECKIN_PATH, post(check_in))
        .route(EVENTS_PATH, post(report))
        .route("/v1/packages/{version}/{file}", get(package_file))
        .route(crate::fleetlock::PRE_REBOOT, post(crate::fleetlock::pre_reboot))
        .route(crate::fleetlock::STEADY_STATE, post(crate::fleetlock::steady_state))
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
    match store::token_name(&s.db, &tokens::hash(token)).await {
        Ok(Some(_)) => next.run(req).await,
        Ok(None) => ApiError::Unauthorized("the admin token is not valid".into()).into_response(),
        Err(e) => ApiError::Internal(e).into_response(),
    }
}

/// JSON bodies parsed here rather than by axum's extractor, so a bad one gets a JSON error that
/// says what is wrong and where.
fn parse<T: DeserializeOwned>(what: &str, body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("{what}: {e}")))
}

// ---- agents ----

async fn check_in(State(s): S, body: Bytes) -> ApiResult<Response> {
    let c = parse("check-in", &body)?;
    Ok(Json(s.check_in(&c).await?).into_response())
}

async fn report(State(s): S, body: Bytes) -> ApiResult<StatusCode> {
    let e = parse("event", &body)?;
    s.report(&e).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn package_file(State(s): S, Path((version, file)): Path<(String, String)>, req: Request) -> ApiResult<Response> {
    cairn_release::version::validate(&version).map_err(|e| ApiError::BadRequest(format!("version: {e}")))?;
    if !safe_name(&file) {
        return Err(ApiError::BadRequest(format!("file name {file:?}: not a plain file name")));
    }
    let signature = format!("{MANIFEST}{SIGNATURE_SUFFIX}");
    if file == MANIFEST || file == signature {
        let p = s.signed_package(&version).await?;
        let text = if file == MANIFEST { p.manifest } else { p.signature };
        return Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response());
    }
    let path = s.artifact_path(&version, &file).await?;
    // ServeFile answers Range requests (206, 416) and conditional ones.
    let response = ServeFile::new(path).oneshot(req).await.map_err(|e| ApiError::Internal(e.into()))?;
    Ok(response.map(Body::new))
}

async fn metrics(State(s): S) -> ApiResult<Response> {
    let fleet = store::instance_counts(&s.db).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.metrics.render(&fleet),
    )
        .into_response())
}

// ---- channels ----

async fn list_channels(State(s): S) -> ApiResult<Json<Vec<store::Channel>>> {
    Ok(Json(store::channels(&s.db).await?))
}

/// A channel or pin may only name a package that can be offered.
async fn require_complete_package(s: &Server, version: &str) -> ApiResult<()> {
    let p = s.signed_package(version).await.map_err(|_| ApiError::BadRequest(format!("no package {version:?}")))?;
    if !p.package.complete {
        return Err(ApiError::BadRequest(format!("package {version} is not completely uploaded")));
    }
    Ok(())
}

async fn create_channel(State(s): S, body: Bytes) -> ApiResult<(StatusCode, Json<store::Channel>)> {
    let c: NewChannel = parse("channel", &body)?;
    validate_name("channel", &c.name, 64)?;
    if let Some(v) = &c.version {
        require_complete_package(&s, v).await?;
    }
    let now = s.now_ms();
    if !store::create_channel(&s.db, &c.name, c.version.as_deref(), now).await? {
        return Err(ApiError::Conflict(format!("channel {:?} exists", c.name)));
    }
    tracing::info!(channel = c.name, version = c.version, "channel created");
    Ok((StatusCode::CREATED, Json(store::Channel { name: c.name, version: c.version, updated_at: now })))
}

async fn set_channel(State(s): S, Path(name): Path<String>, body: Bytes) -> ApiResult<Json<store::Channel>> {
    let c: ChannelVersion = parse("channel", &body)?;
    require_complete_package(&s, &c.version).await?;
    let now = s.now_ms();
    if !store::set_channel_version(&s.db, &name, &c.version, now).await? {
        return Err(ApiError::NotFound(format!("unknown channel {name:?}")));
    }
    s.invalidate_groups();
    tracing::info!(channel = name, version = c.version, "channel version set");
    Ok(Json(store::Channel { name, version: Some(c.version), updated_at: now }))
}

// ---- packages ----

async fn list_packages(State(s): S) -> ApiResult<Json<Vec<store::Package>>> {
    Ok(Json(store::packages(&s.db).await?))
}

async fn upload_package(State(s): S, body: Bytes) -> ApiResult<Response> {
    let req: UploadRequest = parse("package", &body)?;
    Ok((StatusCode::CREATED, Json(s.upload_package(&req).await?)).into_response())
}

async fn package_status(State(s): S, Path(version): Path<String>) -> ApiResult<Response> {
    Ok(Json(s.package_status(&version).await?).into_response())
}

async fn upload_artifact(
    State(s): S,
    Path((version, name)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    Ok(Json(s.store_artifact(&version, &name, body).await?).into_response())
}

async fn delete_package(State(s): S, Path(version): Path<String>) -> ApiResult<StatusCode> {
    s.delete_package(&version).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- groups ----

/// Applies a change to a group's settings; absent fields keep their value (or the default, on
/// create).
fn apply_change(change: &GroupChange, g: &mut Group) -> ApiResult<()> {
    {
        let p = &mut g.policy;
        if let Some(c) = &change.channel {
            g.channel = c.clone();
        }
        if let Some(v) = change.updates_enabled {
            p.updates_enabled = v;
        }
        if let Some(v) = change.max_per_period {
            p.max_per_period = v;
        }
        if let Some(v) = change.period_s {
            if v == 0 {
                return Err(ApiError::BadRequest("period_s: must be at least 1".into()));
            }
            p.period_s = v;
        }
        if let Some(v) = change.safe_mode {
            p.safe_mode = v;
        }
        if let Some(v) = change.halt_after {
            p.halt_after = v;
        }
        if let Some(v) = change.percentage {
            if v > 100 {
                return Err(ApiError::BadRequest(format!("percentage {v}: at most 100")));
            }
            p.percentage = v;
        }
        if let Some(v) = &change.pinned_version {
            p.pinned_version = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = change.grant_timeout_s {
            if v == 0 {
                return Err(ApiError::BadRequest("grant_timeout_s: must be at least 1".into()));
            }
            p.grant_timeout_s = v;
        }
        match change.halted {
            Some(true) => return Err(ApiError::BadRequest("halted: only false (resume) can be set".into())),
            Some(false) => {
                g.halted = false;
                g.halted_reason = None;
            }
            None => {}
        }
        Ok(())
    }
}

async fn check_group_refs(s: &Server, g: &Group) -> ApiResult<()> {
    if !store::channel_exists(&s.db, &g.channel).await? {
        return Err(ApiError::BadRequest(format!("unknown channel {:?}", g.channel)));
    }
    if let Some(v) = &g.policy.pinned_version {
        require_complete_package(s, v).await?;
    }
    Ok(())
}

async fn list_groups(State(s): S) -> ApiResult<Json<Vec<Group>>> {
    Ok(Json(store::groups(&s.db).await?))
}

async fn get_group(State(s): S, Path(name): Path<String>) -> ApiResult<Json<Group>> {
    Ok(Json(store::group(&s.db, &name).await?.ok_or_else(|| ApiError::NotFound(format!("unknown group {name:?}")))?))
}

async fn create_group(State(s): S, body: Bytes) -> ApiResult<(StatusCode, Json<Group>)> {
    let change: GroupChange = parse("group", &body)?;
    let name = change.name.clone().ok_or_else(|| ApiError::BadRequest("group: name is required".into()))?;
    validate_name("group", &name, 64)?;
    let mut g = Group {
        name: name.clone(),
        channel: "stable".into(),
        channel_version: None,
        policy: GroupPolicy::default(),
        halted: false,
        halted_reason: None,
    };
    apply_change(&change, &mut g)?;
    check_group_refs(&s, &g).await?;
    if !store::save_group(&s.db, &g, true, s.now_ms()).await? {
        return Err(ApiError::Conflict(format!("group {name:?} exists")));
    }
    tracing::info!(group = name, "group created");
    let g = store::group(&s.db, &name).await?.ok_or_else(|| ApiError::NotFound(format!("unknown group {name:?}")))?;
    Ok((StatusCode::CREATED, Json(g)))
}

async fn update_group(State(s): S, Path(name): Path<String>, body: Bytes) -> ApiResult<Json<Group>> {
    let change: GroupChange = parse("group", &body)?;
    if change.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::BadRequest("name: a group cannot be renamed".into()));
    }
    let mut g =
        store::group(&s.db, &name).await?.ok_or_else(|| ApiError::NotFound(format!("unknown group {name:?}")))?;
    let was_halted = g.halted;
    apply_change(&change, &mut g)?;
    check_group_refs(&s, &g).await?;
    let now = s.now_ms();
    store::save_group(&s.db, &g, false, now).await?;
    if was_halted && !g.halted {
        // Resuming forgives the failures that halted it; otherwise the next check-in would
        // count them again and halt at once.
        let dismissed = store::dismiss_failures(&s.db, &name, &g.policy, now).await?;
        tracing::info!(group = name, dismissed, "rollout resumed");
    }
    s.invalidate_groups();
    tracing::info!(group = name, change = format!("{change:?}"), "group updated");
    let g = store::group(&s.db, &name).await?.ok_or_else(|| ApiError::NotFound(format!("unknown group {name:?}")))?;
    Ok(Json(g))
}

// ---- fleet ----

async fn list_instances(State(s): S, Query(f): Query<InstanceFilter>) -> ApiResult<Json<Vec<store::Instance>>> {
    Ok(Json(store::instances(&s.db, &f).await?))
}

async fn list_events(State(s): S, Query(f): Query<EventFilter>) -> ApiResult<Json<Vec<store::EventRecord>>> {
    Ok(Json(store::events(&s.db, &f).await?))
}

#[derive(Deserialize)]
struct RolloutQuery {
    group: Option<String>,
}

async fn rollout_status(State(s): S, Query(q): Query<RolloutQuery>) -> ApiResult<Json<Vec<RolloutStatus>>> {
    let groups = store::groups(&s.db).await?;
    if let Some(name) = &q.group
        && !groups.iter().any(|g| &g.name == name)
    {
        return Err(ApiError::NotFound(format!("unknown group {name:?}")));
    }
    let fleet = store::instance_counts(&s.db).await?;
    let now = s.now_ms();
    let mut out = Vec::new();
    for g in groups.into_iter().filter(|g| q.group.as_ref().is_none_or(|n| *n == g.name)) {
        let target = crate::policy::target_version(&g.policy, g.channel_version.as_deref()).map(str::to_string);
        let counts = match &target {
            Some(v) => store::rollout_counts(&s.db.read, &g.name, v, &g.policy, now).await?,
            None => Default::default(),
        };
        let mut versions: Vec<(String, i64)> = Vec::new();
        let mut states: Vec<(String, i64)> = Vec::new();
        for (_, version, state, n) in fleet.iter().filter(|(group, ..)| *group == g.name) {
            add(&mut versions, version, *n);
            add(&mut states, state, *n);
        }
        out.push(RolloutStatus {
            hosts: versions.iter().map(|v| v.1).sum(),
            group: g.name,
            channel: g.channel,
            target_version: target,
            paused: !g.policy.updates_enabled,
            halted: g.halted,
            halted_reason: g.halted_reason,
            versions,
            states,
            granted_in_period: counts.granted_in_period,
            in_progress: counts.outstanding,
            succeeded: counts.succeeded,
            failed: counts.failed,
        });
    }
    Ok(Json(out))
}

fn add(counts: &mut Vec<(String, i64)>, key: &str, n: i64) {
    match counts.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 += n,
        None => counts.push((key.to_string(), n)),
    }
}

// ---- reboot locks ----

#[derive(Deserialize)]
struct LockQuery {
    group: Option<String>,
}

fn check_lock_group(group: &str) -> ApiResult<()> {
    if crate::fleetlock::valid_group(group) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("group {group:?}: must match ^[a-zA-Z0-9.-]+$")))
    }
}

async fn lock_status(State(s): S, Query(q): Query<LockQuery>) -> ApiResult<Json<Vec<crate::locks::LockGroup>>> {
    let groups = s.locks.status(&s.db, q.group.as_deref()).await?;
    if let Some(g) = &q.group
        && groups.is_empty()
    {
        return Err(ApiError::NotFound(format!("unknown lock group {g:?}")));
    }
    Ok(Json(groups))
}

async fn set_lock_slots(
    State(s): S,
    Path(group): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Vec<crate::locks::LockGroup>>> {
    check_lock_group(&group)?;
    let req: LockSlots = parse("lock group", &body)?;
    if !(0..=10_000).contains(&req.slots) {
        return Err(ApiError::BadRequest(format!("slots {}: 0 to 10000", req.slots)));
    }
    s.locks.set_slots(&s.db, &group, req.slots, s.now_ms()).await?;
    tracing::info!(group, slots = req.slots, "reboot slots set");
    Ok(Json(s.locks.status(&s.db, Some(&group)).await?))
}

async fn release_lock(State(s): S, Path(group): Path<String>, body: Bytes) -> ApiResult<Json<serde_json::Value>> {
    let req: LockRelease = parse("release", &body)?;
    match s.locks.unlock(&s.db, &group, &req.id, s.now_ms(), "lock-released").await? {
        None => Err(ApiError::NotFound(format!("unknown lock group {group:?}"))),
        Some(false) => Err(ApiError::NotFound(format!("{:?} holds no reboot slot in {group:?}", req.id))),
        Some(true) => {
            tracing::warn!(group, id = req.id, "reboot slot released by an operator");
            Ok(Json(serde_json::json!({"released": req.id, "group": group})))
        }
    }
}

async fn new_lock_token(State(s): S, Path(group): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let token = tokens::generate()?;
    if !s.locks.set_token(&s.db, &group, Some(&tokens::hash(&token)), s.now_ms()).await? {
        return Err(ApiError::NotFound(format!("unknown lock group {group:?}")));
    }
    tracing::info!(group, "lock token set");
    Ok(Json(serde_json::json!({"group": group, "token": token})))
}

async fn remove_lock_token(State(s): S, Path(group): Path<String>) -> ApiResult<StatusCode> {
    if !s.locks.set_token(&s.db, &group, None, s.now_ms()).await? {
        return Err(ApiError::NotFound(format!("unknown lock group {group:?}")));
    }
    tracing::info!(group, "lock token removed");
    Ok(StatusCode::NO_CONTENT)
}
