//! Trial and target filters on the stream URL: playback restricted to those bins, looping;
//! conflicts refused with 409 before the upgrade; bad filters refused with 400; seeks outside
//! the filter refused with 409.

mod common;

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn trial_range(trial_id: u32) -> Range<u64> {
    let playlist = table()
        .playlist_for_trial(trial_id)
        .expect("trial has bins");
    assert_eq!(playlist.len(), 1);
    u64::from(playlist[0].start)..u64::from(playlist[0].end)
}

/// A target reached for in at least three trials, and its playlist.
fn busy_target() -> (u32, Vec<Range<u64>>) {
    let table = table();
    let target = table
        .target_ids()
        .find(|&t| table.playlist_for_target(t).is_some_and(|p| p.len() >= 3))
        .expect("some target has three trials");
    let ranges = table
        .playlist_for_target(target)
        .unwrap()
        .iter()
        .map(|r| u64::from(r.start)..u64::from(r.end))
        .collect();
    (target, ranges)
}

/// Asserts that each bin follows the previous one in `playlist` order, looping.
#[track_caller]
fn assert_follows_playlist(packets: &[Value], playlist: &[Range<u64>]) {
    for pair in packets.windows(2) {
        let (a, b) = (bin(&pair[0]), bin(&pair[1]));
        let range = playlist
            .iter()
            .position(|r| r.contains(&a))
            .expect("bin in playlist");
        let expected = if a + 1 < playlist[range].end {
            a + 1
        } else {
            playlist[(range + 1) % playlist.len()].start
        };
        assert_eq!(b, expected, "after bin {a}");
    }
}

#[test]
fn trial_filter_plays_only_that_trial_and_loops() {
    let server = TestServer::start();
    let trial_id = 7;
    let range = trial_range(trial_id);
    let code = "filter-trial";
    let mut client = server.ws(&format!("/stream/{code}?trial_id={trial_id}"));
    client.metadata();
    let first = client.next_data();
    assert_eq!(
        bin(&first),
        range.start,
        "a filtered session starts at the trial's start"
    );
    assert_eq!(first["trial_id"], trial_id);
    assert_eq!(
        first["trial_elapsed_ms"].as_f64().map(|e| e < 25.0),
        Some(true)
    );

    let reply = server.control(code, &format!("seek?packet_id={}", range.end - 4));
    assert_eq!(reply["packet_id"], range.end - 4);
    let mut packets = client.data_until(400, Duration::from_secs(8), |d| bin(d) == range.end - 4);
    packets.extend(client.data_n(10, Duration::from_secs(3)));
    let after_seek = &packets[packets.len() - 11..];
    let bins: Vec<u64> = after_seek.iter().map(bin).collect();
    let mut expected: Vec<u64> = (range.end - 4..range.end).collect();
    expected.extend(range.start..range.start + 7);
    assert_eq!(bins, expected, "the trial loops back to its start");
    assert_contiguous(&packets, "trial filter");
    for data in std::iter::once(&first).chain(&packets) {
        assert_eq!(data["trial_id"], trial_id, "{data}");
        assert!(
            range.contains(&bin(data)),
            "bin {} outside {range:?}",
            bin(data)
        );
        assert_eq!(row_part(data), expected_row(&table(), bin(data) as u32));
    }
    let session = server.session(code);
    assert_eq!(session["filter"]["trial_id"], trial_id);
    assert_eq!(server.position(code)["filter"]["trial_id"], trial_id);
}

