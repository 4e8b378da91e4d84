//! Property tests (proptest) of what parses untrusted input — the router, request parameters,
//! session codes — and of the playback cursor every seek goes through: for arbitrary input
//! they never panic, and they answer only what they may.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use phantomlink::engine::{validate_code, Playback};
use phantomlink::net::{route, Endpoint};
use proptest::prelude::*;
use tiny_http::Method;

/// Methods, standard or not, as tiny_http parses them from a request line.
fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Get),
        Just(Method::Post),
        Just(Method::Delete),
        Just(Method::Put),
        Just(Method::Head),
        Just(Method::Options),
        Just(Method::Patch),
        "[A-Za-z]{1,10}".prop_map(|m| Method::from_str(&m).unwrap_or(Method::Get)),
    ]
}

/// Paths made of the router's own words (so that real endpoints are hit often), tricky
/// segments and arbitrary text, with slashes doubled or trailing now and then.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => prop::sample::select(vec![
            "api", "sessions", "create", "cleanup", "control", "pause", "resume", "stop", "seek",
            "noise", "position", "trials", "by-target", "stream", "binary", "metrics", "health",
            "metadata", "stats", "", "..", ".", "%2e%2e", "x", "swift-neural-42", "1",
        ])
        .prop_map(str::to_string),
        1 => "[A-Za-z0-9_.%~-]{0,70}",
        1 => any::<String>(),
    ];
    (
        prop::collection::vec(segment, 0..7),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(segments, trailing, leading_double)| {
            let mut path = if leading_double {
                "//".to_string()
            } else {
                "/".to_string()
            };
            path.push_str(&segments.join("/"));
            if trailing {
                path.push('/');
            }
            path
        })
}

/// The path segment an endpoint carries (session code, trial or target id), if any.
fn carried(endpoint: &Endpoint) -> Option<&str> {
    match endpoint {
        Endpoint::GetSession(s)
        | Endpoint::DeleteSession(s)
        | Endpoint::Trial(s)
        | Endpoint::TrialsByTarget(s)
        | Endpoint::Control(s, _)
        | Endpoint::Position(s)
        | Endpoint::Stream(s, _) => Some(s),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// `route` never panics; it answers an endpoint, 404, or 405 naming the allowed methods.
    /// An endpoint's carried segment is one of the path's segments, never a joined or decoded
    /// one (no `..` resolution, no percent-decoding), and a trailing slash changes nothing.
    #[test]
    fn the_router_answers_an_endpoint_404_or_405(method in method(), path in path()) {
        match route(&method, &path) {
            Ok(endpoint) => {
                if let Some(segment) = carried(&endpoint) {
                    prop_assert!(path.split('/').any(|s| s == segment), "{segment:?} not a segment of {path:?}");
                    prop_assert!(!segment.contains('/'));
                }
                if endpoint == Endpoint::Preflight {
                    prop_assert_eq!(&method, &Method::Options);
                }
            }
            Err(e) => {
                prop_assert!(e.status == 404 || e.status == 405, "status {} for {path:?}", e.status);
                prop_assert_eq!(e.status == 405, e.allow.is_some());
                prop_assert!(e.detail.len() < 300, "detail is bounded: {}", e.detail.len());
            }
        }
        if path.len() > 1 && !path.ends_with('/') {
            let with_slash = format!("{path}/");
            prop_assert_eq!(route(&method, &path).ok(), route(&method, &with_slash).ok());
        }
    }

    /// Any bytes as a query string and any bytes as a body: parsing never panics, and every
    /// accessor answers a value or a 400, never anything else.
    #[test]
    fn params_never_panic(query in any::<String>(), body in prop::collection::vec(any::<u8>(), 0..300), name in "[a-z_]{1,12}") {
        if let Ok(params) = phantomlink::net::Params::parse(&query, &body) {
            for key in [name.as_str(), "packet_id", "position_seconds", "custom_code", "trial_id"] {
                let _ = params.value(key);
                prop_assert!(params.string(key).err().is_none_or(|e| e.status == 400));
                prop_assert!(params.u32(key).err().is_none_or(|e| e.status == 400));
                match params.f64(key) {
                    Ok(Some(x)) => prop_assert!(x.is_finite()),
                    Ok(None) => {}
                    Err(e) => prop_assert_eq!(e.status, 400),
                }
            }
        } else {
            let e = phantomlink::net::Params::parse(&query, &body).unwrap_err();
            prop_assert_eq!(e.status, 400);
            prop_assert!(!body.iter().all(u8::is_ascii_whitespace), "whitespace bodies are empty");
        }
    }

    /// JSON-shaped bodies: integers within u32 read back exactly, anything else is a 400.
    #[test]
    fn integers_are_read_exactly_or_refused(n in any::<i64>(), as_query in any::<bool>()) {
        let (query, body) = if as_query {
            (format!("packet_id={n}"), String::new())
        } else {
            (String::new(), format!("{{\"packet_id\": {n}}}"))
        };
        let params = phantomlink::net::Params::parse(&query, body.as_bytes()).unwrap();
        match u32::try_from(n) {
            Ok(exact) => prop_assert_eq!(params.u32("packet_id").unwrap(), Some(exact)),
            Err(_) => prop_assert_eq!(params.u32("packet_id").unwrap_err().status, 400),
        }
    }

    /// Floats: finite ones read back, NaN and infinities (however spelt) are a 400.
    #[test]
    fn numbers_are_finite_or_refused(x in any::<f64>()) {
        let params = phantomlink::net::Params::parse(&format!("position_seconds={x}"), b"").unwrap();
        match params.f64("position_seconds") {
            Ok(Some(y)) => prop_assert!(x.is_finite() && y == x),
            Ok(None) => prop_assert!(false, "value lost"),
            Err(e) => prop_assert!(!x.is_finite() && e.status == 400),
        }
    }

    /// Session codes: every string over `[A-Za-z0-9_-]` of length 1 to 64 is accepted ...
    #[test]
    fn valid_codes_are_accepted(code in "[A-Za-z0-9_-]{1,64}") {
        prop_assert!(validate_code(&code).is_ok());
    }

    /// ... and nothing else: longer ones, empty ones, and any with another character.
    #[test]
    fn invalid_codes_are_refused(
        prefix in "[A-Za-z0-9_-]{0,40}",
        bad in any::<char>().prop_filter("outside the code alphabet", |c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')),
        suffix in "[A-Za-z0-9_-]{0,40}",
        long in "[A-Za-z0-9_-]{65,200}",
    ) {
        let with_bad = format!("{prefix}{bad}{suffix}");
        prop_assert!(validate_code(&with_bad).is_err(), "accepted {:?}", with_bad);
        prop_assert!(validate_code(&long).is_err());
        prop_assert!(validate_code("").is_err());
    }

    /// Any string: accepted exactly when it matches the pattern.
    #[test]
    fn code_validation_is_exactly_the_pattern(code in any::<String>()) {
        let matches = (1..=64).contains(&code.len())
            && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        prop_assert_eq!(validate_code(&code).is_ok(), matches);
    }
}

// ---------------------------------------------------------------------------------------------
// Playback

/// A playlist: ranges within a 200-bin recording, some empty, at least one not.
fn playlist() -> impl Strategy<Value = Vec<Range<u32>>> {
    prop::collection::vec((0u32..200, 0u32..12), 1..8)
        .prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(start, len)| start..(start + len).min(200))
                .collect::<Vec<_>>()
        })
        .prop_filter("at least one bin", |p| p.iter().any(|r| !r.is_empty()))
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u8),
    Seek(u32),
    Rewind,
    Replace(Vec<Range<u32>>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Advance),
        3 => (0u32..220).prop_map(Op::Seek),
        1 => Just(Op::Rewind),
        1 => playlist().prop_map(Op::Replace),
    ]
}

