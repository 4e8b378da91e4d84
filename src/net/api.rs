//! REST handlers: one function per endpoint, each returning JSON or an [`ApiError`].
//!
//! Response shapes follow the reference implementation (its clients parse them) and add
//! fields where we know more.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use serde_json::{json, Value};
use tiny_http::Request;

use super::http::{
    header_value, json_bytes_reply, json_reply, read_body, respond_unread, text_reply, with_header,
    ApiError, Params, Reply,
};
use super::router::{route, ControlAction, Endpoint};
use super::server::Context;
use super::websocket;
use crate::dataset::BIN_SECONDS;
use crate::engine::{Command, Filter, NoiseConfig, Playback, Session};
use crate::metrics::process::thread_cpu_seconds;
use crate::metrics::report;

/// Answers one request (or hands it to the WebSocket upgrade).
pub fn handle(ctx: &Arc<Context>, mut request: Request) {
    let remote = request.remote_addr().copied();
    if let Some(peer) = remote {
        ctx.reaper.note_request(peer);
    }
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let cors = ctx.config.cors_origin.clone();
    let port = ctx.local_addr.port();
    let endpoint = match route(request.method(), path) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            respond_unread(request, e.into_reply(&cors), port);
            return;
        }
    };
    if let Err(e) = authorize(ctx, &request, &endpoint, query) {
        respond_unread(request, e.into_reply(&cors), port);
        return;
    }
    if let Endpoint::Stream(code, format) = &endpoint {
        websocket::connect(ctx, request, code, *format, query);
        return;
    }
    let mut body_read = false;
    let reply = if ctx.is_stopping() {
        Err(ApiError::new(503, "server is shutting down"))
    } else {
        // With `Connection: upgrade` tiny_http hands over the raw connection as the body:
        // reading it would wait until the client hangs up (or the idle reaper cuts it),
        // holding a worker all that time. Outside the stream endpoints such a request (an h2c
        // upgrade attempt, say: `curl --http2`) is answered as having no body.
        let body = if wants_upgrade(&request) {
            Ok(Vec::new())
        } else {
            read_body(&mut request, ctx.config.max_body_bytes)
        };
        body_read = body.is_ok();
        body.and_then(|body| Params::parse(query, &body))
            .and_then(|params| dispatch(ctx, &request, endpoint, &params))
    };
    let reply = reply.unwrap_or_else(|e| e.into_reply(&cors));
    if body_read {
        if let Err(e) = request.respond(reply) {
            log::debug!("reply not delivered: {e}");
        }
    } else {
        respond_unread(request, reply, port);
    }
    if let Some(peer) = remote {
        ctx.reaper.note_request(peer);
    }
}

/// Whether tiny_http sees the request as an upgrade (its test: `Connection` mentions it).
fn wants_upgrade(request: &Request) -> bool {
    header_value(request, "Connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"))
}

/// With `--api-token`, state-changing endpoints (and streams, with `--stream-token`) need
/// `Authorization: Bearer <token>`; streams may pass `?token=` since browsers cannot set
/// headers on a WebSocket.
fn authorize(
    ctx: &Context,
    request: &Request,
    endpoint: &Endpoint,
    query: &str,
) -> Result<(), ApiError> {
    let Some(token) = ctx.config.api_token.as_deref() else {
        return Ok(());
    };
    let protected = match endpoint {
        Endpoint::CreateSession
        | Endpoint::DeleteSession(_)
        | Endpoint::Cleanup
        | Endpoint::Control(..) => true,
        Endpoint::Stream(..) => ctx.config.stream_token,
        _ => false,
    };
    if !protected {
        return Ok(());
    }
    let from_header = header_value(request, "Authorization")
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(str::trim);
    let from_query = matches!(endpoint, Endpoint::Stream(..))
        .then(|| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
        .flatten();
    let given = from_header.map(str::to_string).or(from_query);
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(401, "invalid API token")),
        None => Err(ApiError::new(
            401,
            "this endpoint needs the API token: send Authorization: Bearer <token>",
        )),
    }
}

