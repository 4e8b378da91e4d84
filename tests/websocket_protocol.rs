//! What the server does with what clients send: pings answered with the same payload while
//! packets keep flowing (frames never interleave), the close handshake completed, oversized
//! messages refused with 1009.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tungstenite::Message;

#[test]
fn pings_are_answered_while_packets_flow() {
    let server = TestServer::start();
    for path in ["/stream/ping-json", "/stream/binary/ping-binary"] {
        let mut client = server.ws(path);
        client.metadata();
        let mut packets = client.data_n(5, Duration::from_secs(3));

        // Twenty pings with distinct payloads, sent between packets.
        let payloads: Vec<Vec<u8>> = (0..20u8)
            .map(|i| format!("ping-{i}-{}", "x".repeat(i as usize * 5)).into_bytes())
            .collect();
        let mut pongs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sent = 0;
        while pongs.len() < payloads.len() && Instant::now() < deadline {
            if sent < payloads.len() {
                client
                    .ws
                    .send(Message::Ping(payloads[sent].clone()))
                    .unwrap();
                sent += 1;
            }
            match client.read(Duration::from_millis(100)) {
                Ok(Some(Received::Pong(data))) => pongs.push(data),
                Ok(Some(Received::Text(v) | Received::Binary(v))) => {
                    assert_eq!(v["type"], "data");
                    packets.push(v["data"].clone());
                }
                Ok(Some(other)) => panic!("{path}: unexpected {other:?}"),
                Ok(None) => {}
                Err(e) => panic!("{path}: stream broke while pinging: {e}"),
            }
        }
        assert_eq!(
            pongs, payloads,
            "{path}: every ping answered, in order, same payload"
        );
        packets.extend(client.data_n(10, Duration::from_secs(3)));
        assert_contiguous(&packets, path);
        assert!(packets.len() >= 15);
    }
}

#[test]
fn the_close_handshake_completes() {
    let server = TestServer::start();
    let code = "close-handshake";
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    client.data_n(3, Duration::from_secs(3));
    let reply = client.close_handshake(1000);
    assert_eq!(
        reply.map(|(code, _)| code),
        Some(1000),
        "close reply echoes the code"
    );
    // After the close reply the server ends the connection.
    let ended = wait_until(Duration::from_secs(3), || {
        matches!(
            client.read(Duration::from_millis(100)),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)
        )
    });
    assert!(ended, "connection still open after the close handshake");
    server.wait_for_clients(code, 0, Duration::from_secs(3));
    let metrics = server.metrics();
    assert_eq!(
        metrics["metrics"]["sessions"][code]["connections_closed"],
        1
    );
}

#[test]
fn client_messages_are_counted_and_oversized_ones_refused() {
    let server = TestServer::start();
    let code = "client-messages";
    let mut client = server.ws(&format!("/stream/{code}"));
    client.metadata();
    client.next_data();
    client
        .ws
        .send(Message::Text(r#"{"decoder": "feedback"}"#.into()))
        .unwrap();
    client.ws.send(Message::Binary(vec![1, 2, 3])).unwrap();
    let counted = wait_until(Duration::from_secs(3), || {
        server.metrics()["metrics"]["sessions"][code]["clients"][0]["messages_received"] == 2
    });
    assert!(counted, "client messages not counted: {}", server.metrics());

    client
        .ws
        .send(Message::Text("x".repeat(70 * 1024)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut close: Option<Option<(u16, String)>> = None;
    while Instant::now() < deadline && close.is_none() {
        match client.read(Duration::from_millis(200)) {
            Ok(Some(Received::Close(frame))) => close = Some(frame),
            Ok(_) => {}
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
    let frame = close.expect("no close frame after an oversized message");
    assert_eq!(
        frame.map(|(code, _)| code),
        Some(1009),
        "close code for a too-big message"
    );
    server.wait_for_clients(code, 0, Duration::from_secs(3));
}

#[test]
fn every_frame_parses_with_several_clients_and_formats() {
    let server = TestServer::start();
    let code = "many-frames";
    let mut clients: Vec<WsClient> = (0..4)
        .map(|i| {
            let path = if i % 2 == 0 {
                format!("/stream/{code}")
            } else {
                format!("/stream/binary/{code}")
            };
            let mut client = server.ws(&path);
            client.metadata();
            client
        })
        .collect();
    let mut per_client: Vec<Vec<Value>> = vec![Vec::new(); clients.len()];
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        for (client, packets) in clients.iter_mut().zip(&mut per_client) {
            client
                .ws
                .send(Message::Ping(b"keepalive".to_vec()))
                .unwrap();
            while let Some(data) = client.try_next_data(Duration::from_millis(5)) {
                packets.push(data);
            }
        }
    }
    for (client, packets) in clients.iter().zip(&per_client) {
        assert!(
            packets.len() >= 30,
            "{}: {} packets",
            client.path,
            packets.len()
        );
        assert_contiguous(packets, &client.path);
    }
}
