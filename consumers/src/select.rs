//! Which outstanding messages a fetch may hand to a consumer, per strategy: pure rules over
//! the rows the fetch read under its group's lock (no database here, so each rule is
//! tested on its own).

use crate::model::Strategy;
use std::collections::HashMap;
use tidemark_store::Position;

/// Where an outstanding message stands, as a fetch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RowState {
    /// Delivered and not yet settled; held by this consumer (`true`) or another.
    InFlight { mine: bool },
    /// Waiting, and may be handed out now.
    Ready,
    /// Waiting for its retry backoff to pass.
    Backoff,
}

/// An outstanding message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub position: Position,
    pub stream_id: String,
    pub state: RowState,
}

/// The positions to hand out, lowest first, at most `capacity`. `rows` are outstanding
/// messages in position order: for [`Strategy::PinnedByStream`] every outstanding message
/// of each stream that has a ready one (so a stream's order can be checked), otherwise at
/// least the ready ones.
///
/// - Round-robin and single-active (the caller has checked the lease): the ready ones, in
///   log order.
/// - Pinned by stream: a stream with a message in flight to another consumer gives nothing;
///   otherwise its ready messages up to the first one that is neither ready nor in flight to
///   this consumer (one in backoff), so a stream's messages go out in order, to one consumer.
pub(crate) fn select(strategy: Strategy, rows: &[Row], capacity: usize) -> Vec<Position> {
    if capacity == 0 {
        return Vec::new();
    }
    let eligible: Vec<Position> = match strategy {
        Strategy::RoundRobin | Strategy::SingleActive => rows
            .iter()
            .filter(|r| r.state == RowState::Ready)
            .map(|r| r.position)
            .collect(),
        Strategy::PinnedByStream => pinned(rows),
    };
    // Within a stream the eligible positions are a prefix in position order, so taking the
    // lowest positions overall keeps each stream's share a prefix too.
    let mut eligible = eligible;
    eligible.sort_unstable();
    eligible.truncate(capacity);
    eligible
}

fn pinned(rows: &[Row]) -> Vec<Position> {
    let mut streams: HashMap<&str, Vec<&Row>> = HashMap::new();
    for row in rows {
        streams.entry(&row.stream_id).or_default().push(row);
    }
    let mut eligible = Vec::new();
    for (_, mut stream) in streams {
        if stream
            .iter()
            .any(|r| r.state == RowState::InFlight { mine: false })
        {
            continue;
        }
        stream.sort_by_key(|r| r.position);
        for row in stream {
            match row.state {
                RowState::InFlight { mine: true } => continue,
                RowState::Ready => eligible.push(row.position),
                RowState::Backoff | RowState::InFlight { mine: false } => break,
            }
        }
    }
    eligible
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(position: Position, stream: &str, state: RowState) -> Row {
        Row {
            position,
            stream_id: stream.to_owned(),
            state,
        }
    }

    const MINE: RowState = RowState::InFlight { mine: true };
    const OTHERS: RowState = RowState::InFlight { mine: false };

    #[test]
    fn round_robin_hands_out_ready_messages_in_log_order_up_to_capacity() {
        let rows = [
            row(1, "a-1", OTHERS),
            row(2, "a-1", RowState::Ready),
            row(3, "a-2", RowState::Backoff),
            row(4, "a-2", RowState::Ready),
            row(5, "a-3", RowState::Ready),
        ];
        assert_eq!(select(Strategy::RoundRobin, &rows, 2), [2, 4]);
        assert_eq!(
            select(Strategy::RoundRobin, &rows, 0),
            Vec::<Position>::new()
        );
    }

    #[test]
    fn pinned_gives_nothing_of_a_stream_held_by_another_consumer() {
        let rows = [row(1, "a-1", OTHERS), row(2, "a-1", RowState::Ready)];
        assert!(select(Strategy::PinnedByStream, &rows, 10).is_empty());
    }

    #[test]
    fn pinned_continues_a_stream_this_consumer_holds_and_stops_at_a_backoff() {
        let rows = [
            row(1, "a-1", MINE),
            row(2, "a-1", RowState::Ready),
            row(3, "a-1", RowState::Backoff),
            row(4, "a-1", RowState::Ready),
            row(5, "a-2", RowState::Ready),
            row(6, "a-2", RowState::Ready),
        ];
        assert_eq!(select(Strategy::PinnedByStream, &rows, 10), [2, 5, 6]);
        // Capacity keeps a prefix of each stream.
        assert_eq!(select(Strategy::PinnedByStream, &rows, 2), [2, 5]);
    }
}
