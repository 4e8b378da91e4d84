//! Where a session is in its playlist: the bins it plays, in order, looping.

use std::ops::Range;
use std::sync::Arc;

/// Why a seek was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeekError {
    /// The bin is not part of what the session plays (outside the recording or the filter).
    #[error("packet {bin} is not in this session's playlist")]
    NotInPlaylist {
        /// The bin asked for.
        bin: u32,
    },
}

/// A cursor over a playlist of non-empty bin ranges.
///
/// Invariant: `range < playlist.len()` and `next` lies in `playlist[range]`.
#[derive(Debug, Clone)]
pub struct Playback {
    playlist: Arc<[Range<u32>]>,
    range: usize,
    next: u32,
}

impl Playback {
    /// Starts at the first bin of `playlist`. Empty ranges are skipped; the playlist must hold
    /// at least one bin (the packet table only builds such playlists).
    pub fn new(playlist: Arc<[Range<u32>]>) -> Self {
        let range = playlist
            .iter()
            .position(|r| !r.is_empty())
            .expect("playlists hold at least one bin");
        let next = playlist[range].start;
        Self {
            playlist,
            range,
            next,
        }
    }

    /// The bin the next tick plays.
    pub fn position(&self) -> u32 {
        self.next
    }

    /// Returns the bin to play now and moves on, wrapping to the start after the last bin.
    #[inline]
    pub fn advance(&mut self) -> u32 {
        let bin = self.next;
        self.next += 1;
        if self.next >= self.playlist[self.range].end {
            loop {
                self.range = (self.range + 1) % self.playlist.len();
                if !self.playlist[self.range].is_empty() {
                    break;
                }
            }
            self.next = self.playlist[self.range].start;
        }
        bin
    }

    /// Plays `bin` next, if the playlist contains it.
    pub fn seek(&mut self, bin: u32) -> Result<(), SeekError> {
        let range = Self::find(&self.playlist, bin).ok_or(SeekError::NotInPlaylist { bin })?;
        self.range = range;
        self.next = bin;
        Ok(())
    }

    /// Whether `playlist` contains `bin`.
    pub fn contains(playlist: &[Range<u32>], bin: u32) -> bool {
        Self::find(playlist, bin).is_some()
    }

    /// Back to the first bin.
    pub fn rewind(&mut self) {
        *self = Self::new(self.playlist.clone());
    }

    /// Replaces the playlist and starts at its first bin.
    pub fn replace(&mut self, playlist: Arc<[Range<u32>]>) {
        *self = Self::new(playlist);
    }

    fn find(playlist: &[Range<u32>], bin: u32) -> Option<usize> {
        playlist.iter().position(|r| r.contains(&bin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_through_ranges_and_loops() {
        let mut p = Playback::new(Arc::from(vec![2..4, 7..8]));
        let played: Vec<u32> = (0..7).map(|_| p.advance()).collect();
        assert_eq!(played, vec![2, 3, 7, 2, 3, 7, 2]);
    }

    #[test]
    fn seek_stays_inside_the_playlist() {
        let mut p = Playback::new(Arc::from(vec![2..4, 7..9]));
        assert_eq!(p.seek(5), Err(SeekError::NotInPlaylist { bin: 5 }));
        p.seek(8).unwrap();
        assert_eq!(p.advance(), 8);
        assert_eq!(p.position(), 2);
        p.rewind();
        assert_eq!(p.position(), 2);
    }
}
