//! WebSocket connect: checks, session attach, the 101 answer, then the client's writer (on
//! the writer pool) and its reader thread.
//!
//! Everything that can be refused is refused before the upgrade, as a normal HTTP error with
//! a JSON `detail` (unknown filter 400, conflicting filter 409, limits 503), so clients see a
//! reason rather than a dropped connection.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rtrb::RingBuffer;
use tiny_http::{Request, Response};
use tungstenite::handshake::derive_accept_key;

use super::http::{header_value, respond_unread, with_header, ApiError, Params};
use super::reader::{self, MAX_PENDING_REPLIES};
use super::server::Context;
use super::socket::recover_tcp_stream;
use super::writer::{Writer, WriterExit};
use crate::codec::{encode_metadata, Frame, SessionRef, WireFormat};
use crate::engine::{ClientShared, CloseReason, Command, Filter, Playlist, Session, Subscriber};

/// Stack of reader threads: they hold little on the stack; 256 KiB leaves ample margin.
const CLIENT_STACK: usize = 256 * 1024;

/// Handles `GET /stream[/binary]/{code}`: answers errors itself, or upgrades and starts the
/// client's threads.
pub fn connect(ctx: &Arc<Context>, request: Request, code: &str, format: WireFormat, query: &str) {
    let cors = ctx.config.cors_origin.clone();
    match prepare(ctx, &request, code, format, query) {
        Err(error) => respond_unread(request, error.into_reply(&cors), ctx.local_addr.port()),
        Ok(prepared) => upgrade(ctx, request, prepared),
    }
}

struct Prepared {
    accept_key: String,
    session: Arc<Session>,
    client: Arc<ClientShared>,
    ticket: crate::engine::ClientTicket,
    ring: (rtrb::Producer<Arc<Frame>>, rtrb::Consumer<Arc<Frame>>),
    remote: SocketAddr,
    stream_url: String,
}

fn prepare(
    ctx: &Arc<Context>,
    request: &Request,
    code: &str,
    format: WireFormat,
    query: &str,
) -> Result<Prepared, ApiError> {
    let accept_key = check_handshake(request)?;
    let remote = *request
        .remote_addr()
        .ok_or_else(|| ApiError::bad_request("WebSocket needs a TCP connection"))?;
    let filter = requested_filter(ctx, &Params::parse(query, b"")?)?;
    let registry = &ctx.registry;
    let session = registry.get_or_create(code)?;
    let (id, ticket) = registry.reserve_client()?;
    let capacity = registry.config().ring_capacity;
    let client = Arc::new(ClientShared::with_feedback_window(
        id,
        remote,
        format,
        capacity,
        registry.config().feedback_window,
    ));
    session.attach(
        Arc::clone(&client),
        filter,
        registry.table().playlist_all(),
        registry.config().max_clients_per_session,
    )?;
    Ok(Prepared {
        accept_key,
        session,
        client,
        ticket,
        ring: RingBuffer::new(capacity),
        remote,
        stream_url: match format {
            WireFormat::Json => format!("{}/stream/{code}", ctx.public_ws_base(Some(request))),
            WireFormat::MessagePack => {
                format!("{}/stream/binary/{code}", ctx.public_ws_base(Some(request)))
            }
        },
    })
}

/// Checks the upgrade headers (RFC 6455 §4.2.1) and returns the `Sec-WebSocket-Accept` value.
fn check_handshake(request: &Request) -> Result<String, ApiError> {
    let has_token = |name: &str, token: &str| {
        header_value(request, name).is_some_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return Err(ApiError::new(
            426,
            "this endpoint streams over WebSocket: connect with a WebSocket client (Upgrade: websocket)",
        ));
    }
    if header_value(request, "Sec-WebSocket-Version").map(str::trim) != Some("13") {
        return Err(ApiError::new(426, "unsupported WebSocket version: use 13"));
    }
    let key = header_value(request, "Sec-WebSocket-Key")
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key header"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

fn requested_filter(
    ctx: &Context,
    params: &Params,
) -> Result<Option<(Filter, Playlist)>, ApiError> {
    let table = ctx.registry.table();
    match (params.u32("trial_id")?, params.u32("target_id")?) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give trial_id or target_id, not both",
        )),
        (Some(trial), None) => match table.playlist_for_trial(trial) {
            Some(playlist) => Ok(Some((Filter::Trial(trial), playlist))),
            None => Err(ApiError::bad_request(format!(
                "trial_id {trial} does not exist; see GET /api/trials"
            ))),
        },
        (None, Some(target)) => match table.playlist_for_target(target) {
            Some(playlist) => Ok(Some((Filter::Target(target), playlist))),
            None => Err(ApiError::bad_request(format!(
                "target_id {target} does not exist (targets: {:?})",
                table.target_ids().collect::<Vec<_>>()
            ))),
        },
        (None, None) => Ok(None),
    }
}

