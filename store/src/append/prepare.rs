//! Turns an [`AppendRequest`] into a [`PreparedAppend`]: validated, hashed, ids fixed.
//! All CPU work of an append happens here, in the caller's task, off the writer's path.

use crate::config::Limits;
use crate::error::Result;
use crate::hashing::{content_hash, derived_event_id, partition_of};
use crate::model::AppendRequest;
use crate::validate;
use uuid::Uuid;

/// An append ready for the writer.
#[derive(Debug)]
pub(crate) struct PreparedAppend {
    pub request: AppendRequest,
    pub partition: i16,
    /// Per event: its id (client-given, derived or fresh) and content hash.
    pub event_ids: Vec<Uuid>,
    pub hashes: Vec<[u8; 32]>,
    /// Per event: the binary payload to store instead of its JSON (the payload codec's).
    pub binary: Vec<Option<Vec<u8>>>,
}

pub(crate) fn prepare(
    request: AppendRequest,
    limits: &Limits,
    partitions: u16,
) -> Result<PreparedAppend> {
    validate::append(&request, limits)?;
    let partition = partition_of(&request.stream_id, partitions);
    let first_version = request.expected.first_new_version();
    let mut event_ids = Vec::with_capacity(request.events.len());
    let mut hashes = Vec::with_capacity(request.events.len());
    for (index, event) in request.events.iter().enumerate() {
        let hash = content_hash(&request.stream_id, event);
        // The version this event gets if the expectation holds; `None` past i64::MAX,
        // where no stream can be (the append then fails its version check).
        let version = first_version.and_then(|first| first.checked_add(index as i64));
        let id = match (event.event_id, version) {
            (Some(id), _) => id,
            // A blind retry of an Exact/NoStream append derives the same ids and is
            // recognised as a duplicate instead of failing on the version check.
            (None, Some(version)) => derived_event_id(&request.stream_id, version, &hash),
            (None, None) => Uuid::now_v7(),
        };
        event_ids.push(id);
        hashes.push(hash);
    }
    let binary = vec![None; request.events.len()];
    Ok(PreparedAppend {
        request,
        partition,
        event_ids,
        hashes,
        binary,
    })
}