#[test]
fn target_filter_plays_only_that_targets_trials() {
    let server = TestServer::start();
    let (target, playlist) = busy_target();
    let trials: BTreeSet<u64> = server
        .get(&format!("/api/trials/by-target/{target}"))
        .ok_json()["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert!(trials.len() >= 3);
    let code = "filter-target";
    let mut client = server.ws(&format!("/stream/{code}?target_id={target}"));
    client.metadata();
    let mut packets = vec![client.next_data()];
    assert_eq!(bin(&packets[0]), playlist[0].start);

    // Across the end of the target's first trial into its second ...
    server.control(code, &format!("seek?packet_id={}", playlist[0].end - 3));
    packets.extend(client.data_until(400, Duration::from_secs(8), |d| {
        bin(d) == playlist[1].start + 2
    }));
    // ... and from its last trial back to its first.
    let last = playlist.last().unwrap();
    server.control(code, &format!("seek?packet_id={}", last.end - 3));
    let wrapped = client.data_until(400, Duration::from_secs(8), |d| {
        bin(d) == playlist[0].start + 2
    });
    let tail_start = wrapped
        .iter()
        .position(|d| bin(d) == last.end - 3)
        .expect("sought bin played");
    assert_follows_playlist(&wrapped[tail_start..], &playlist);
    assert_eq!(
        wrapped.len() - tail_start,
        6,
        "3 bins to the end, then 3 from the first trial"
    );
    packets.extend(wrapped);
    assert_contiguous(&packets, "target filter");
    let crossing = packets
        .iter()
        .position(|d| bin(d) == playlist[0].end - 3)
        .unwrap();
    assert_follows_playlist(&packets[crossing..crossing + 6], &playlist);

    for data in &packets {
        assert_eq!(data["intention"]["target_id"], target, "{data}");
        let trial = data["trial_id"]
            .as_u64()
            .expect("filtered bins are inside trials");
        assert!(
            trials.contains(&trial),
            "trial {trial} does not reach target {target}"
        );
        assert!(playlist.iter().any(|r| r.contains(&bin(data))));
    }
    assert_eq!(server.session(code)["filter"]["target_id"], target);
}

#[test]
fn a_conflicting_filter_is_refused_while_others_play() {
    let server = TestServer::start();
    let code = "filter-conflict";
    let (first_trial, second_trial) = (3, 4);
    let mut playing = server.ws(&format!("/stream/{code}?trial_id={first_trial}"));
    playing.metadata();
    playing.next_data();

    for query in [
        format!("trial_id={second_trial}"),
        "target_id=0".to_string(),
    ] {
        let detail = upgrade_request(server.addr, &format!("/stream/{code}?{query}")).error(409);
        assert!(
            detail.contains("trial_id=3"),
            "detail names what plays: {detail}"
        );
        let detail =
            upgrade_request(server.addr, &format!("/stream/binary/{code}?{query}")).error(409);
        assert!(!detail.is_empty());
    }
    assert_eq!(server.session(code)["active_connections"], 1);

    // The same filter, or none, joins what is playing.
    let mut same = server.ws(&format!("/stream/{code}?trial_id={first_trial}"));
    same.metadata();
    let mut unfiltered = server.ws(&format!("/stream/binary/{code}"));
    unfiltered.metadata();
    for client in [&mut same, &mut unfiltered] {
        let data = client.next_data();
        assert_eq!(data["trial_id"], first_trial, "{}: {data}", client.path);
    }

    // Once everyone has left, a new filter applies.
    drop((playing, same, unfiltered));
    server.wait_for_clients(code, 0, Duration::from_secs(5));
    let mut next = server.ws(&format!("/stream/{code}?trial_id={second_trial}"));
    next.metadata();
    let data = next.next_data();
    assert_eq!(data["trial_id"], second_trial);
    assert_eq!(bin(&data), trial_range(second_trial).start);
}

#[test]
fn bad_filters_are_refused_before_the_upgrade() {
    let server = TestServer::start();
    let code = "filter-bad";
    for query in [
        "trial_id=99999",
        "target_id=999",
        "trial_id=1&target_id=0",
        "trial_id=abc",
        "target_id=-1",
        "trial_id=",
        "trial_id=1.5",
    ] {
        for endpoint in ["stream", "stream/binary"] {
            let response = upgrade_request(server.addr, &format!("/{endpoint}/{code}?{query}"));
            response.error(400);
        }
    }
    // Refused requests do not create the session.
    server.get(&format!("/api/sessions/{code}")).error(404);
}

#[test]
fn seeking_outside_the_filter_is_a_conflict() {
    let server = TestServer::start();
    let code = "filter-seek";
    let trial_id = 10;
    let range = trial_range(trial_id);
    let mut client = server.ws(&format!("/stream/{code}?trial_id={trial_id}"));
    client.metadata();
    client.next_data();
    for query in [
        format!("packet_id={}", range.end),
        format!("packet_id={}", range.start - 1),
        "packet_id=0".to_string(),
        format!("position_seconds={}", (range.end + 40) as f64 * 0.025),
    ] {
        let detail = server
            .post(&format!("/api/control/{code}/seek?{query}"))
            .error(409);
        assert!(detail.contains("filter"), "{query}: {detail}");
    }
    let inside = range.start + 2;
    let reply = server.control(code, &format!("seek?packet_id={inside}"));
    assert_eq!(reply["packet_id"], inside);
    let packets = client.data_until(200, Duration::from_secs(5), |d| bin(d) == inside);
    assert!(packets.iter().all(|d| range.contains(&bin(d))));
    let seconds = (range.start + 5) as f64 * 0.025 + 0.001;
    let reply = server.control(code, &format!("seek?position_seconds={seconds}"));
    assert_eq!(reply["packet_id"], range.start + 5);
}

#[test]
fn a_session_left_filtered_plays_everything_for_the_next_unfiltered_client() {
    let server = TestServer::start();
    let code = "filter-left-behind";
    let range = trial_range(3);
    let mut filtered = server.ws(&format!("/stream/{code}?trial_id=3"));
    filtered.metadata();
    assert_eq!(filtered.next_data()["trial_id"], 3);
    drop(filtered);
    server.wait_for_clients(code, 0, Duration::from_secs(5));

    let mut plain = server.ws(&format!("/stream/{code}"));
    plain.metadata();
    let first = plain.next_data();
    assert_eq!(
        bin(&first),
        0,
        "the whole recording plays again, from its start"
    );
    assert!(!range.contains(&bin(&first)));
    assert_eq!(server.session(code)["filter"], Value::Null);
}