/// Compares without an early exit, so response time does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn dispatch(
    ctx: &Context,
    request: &Request,
    endpoint: Endpoint,
    params: &Params,
) -> Result<Reply, ApiError> {
    let cors = ctx.config.cors_origin.as_str();
    let ok = |value: Value| Ok(json_reply(200, &value, cors));
    match endpoint {
        Endpoint::Root => ok(root(ctx, request)),
        Endpoint::Health => ok(health(ctx)),
        Endpoint::CreateSession => {
            let code = params.string("custom_code")?;
            let noise = match params.value("noise") {
                Some(value) => noise_from(value)?,
                None => ctx.registry.config().noise,
            };
            let session = ctx.registry.create_with(code.as_deref(), noise)?;
            log::info!("session {} created", session.code());
            ok(json!({
                "session_code": session.code(),
                "stream_url": format!("{}/stream/{}", ctx.public_ws_base(Some(request)), session.code()),
                "stream_url_binary": format!("{}/stream/binary/{}", ctx.public_ws_base(Some(request)), session.code()),
                "created": unix_seconds(session.created_at()),
                "message": "Session created. Use this code to stream independent neural data.",
            }))
        }
        Endpoint::ListSessions => {
            let sessions: Vec<Value> = ctx
                .registry
                .sessions()
                .iter()
                .map(|s| session_info(ctx, request, s))
                .collect();
            ok(json!({ "sessions": sessions, "stats": registry_stats(ctx) }))
        }
        Endpoint::GetSession(code) => {
            ok(session_info(ctx, request, &*ctx.registry.require(&code)?))
        }
        Endpoint::DeleteSession(code) => {
            ctx.registry.delete(&code)?;
            log::info!("session {code} deleted");
            ok(json!({ "message": format!("Session {code} deleted"), "session_code": code }))
        }
        Endpoint::Cleanup => {
            let removed = ctx.registry.cleanup_expired();
            ok(json!({
                "cleaned_up": removed.len(),
                "sessions": removed,
                "message": format!("Removed {} expired sessions", removed.len()),
            }))
        }
        Endpoint::Metadata => {
            let mut value = serde_json::to_value(&ctx.metadata).unwrap_or(Value::Null);
            value["source"] = json!(ctx.registry.table().source());
            value["bin_size_ms"] = json!(crate::dataset::BIN_MS);
            value["target_ids"] = json!(ctx.registry.table().target_ids().collect::<Vec<_>>());
            ok(value)
        }
        Endpoint::Trials => {
            let trials = ctx.registry.table().trials();
            ok(json!({ "trials": trials, "count": trials.len() }))
        }
        Endpoint::Trial(id) => {
            let id = parse_id(&id, "trial id")?;
            match ctx.registry.table().trial(id) {
                Some(trial) => ok(serde_json::to_value(trial).unwrap_or(Value::Null)),
                None => Err(ApiError::not_found(format!("trial {id} not found"))),
            }
        }
        Endpoint::TrialsByTarget(id) => {
            let id = parse_id(&id, "target id")?;
            let trials: Vec<_> = ctx.registry.table().trials_for_target(id).collect();
            ok(json!({ "trials": trials, "count": trials.len(), "target_index": id }))
        }
        Endpoint::Stats => ok(json!({
            "active_connections": ctx.registry.live_clients(),
            "session_manager": registry_stats(ctx),
            "lsl_streaming": lsl_streaming(ctx),
        })),
        Endpoint::Control(code, action) => control(ctx, &code, action, params),
        Endpoint::Position(code) => ok(position(ctx, &*ctx.registry.require(&code)?)),
        Endpoint::Metrics => metrics(ctx, request, params),
        Endpoint::Preflight => {
            let reply = json_reply(204, &Value::Null, cors);
            let reply = with_header(
                reply,
                "Access-Control-Allow-Methods",
                "GET, POST, DELETE, OPTIONS",
            );
            Ok(with_header(
                reply,
                "Access-Control-Allow-Headers",
                "Content-Type, Authorization",
            ))
        }
        Endpoint::Stream(..) => Err(ApiError::new(
            500,
            "stream endpoints are handled before dispatch",
        )),
    }
}