/// The bins `playlist` plays, in order, once round.
fn order(playlist: &[Range<u32>]) -> Vec<u32> {
    playlist.iter().flat_map(|r| r.clone()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever sequence of advances, seeks, rewinds and playlist changes: the position is
    /// always a bin of the playlist; advance plays the position and moves to the next bin of
    /// the playlist's order (wrapping); a seek succeeds exactly for bins the playlist holds and
    /// then plays that bin next; `contains` agrees with a brute-force search.
    #[test]
    fn playback_stays_in_its_playlist(initial in playlist(), ops in prop::collection::vec(op(), 0..40)) {
        let mut current = initial.clone();
        let mut playback = Playback::new(Arc::from(initial));
        prop_assert_eq!(playback.position(), order(&current)[0]);
        for op in ops {
            let bins = order(&current);
            let index_of = |bin: u32, from: usize| -> Option<usize> {
                (0..bins.len()).map(|k| (from + k) % bins.len()).find(|&k| bins[k] == bin)
            };
            match op {
                Op::Advance(n) => {
                    for _ in 0..n {
                        let at = playback.position();
                        let k = index_of(at, 0).expect("position is in the playlist");
                        prop_assert_eq!(playback.advance(), at);
                        // Overlapping ranges repeat bins: the next position follows the
                        // occurrence the cursor was at, so accept any occurrence's successor.
                        let successors: Vec<u32> = (0..bins.len())
                            .filter(|&j| bins[j] == at)
                            .map(|j| bins[(j + 1) % bins.len()])
                            .collect();
                        prop_assert!(successors.contains(&playback.position()), "after {} (index {}) came {}", at, k, playback.position());
                    }
                }
                Op::Seek(bin) => {
                    let held = bins.contains(&bin);
                    prop_assert_eq!(Playback::contains(&current, bin), held);
                    let before = playback.position();
                    match playback.seek(bin) {
                        Ok(()) => {
                            prop_assert!(held);
                            prop_assert_eq!(playback.position(), bin);
                        }
                        Err(_) => {
                            prop_assert!(!held);
                            prop_assert_eq!(playback.position(), before, "a refused seek moves nothing");
                        }
                    }
                }
                Op::Rewind => {
                    playback.rewind();
                    prop_assert_eq!(playback.position(), bins[0]);
                }
                Op::Replace(next) => {
                    playback.replace(Arc::from(next.clone()));
                    current = next;
                    prop_assert_eq!(playback.position(), order(&current)[0]);
                }
            }
            prop_assert!(order(&current).contains(&playback.position()));
        }
    }

    /// One full round of advances plays exactly the playlist's bins in order, then starts
    /// over.
    #[test]
    fn a_round_plays_every_bin_once_in_order(list in playlist()) {
        let bins = order(&list);
        let mut playback = Playback::new(Arc::from(list));
        let played: Vec<u32> = (0..bins.len()).map(|_| playback.advance()).collect();
        prop_assert_eq!(&played, &bins);
        prop_assert_eq!(playback.position(), bins[0]);
    }
}
