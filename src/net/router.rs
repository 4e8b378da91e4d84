//! Maps a method and path to an endpoint, or to 404 / 405.

use tiny_http::Method;

use super::ApiError;
use crate::codec::WireFormat;

/// A playback control action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    /// Stop generating packets.
    Pause,
    /// Continue.
    Resume,
    /// Pause and rewind.
    Stop,
    /// Jump to a position.
    Seek,
    /// Change the session's noise, drift, dropout and delay line.
    Noise,
}

/// Every endpoint of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /`
    Root,
    /// `GET /health`
    Health,
    /// `POST /api/sessions/create`
    CreateSession,
    /// `GET /api/sessions`
    ListSessions,
    /// `GET /api/sessions/{code}`
    GetSession(String),
    /// `DELETE /api/sessions/{code}`
    DeleteSession(String),
    /// `POST /api/sessions/cleanup`
    Cleanup,
    /// `GET /api/metadata`
    Metadata,
    /// `GET /api/trials`
    Trials,
    /// `GET /api/trials/{id}`
    Trial(String),
    /// `GET /api/trials/by-target/{id}`
    TrialsByTarget(String),
    /// `GET /api/stats`
    Stats,
    /// `POST /api/control/{code}/{action}`
    Control(String, ControlAction),
    /// `GET /api/control/{code}/position`
    Position(String),
    /// `GET /metrics`
    Metrics,
    /// `GET /stream/{code}` and `/stream/binary/{code}` (WebSocket upgrade)
    Stream(String, WireFormat),
    /// `OPTIONS` on any known path (CORS preflight)
    Preflight,
}

/// Routes `method path` (path without query).
pub fn route(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
    let trimmed = match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    };
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    use Endpoint as E;
    let (allow, endpoint): (&'static str, Option<Endpoint>) = match segments.as_slice() {
        [""] => ("GET", on(method, &Method::Get, E::Root)),
        ["health"] => ("GET", on(method, &Method::Get, E::Health)),
        ["metrics"] => ("GET", on(method, &Method::Get, E::Metrics)),
        ["api", "sessions", "create"] => ("POST", on(method, &Method::Post, E::CreateSession)),
        ["api", "sessions", "cleanup"] => ("POST", on(method, &Method::Post, E::Cleanup)),
        ["api", "sessions"] => ("GET", on(method, &Method::Get, E::ListSessions)),
        ["api", "sessions", code] => (
            "GET, DELETE",
            match method {
                Method::Get => Some(E::GetSession(code.to_string())),
                Method::Delete => Some(E::DeleteSession(code.to_string())),
                _ => None,
            },
        ),
        ["api", "metadata"] => ("GET", on(method, &Method::Get, E::Metadata)),
        ["api", "stats"] => ("GET", on(method, &Method::Get, E::Stats)),
        ["api", "trials"] => ("GET", on(method, &Method::Get, E::Trials)),
        ["api", "trials", "by-target", id] => (
            "GET",
            on(method, &Method::Get, E::TrialsByTarget(id.to_string())),
        ),
        ["api", "trials", id] => ("GET", on(method, &Method::Get, E::Trial(id.to_string()))),
        ["api", "control", code, "position"] => (
            "GET",
            on(method, &Method::Get, E::Position(code.to_string())),
        ),
        ["api", "control", code, action] => {
            let action = match *action {
                "pause" => ControlAction::Pause,
                "resume" => ControlAction::Resume,
                "stop" => ControlAction::Stop,
                "seek" => ControlAction::Seek,
                "noise" => ControlAction::Noise,
                _ => return Err(not_found(path)),
            };
            (
                "POST",
                on(method, &Method::Post, E::Control(code.to_string(), action)),
            )
        }
        ["stream", "binary", code] => (
            "GET",
            on(
                method,
                &Method::Get,
                E::Stream(code.to_string(), WireFormat::MessagePack),
            ),
        ),
        ["stream", code] => (
            "GET",
            on(
                method,
                &Method::Get,
                E::Stream(code.to_string(), WireFormat::Json),
            ),
        ),
        _ => return Err(not_found(path)),
    };
    match endpoint {
        Some(endpoint) => Ok(endpoint),
        None if *method == Method::Options => Ok(E::Preflight),
        None => Err(ApiError::method_not_allowed(allow)),
    }
}

fn on(method: &Method, wanted: &Method, endpoint: Endpoint) -> Option<Endpoint> {
    (method == wanted).then_some(endpoint)
}

fn not_found(path: &str) -> ApiError {
    let shown: String = path.chars().take(100).collect();
    ApiError::not_found(format!("no endpoint at {shown}; see GET / for the list"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_endpoint() {
        let get = Method::Get;
        assert_eq!(route(&get, "/").unwrap(), Endpoint::Root);
        assert_eq!(
            route(&get, "/api/sessions/").unwrap(),
            Endpoint::ListSessions
        );
        assert_eq!(
            route(&Method::Delete, "/api/sessions/abc").unwrap(),
            Endpoint::DeleteSession("abc".into())
        );
        assert_eq!(
            route(&get, "/api/trials/by-target/3").unwrap(),
            Endpoint::TrialsByTarget("3".into())
        );
        assert_eq!(
            route(&Method::Post, "/api/control/x/seek").unwrap(),
            Endpoint::Control("x".into(), ControlAction::Seek)
        );
        assert_eq!(
            route(&get, "/stream/binary/x").unwrap(),
            Endpoint::Stream("x".into(), WireFormat::MessagePack)
        );
        assert_eq!(
            route(&get, "/stream/x").unwrap(),
            Endpoint::Stream("x".into(), WireFormat::Json)
        );
        assert_eq!(
            route(&Method::Options, "/api/sessions/create").unwrap(),
            Endpoint::Preflight
        );
    }

    #[test]
    fn wrong_method_is_405_and_unknown_path_404() {
        let e = route(&Method::Get, "/api/sessions/create").unwrap_err();
        assert_eq!((e.status, e.allow), (405, Some("POST")));
        assert_eq!(
            route(&Method::Put, "/api/sessions/x").unwrap_err().allow,
            Some("GET, DELETE")
        );
        assert_eq!(route(&Method::Get, "/nope").unwrap_err().status, 404);
        assert_eq!(
            route(&Method::Post, "/api/control/x/dance")
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(route(&Method::Get, "//api").unwrap_err().status, 404);
    }
}