fn root(ctx: &Context, request: &Request) -> Value {
    let ws = ctx.public_ws_base(Some(request));
    json!({
        "service": "PhantomLink",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Real-time neural-data replay server: MC_Maze-like spikes and kinematics at 40 Hz",
        "dataset": ctx.metadata.dataset,
        "endpoints": {
            "create_session": "POST /api/sessions/create",
            "list_sessions": "GET /api/sessions",
            "session_stats": "GET /api/sessions/{session_code}",
            "delete_session": "DELETE /api/sessions/{session_code}",
            "cleanup_sessions": "POST /api/sessions/cleanup",
            "metadata": "GET /api/metadata",
            "trials": "GET /api/trials",
            "trial": "GET /api/trials/{trial_id}",
            "trials_by_target": "GET /api/trials/by-target/{target_id}",
            "stats": "GET /api/stats",
            "control": "POST /api/control/{session_code}/{pause|resume|stop|seek}",
            "position": "GET /api/control/{session_code}/position",
            "metrics": "GET /metrics",
            "health": "GET /health",
            "stream": format!("{ws}/stream/{{session_code}}"),
            "stream_binary": format!("{ws}/stream/binary/{{session_code}}"),
        },
        "examples": [
            "Create session: POST /api/sessions/create",
            format!("Stream (JSON): {ws}/stream/swift-neural-42"),
            format!("Stream (MessagePack): {ws}/stream/binary/swift-neural-42"),
            format!("With filter: {ws}/stream/swift-neural-42?target_id=0"),
        ],
    })
}

fn health(ctx: &Context) -> Value {
    json!({
        "status": "healthy",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": ctx.started.elapsed().as_secs_f64(),
        "sessions": ctx.registry.sessions().len(),
        "clients": ctx.registry.live_clients(),
        "dataset": ctx.metadata.dataset,
    })
}

fn registry_stats(ctx: &Context) -> Value {
    let sessions = ctx.registry.sessions();
    let active = sessions.iter().filter(|s| s.client_count() > 0).count();
    let config = ctx.registry.config();
    json!({
        "total_sessions": sessions.len(),
        "active_sessions": active,
        "total_connections": ctx.registry.live_clients(),
        "connections_opened": ctx.registry.connections_opened(),
        "max_sessions": config.max_sessions,
        "limits": {
            "max_sessions": config.max_sessions,
            "max_clients_per_session": config.max_clients_per_session,
            "max_clients_total": config.max_clients_total,
            "max_body_bytes": ctx.config.max_body_bytes,
            "max_client_message_bytes": super::reader::MAX_CLIENT_MESSAGE,
            "session_ttl_seconds": config.session_ttl.as_secs_f64(),
            "client_stall_timeout_seconds": config.stall_timeout.as_secs_f64(),
            "client_buffer_packets": config.ring_capacity,
            "http_idle_timeout_seconds": ctx.config.http_idle_timeout.as_secs_f64(),
            "handshake_timeout_seconds": ctx.config.http_idle_timeout.as_secs_f64(),
            "http_workers": ctx.config.http_workers.max(1),
            "writer_threads": ctx.config.writer_threads.max(1),
        },
        "timing": {
            "spin_us": ctx.registry.spin().as_secs_f64() * 1e6,
            "spin_mode": if config.spin.is_some() { "fixed" } else { "auto" },
        },
        "security": {
            "api_token_required": ctx.config.api_token.is_some(),
            "stream_token_required": ctx.config.api_token.is_some() && ctx.config.stream_token,
            "cors_origin": ctx.config.cors_origin,
        },
    })
}

/// `/api/stats` `lsl_streaming`: whether sessions publish LSL outlets, how they are named,
/// and each session's stream names.
fn lsl_streaming(ctx: &Context) -> Value {
    let Some(source) = ctx.registry.tap_source().filter(|s| s.kind() == "lsl") else {
        return json!({ "enabled": false, "compiled": cfg!(feature = "lsl") });
    };
    let mut sessions = serde_json::Map::new();
    for session in ctx.registry.sessions() {
        if let Some(tap) = session.tap() {
            sessions.insert(session.code().to_string(), json!(tap.streams));
        }
    }
    json!({
        "enabled": true,
        "compiled": true,
        "config": source.describe(),
        "sessions": sessions,
    })
}

fn filter_json(filter: Option<Filter>) -> Value {
    match filter {
        Some(Filter::Trial(id)) => json!({ "trial_id": id }),
        Some(Filter::Target(id)) => json!({ "target_id": id }),
        None => Value::Null,
    }
}

