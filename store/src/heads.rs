//! What subscribers wake on: the head of the log and, per partition, the position of its
//! last event. A subscription to one partition (a projection lane) then wakes only when its
//! partition moved, not on every append anywhere.
//!
//! Both come from this process's appends and from NOTIFY (other processes). The payload of
//! a notification is `"<head>"` or `"<head> <partition>:<position>,..."`; a payload without
//! partitions (or one that does not parse) moves every partition to the head, which only
//! costs a spurious wake-up.

use crate::model::Position;
use std::sync::Arc;
use tokio::sync::watch;

/// The sending side, shared by the append writer and the NOTIFY listener.
#[derive(Clone)]
pub(crate) struct Heads {
    head: watch::Sender<Position>,
    partitions: watch::Sender<Arc<[Position]>>,
}

impl Heads {
    pub fn new(head: Position, partitions: u16) -> Heads {
        let (head_tx, _) = watch::channel(head);
        let (partitions_tx, _) =
            watch::channel(Arc::from(vec![head; usize::from(partitions.max(1))]));
        Heads {
            head: head_tx,
            partitions: partitions_tx,
        }
    }

    pub fn head(&self) -> watch::Receiver<Position> {
        self.head.subscribe()
    }

    pub fn partitions(&self) -> watch::Receiver<Arc<[Position]>> {
        self.partitions.subscribe()
    }

    /// Records a commit: the new head and the last position written in each partition it
    /// touched (`None`: unknown, so every partition may have moved).
    pub fn advance(&self, head: Position, touched: Option<&[(i16, Position)]>) {
        self.partitions.send_if_modified(|current| {
            let mut next: Vec<Position> = current.to_vec();
            match touched {
                Some(touched) => {
                    for &(partition, position) in touched {
                        if let Some(slot) = next.get_mut(partition as usize) {
                            *slot = (*slot).max(position);
                        }
                    }
                }
                None => next.iter_mut().for_each(|slot| *slot = (*slot).max(head)),
            }
            let changed = next[..] != current[..];
            if changed {
                *current = Arc::from(next);
            }
            changed
        });
        self.head.send_if_modified(|current| {
            let advanced = head > *current;
            if advanced {
                *current = head;
            }
            advanced
        });
    }
}

/// The NOTIFY payload for a commit.
pub(crate) fn encode(head: Position, touched: &[(i16, Position)]) -> String {
    let mut payload = head.to_string();
    for (i, (partition, position)) in touched.iter().enumerate() {
        payload.push(if i == 0 { ' ' } else { ',' });
        payload.push_str(&format!("{partition}:{position}"));
    }
    payload
}

/// The last position written in each partition a commit touched.
pub(crate) type Touched = Vec<(i16, Position)>;

/// Parses a NOTIFY payload: the head, and the touched partitions when present and valid.
pub(crate) fn decode(payload: &str) -> Option<(Position, Option<Touched>)> {
    let (head, partitions) = match payload.split_once(' ') {
        Some((head, partitions)) => (head, Some(partitions)),
        None => (payload, None),
    };
    let head = head.parse().ok()?;
    let touched = partitions.and_then(|list| {
        list.split(',')
            .map(|pair| {
                let (partition, position) = pair.split_once(':')?;
                Some((partition.parse().ok()?, position.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()
    });
    Some((head, touched))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_degrade_to_head_only() {
        let payload = encode(42, &[(3, 40), (7, 42)]);
        assert_eq!(payload, "42 3:40,7:42");
        assert_eq!(decode(&payload), Some((42, Some(vec![(3, 40), (7, 42)]))));
        assert_eq!(decode("42"), Some((42, None)));
        assert_eq!(decode("42 garbage"), Some((42, None)));
        assert_eq!(decode("nope"), None);
    }

    #[test]
    fn only_touched_partitions_move() {
        let heads = Heads::new(10, 4);
        let mut partitions = heads.partitions();
        heads.advance(12, Some(&[(1, 12)]));
        assert_eq!(&partitions.borrow_and_update()[..], &[10, 12, 10, 10]);
        heads.advance(20, None);
        assert_eq!(&partitions.borrow_and_update()[..], &[20, 20, 20, 20]);
        assert_eq!(*heads.head().borrow(), 20);
    }
}
