//! Commands from network threads to a session's timing thread.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use super::{NoiseState, Subscriber, Tap};

/// Bin ranges a session plays in order, looping. Built once by the packet table and shared.
pub type Playlist = Arc<[Range<u32>]>;

/// A playback filter: which bins a session plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Only the bins of one trial, looping.
    Trial(u32),
    /// Only the bins of trials reaching for one target, looping.
    Target(u32),
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Trial(id) => write!(f, "trial_id={id}"),
            Filter::Target(id) => write!(f, "target_id={id}"),
        }
    }
}

/// Something a timing thread applies at the start of its next tick.
pub enum Command {
    /// Start sending packets to a new client.
    Subscribe(Subscriber),
    /// Stop generating packets; the position stays.
    Pause,
    /// Continue from the current position; the schedule restarts from now (no burst).
    Resume,
    /// Play `bin` next (already checked against the playlist by the sender).
    Seek(u32),
    /// Pause and rewind to the start of the playlist.
    Stop,
    /// Play these bin ranges from their start, looping; `None` means the whole recording.
    SetPlaylist(Playlist),
    /// Impair spike counts from the next tick on (`None`: clean).
    SetNoise(Option<Box<NoiseState>>),
    /// Feed every tick to this tap from the next one on, replacing any other (`None`: none).
    /// A tap starts the clock as a first subscriber does.
    SetTap(Option<Box<Tap>>),
    /// End the timing thread.
    Shutdown,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Subscribe(s) => write!(f, "Subscribe(client {})", s.client.id),
            Command::Pause => f.write_str("Pause"),
            Command::Resume => f.write_str("Resume"),
            Command::Seek(bin) => write!(f, "Seek({bin})"),
            Command::Stop => f.write_str("Stop"),
            Command::SetPlaylist(p) => write!(f, "SetPlaylist({} ranges)", p.len()),
            Command::SetNoise(n) => write!(f, "SetNoise({:?})", n.as_ref().map(|n| n.config())),
            Command::SetTap(t) => write!(f, "SetTap({})", if t.is_some() { "tap" } else { "none" }),
            Command::Shutdown => f.write_str("Shutdown"),
        }
    }
}