fn session_info(ctx: &Context, request: &Request, session: &Session) -> Value {
    let status = session.status();
    let (filter, clients, noise) = {
        let state = session.state();
        (state.filter, state.clients.len(), state.noise)
    };
    json!({
        "session_code": session.code(),
        "created_at": unix_seconds(session.created_at()),
        "age_seconds": session.age().as_secs_f64(),
        "idle_seconds": session.idle_for().as_secs_f64(),
        "active_connections": clients,
        "is_running": status.running.load(Relaxed) && status.started.load(Relaxed),
        "is_paused": status.paused.load(Relaxed),
        "started": status.started.load(Relaxed),
        "filter": filter_json(filter),
        "noise": noise,
        "noise_seed": noise.seed.unwrap_or(session.seed()),
        "current_index": status.position.load(Relaxed),
        "position_seconds": f64::from(status.position.load(Relaxed)) * BIN_SECONDS,
        "sequence_number": status.sequence.load(Relaxed),
        "packets_generated": status.packets_generated.load(Relaxed),
        "lsl_streams": session.tap().filter(|t| t.kind == "lsl").map(|t| &t.streams),
        "stream_url": format!("{}/stream/{}", ctx.public_ws_base(Some(request)), session.code()),
    })
}

fn position(ctx: &Context, session: &Session) -> Value {
    let status = session.status();
    let bin = status.position.load(Relaxed);
    json!({
        "session_code": session.code(),
        "position_seconds": f64::from(bin) * BIN_SECONDS,
        "packet_id": bin,
        "current_index": bin,
        "total_packets": ctx.metadata.total_packets,
        "duration_seconds": ctx.metadata.duration_seconds,
        "paused": status.paused.load(Relaxed),
        "is_paused": status.paused.load(Relaxed),
        "started": status.started.load(Relaxed),
        "sequence_number": status.sequence.load(Relaxed),
        "filter": filter_json(session.state().filter),
    })
}

fn control(
    ctx: &Context,
    code: &str,
    action: ControlAction,
    params: &Params,
) -> Result<Reply, ApiError> {
    let session = ctx.registry.require(code)?;
    let cors = ctx.config.cors_origin.as_str();
    let (command, status) = match action {
        ControlAction::Noise => return set_noise(ctx, &session, params),
        ControlAction::Pause => (Command::Pause, "paused"),
        ControlAction::Resume => (Command::Resume, "resumed"),
        ControlAction::Stop => (Command::Stop, "stopped"),
        ControlAction::Seek => (Command::Seek(seek_target(ctx, &session, params)?), "seeked"),
    };
    let seek_bin = match command {
        Command::Seek(bin) => Some(bin),
        _ => None,
    };
    session.send(command)?;
    let mut body = json!({ "status": status, "session_code": code });
    if let Some(bin) = seek_bin {
        body["packet_id"] = json!(bin);
        body["position_seconds"] = json!(f64::from(bin) * BIN_SECONDS);
    }
    Ok(json_reply(200, &body, cors))
}

/// The bin a seek asks for, checked against the recording and the session's filter.
fn seek_target(ctx: &Context, session: &Session, params: &Params) -> Result<u32, ApiError> {
    let total = ctx.metadata.total_packets;
    let duration = ctx.metadata.duration_seconds;
    let bin = match (params.f64("position_seconds")?, params.u32("packet_id")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give position_seconds or packet_id, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "seek needs position_seconds or packet_id (query or JSON body)",
            ))
        }
        (Some(seconds), None) => {
            if !(0.0..duration).contains(&seconds) {
                return Err(ApiError::bad_request(format!(
                    "position_seconds {seconds} is outside the recording [0, {duration})"
                )));
            }
            // The tolerance keeps 0.05 s in bin 2 despite 0.05 / 0.025 = 1.9999999999999998.
            ((seconds / BIN_SECONDS + 1e-9).floor() as u32).min(total as u32 - 1)
        }
        (None, Some(packet)) => {
            if packet as usize >= total {
                return Err(ApiError::bad_request(format!(
                    "packet_id {packet} is outside the recording [0, {total})"
                )));
            }
            packet
        }
    };
    let filter = session.state().filter;
    if let Some(filter) = filter {
        let table = ctx.registry.table();
        let playlist = match filter {
            Filter::Trial(id) => table.playlist_for_trial(id),
            Filter::Target(id) => table.playlist_for_target(id),
        };
        if !playlist.is_some_and(|p| Playback::contains(&p, bin)) {
            return Err(ApiError::conflict(format!(
                "packet {bin} is outside the session's filter ({filter}); reconnect without a filter to seek there"
            )));
        }
    }
    Ok(bin)
}