/// Kernel send buffer of a client's socket (Linux doubles it to 64 KiB: about 1.5 s of JSON
/// packets). Left to autotuning it grows to megabytes — minutes of stream — so a client that
/// stopped reading would get ever staler packets while its ring never filled: no drops, no
/// ring high-water, no stall, and a tick→socket latency that hides the delay. Capped, the
/// backlog shows up in the ring, where it is dropped and counted.
const SEND_BUFFER: usize = 32 * 1024;

fn upgrade(ctx: &Arc<Context>, request: Request, prepared: Prepared) {
    let Prepared {
        accept_key,
        session,
        client,
        ticket,
        ring: (producer, consumer),
        remote,
        stream_url,
    } = prepared;
    ctx.reaper.add_websocket(remote);
    let response = with_header(Response::empty(101), "Sec-WebSocket-Accept", &accept_key);
    let upgraded = request.upgrade("websocket", response);
    let recovered = recover_tcp_stream(remote, ctx.local_addr.port());
    // Our duplicate keeps the connection open: tiny_http's handles (upgrade disarmed their
    // shutdown, see vendor/tiny_http/PATCHES.md) close now, releasing its pool thread.
    drop(upgraded);
    let socket = match recovered {
        Ok(socket) => socket,
        Err(e) => {
            log::error!("client {remote}: cannot take over its socket after upgrade: {e}");
            abandon(ctx, &session, &client);
            return; // no descriptor is left: the connection closes
        }
    };
    let stall = ctx.registry.config().stall_timeout;
    let configured = socket
        .set_nodelay(true)
        .and_then(|()| socket2::SockRef::from(&socket).set_send_buffer_size(SEND_BUFFER))
        .and_then(|()| socket.set_read_timeout(None));
    let reader_socket = configured.and_then(|()| socket.try_clone());
    let reader_socket = match reader_socket {
        Ok(s) => s,
        Err(e) => {
            log::error!("client {remote}: socket setup failed: {e}");
            abandon(ctx, &session, &client);
            return;
        }
    };

    let metadata = metadata_frame(ctx, &session, client.format, stream_url);
    let (replies_tx, replies_rx) = crossbeam_channel::bounded(MAX_PENDING_REPLIES);
    let reader_done = Arc::new(AtomicBool::new(false));
    let writer = Writer::new(
        socket,
        consumer,
        replies_rx,
        Arc::clone(&client),
        Arc::clone(&session),
        Arc::clone(&reader_done),
        metadata,
        stall,
    );
    let exit_ctx = Arc::clone(ctx);
    let exit_session = Arc::clone(&session);
    let exit_client = Arc::clone(&client);
    // Runs on the pool thread when the connection is over, however it ends: the client is
    // detached and its place released, so no ghost client counts against the limits.
    let on_exit = Box::new(move |exit: WriterExit| {
        log::debug!(
            "client {} ({}) ended: {exit:?}",
            exit_client.id,
            exit_client.remote
        );
        exit_session.detach(exit_client.id);
        exit_ctx.registry.untrack_writer(exit_client.id);
        exit_ctx.reaper.remove_websocket(exit_client.remote);
        drop(ticket);
    });
    let waker = ctx.writers.add(writer, on_exit);
    ctx.registry
        .track_writer(Arc::clone(&client), waker.clone());
    if ctx.registry.is_shutting_down() {
        client.request_close(CloseReason::ServerShutdown);
        waker.wake();
    }
    let subscriber = Subscriber::new(producer, Arc::clone(&client), waker.clone());
    if session.send(Command::Subscribe(subscriber)).is_err() {
        client.request_close(CloseReason::TryAgainLater);
        waker.wake();
    }
    let reader_client = Arc::clone(&client);
    let reader_waker = waker.clone();
    let reader_table = Arc::clone(ctx.registry.table());
    let spawned = std::thread::Builder::new()
        .name(format!("ws-r-{}", client.id))
        .stack_size(CLIENT_STACK)
        .spawn(move || {
            reader::run(
                reader_socket,
                replies_tx,
                reader_waker,
                reader_client,
                reader_table,
                reader_done,
            )
        });
    if let Err(e) = spawned {
        log::error!("client {remote}: cannot spawn reader thread: {e}");
        client.request_close(CloseReason::TryAgainLater);
        waker.wake();
    }
    log::info!(
        "client {} ({remote}) joined session {} ({})",
        client.id,
        session.code(),
        client.format.name()
    );
}

fn metadata_frame(ctx: &Context, session: &Session, format: WireFormat, url: String) -> Frame {
    let session_ref = SessionRef {
        code: session.code().to_string(),
        url,
    };
    let mut frame = Frame::with_capacity(512);
    if let Err(e) = frame.build(format.opcode(), |buf| {
        encode_metadata(format, &ctx.metadata, &session_ref, buf)
    }) {
        log::error!("metadata could not be encoded: {e}");
    }
    frame
}

/// Undoes the registration of a client whose connection could not be set up.
fn abandon(ctx: &Context, session: &Session, client: &ClientShared) {
    session.detach(client.id);
    ctx.reaper.remove_websocket(client.remote);
}