fn metrics(ctx: &Context, request: &Request, params: &Params) -> Result<Reply, ApiError> {
    let cors = ctx.config.cors_origin.as_str();
    let only = params.string("session")?;
    if let Some(code) = &only {
        ctx.registry.require(code)?;
    }
    let format = params.string("format")?;
    let accept = header_value(request, "Accept").unwrap_or("");
    let wants_text = format.as_deref() == Some("prometheus")
        || (format.is_none() && (accept.contains("text/plain") || accept.contains("openmetrics")));
    if let Some(other) = format
        .as_deref()
        .filter(|f| *f != "prometheus" && *f != "json")
    {
        return Err(ApiError::bad_request(format!(
            "unknown format {other:?}: use json or prometheus"
        )));
    }
    if wants_text {
        let openmetrics = accept.contains("application/openmetrics-text");
        let body = timed_render("prometheus", || {
            report::prometheus(&ctx.registry, only.as_deref(), openmetrics)
        });
        let content_type = if openmetrics {
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        } else {
            "text/plain; version=0.0.4; charset=utf-8"
        };
        return Ok(text_reply(200, body, content_type, cors));
    }
    let body = timed_render("json", || report::json(&ctx.registry, only.as_deref()));
    Ok(json_bytes_reply(200, body, cors))
}

/// `render()`, and at debug level a log line with the time it took and the CPU it used on
/// this thread (helpers not included): how an operator sees what a scrape costs on a loaded
/// server, where the benchmark reads histograms at rest.
fn timed_render<T: AsRef<[u8]>>(format: &str, render: impl FnOnce() -> T) -> T {
    if !log::log_enabled!(log::Level::Debug) {
        return render();
    }
    let (start, cpu) = (Instant::now(), thread_cpu_seconds());
    let body = render();
    log::debug!(
        "/metrics {format}: {} bytes rendered in {:.3} ms, {:.3} ms of this thread's CPU",
        body.as_ref().len(),
        start.elapsed().as_secs_f64() * 1e3,
        (thread_cpu_seconds() - cpu) * 1e3
    );
    body
}

/// `POST /api/control/{code}/noise`: a `preset` (query or body) or a body of settings.
fn set_noise(ctx: &Context, session: &Session, params: &Params) -> Result<Reply, ApiError> {
    let noise = match params.value("preset") {
        Some(preset) => noise_from(preset)?,
        None => noise_from(Value::Object(params.body().clone()))?,
    };
    session.set_noise(noise, ctx.registry.table().num_units())?;
    log::info!("session {}: noise set to {noise:?}", session.code());
    let body = json!({ "status": "noise_set", "session_code": session.code(), "noise": noise });
    Ok(json_reply(200, &body, &ctx.config.cors_origin))
}

/// A noise setting from a preset name or a JSON object of [`NoiseConfig`] fields (fields
/// left out take their clean values).
fn noise_from(value: Value) -> Result<NoiseConfig, ApiError> {
    let noise = match value {
        Value::String(name) => NoiseConfig::preset(&name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown noise preset {name:?}; use one of {}",
                NoiseConfig::PRESETS.join(", ")
            ))
        })?,
        object @ Value::Object(_) => serde_json::from_value::<NoiseConfig>(object)
            .map_err(|e| ApiError::bad_request(format!("invalid noise settings: {e}")))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "noise must be a preset name or an object of settings, got {other}"
            )))
        }
    };
    noise.validate().map_err(ApiError::bad_request)?;
    Ok(noise)
}

fn parse_id(raw: &str, what: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>().map_err(|_| {
        let shown: String = raw.chars().take(40).collect();
        ApiError::bad_request(format!(
            "{what} must be a non-negative integer, got {shown:?}"
        ))
    })
}

fn unix_seconds(time: std::time::SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
