//! [`JetStreamSink`]: the relay's destination on NATS JetStream. It makes sure the stream
//! exists (created with subjects `<prefix>.>` and a duplicate window when missing), and
//! publishes each batch pipelined: every publish is sent before any acknowledgement is
//! awaited, and the batch's acknowledgements are handed back to be awaited while the next
//! batch is sent.
//!
//! Each message: subject `<prefix>.<category>.<type>` (tokens escaped, see
//! [`crate::subject`]), body the event's payload as JSON, and headers
//!
//! | header                      | value                                                  |
//! |-----------------------------|--------------------------------------------------------|
//! | `Nats-Msg-Id`               | the event id: JetStream drops a re-publish within its duplicate window |
//! | `Nats-Expected-Last-Msg-Id` | the previous event's id (all but the first event after the checkpoint) |
//! | `Tidemark-Position`         | the event's position in the log                        |
//! | `Tidemark-Stream-Id`        | its stream                                             |
//! | `Tidemark-Stream-Version`   | its version in that stream                             |
//! | `Tidemark-Event-Type`       | its type                                               |
//! | `Tidemark-Schema-Version`   | the version of its payload's schema                    |
//! | `Tidemark-Recorded-At`      | when it was committed (RFC 3339)                       |
//! | `Tidemark-Metadata`         | its metadata as JSON, when it has any                  |
//!
//! Header values outside printable ASCII are `%XX`-escaped ([`crate::subject::header_value`]).
//!
//! Acknowledgements: only the last event of a batch is published as a request (with a
//! reply subject, answered by JetStream's publish acknowledgement); the others are plain
//! publishes, which JetStream stores (or refuses) without answering. That is enough because of
//! the chain below: JetStream stores an event only right after the one before it, so the
//! last event acknowledged (stored, or a duplicate of one stored) means every event before it
//! is stored, in order; an event lost or refused on the way makes every later one refused,
//! the last one's acknowledgement an error, and the batch fail. One acknowledgement per batch
//! instead of one per event spares the server and the relay most of their per-event work.
//!
//! Why `Nats-Expected-Last-Msg-Id`: publishes are pipelined on one connection, several
//! batches at once, and when the connection drops part-way some of them can be lost while
//! later ones, still buffered in the client, are sent after the reconnect. Without the check
//! those would be stored after a gap, and the retry would append the missing events after
//! them, out of order. With it — chained across batches: a batch's first event names the
//! previous batch's last — the server refuses every publish after a gap, in this batch and
//! in every later one in flight; the batch fails, the relay drops the later ones, and the
//! retry from the checkpoint fills the gap in order (the already stored events are
//! duplicates, and JetStream checks duplicates before the expected last id). The stream must
//! therefore be written by the relay alone.

use crate::sink::{Acknowledgements, Sink, SinkError};
use crate::subject;
use async_nats::header::{self, HeaderMap, HeaderName};
use async_nats::jetstream::context::{Publish, PublishErrorKind};
use async_nats::jetstream::{self, stream};
use async_nats::Subject;
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::Duration;
use tidemark_store::RecordedEvent;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// NATS server(s), e.g. `nats://127.0.0.1:4222` (comma-separated for a cluster).
    pub url: String,
    /// The JetStream stream the events go to; created if missing.
    pub stream: String,
    /// First token(s) of every subject: events go to `<prefix>.<category>.<type>`.
    pub subject_prefix: String,
    /// Duplicate window of a stream the relay creates: a re-publish within it is dropped.
    /// A crash is recovered without duplicates when the relay restarts within it.
    pub duplicate_window: Duration,
    /// Replicas of a stream the relay creates (1, or 3 or 5 in a cluster).
    pub replicas: usize,
    /// How long a publish may wait for its acknowledgement before the batch is retried.
    pub ack_timeout: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "TIDEMARK".into(),
            subject_prefix: "tidemark".into(),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            ack_timeout: Duration::from_secs(10),
        }
    }
}

impl JetStreamConfig {
    /// The subjects of the stream: everything under the prefix.
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    fn check(&self) -> Result<(), SinkError> {
        subject::check_prefix(&self.subject_prefix).map_err(SinkError::Config)?;
        let name_ok = !self.stream.is_empty()
            && self.stream.chars().all(|c| {
                !c.is_whitespace() && !c.is_control() && !matches!(c, '.' | '*' | '>' | '/' | '\\')
            });
        if !name_ok {
            return Err(SinkError::Config(format!(
                "the stream name '{}' must be non-empty, without spaces, '.', '*', '>', '/' or '\\'",
                self.stream
            )));
        }
        Ok(())
    }
}

/// Publishes to one JetStream stream.
pub struct JetStreamSink {
    config: JetStreamConfig,
    client: async_nats::Client,
    context: jetstream::Context,
}

impl JetStreamSink {
    /// Connects and makes sure the stream exists and takes the relay's subjects.
    pub async fn connect(config: JetStreamConfig) -> Result<JetStreamSink, SinkError> {
        config.check()?;
        let client = async_nats::ConnectOptions::new()
            .name("tidemark-relay")
            .connection_timeout(Duration::from_secs(5))
            .connect(config.url.as_str())
            .await
            .map_err(|error| {
                SinkError::unavailable(format!(
                    "cannot connect to NATS at {} ({error}); is nats-server running with JetStream (-js)?",
                    config.url
                ))
            })?;
        let mut context = jetstream::new(client.clone());
        context.set_timeout(config.ack_timeout);
        let sink = JetStreamSink {
            config,
            client,
            context,
        };
        sink.ensure_stream().await?;
        Ok(sink)
    }

    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// The NATS client (tests read the stream back with it).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Creates the stream when missing; refuses one whose subjects do not take the relay's.
    async fn ensure_stream(&self) -> Result<(), SinkError> {
        let wanted = self.config.stream_subjects();
        let mut stream = self
            .context
            .get_or_create_stream(stream::Config {
                name: self.config.stream.clone(),
                subjects: vec![wanted.clone()],
                duplicate_window: self.config.duplicate_window,
                num_replicas: self.config.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|error| {
                SinkError::unavailable(format!(
                    "cannot find or create the JetStream stream '{}' ({error}); is JetStream enabled on the server (-js)?",
                    self.config.stream
                ))
            })?;
        let info = stream.info().await.map_err(|error| {
            SinkError::unavailable(format!(
                "cannot read the JetStream stream '{}' ({error})",
                self.config.stream
            ))
        })?;
        if !info.config.subjects.contains(&wanted) {
            return Err(SinkError::Config(format!(
                "the JetStream stream '{}' exists with subjects {:?}, which are not '{wanted}'; use another --stream, or --subject-prefix to match it",
                self.config.stream, info.config.subjects
            )));
        }
        if info.config.duplicate_window < self.config.duplicate_window {
            tracing::warn!(
                stream = %self.config.stream,
                window = ?info.config.duplicate_window,
                "the existing stream's duplicate window is shorter than configured; a relay restarted after it may publish duplicates"
            );
        }
        tracing::info!(
            stream = %self.config.stream,
            subjects = %wanted,
            messages = info.state.messages,
            duplicate_window = ?info.config.duplicate_window,
            "relaying to JetStream"
        );
        Ok(())
    }

    /// The message of `event`: its subject (from `subjects`, computed once per category and
    /// type), headers and body, and the bytes it takes against the server's `max_payload`.
    /// `id` is the event id's text; `previous_id` the previous event's, sent as the expected
    /// last message id.
    fn message(
        &self,
        event: &RecordedEvent,
        id: &str,
        previous_id: Option<&str>,
        subjects: &mut Subjects,
    ) -> Message {
        let category = event.category();
        let cached = subjects
            .0
            .get(event.event_type.as_str())
            .and_then(|by_category| by_category.get(category));
        let subject = match cached {
            Some(subject) => subject.clone(),
            None => {
                let subject = Subject::from(subject::subject(
                    &self.config.subject_prefix,
                    category,
                    &event.event_type,
                ));
                subjects
                    .0
                    .entry(event.event_type.clone())
                    .or_default()
                    .insert(category.to_string(), subject.clone());
                subject
            }
        };
        let mut headers = Headers::default();
        headers.insert(header::NATS_MESSAGE_ID, id.to_string());
        if let Some(previous_id) = previous_id {
            headers.insert(
                header::NATS_EXPECTED_LAST_MESSAGE_ID,
                previous_id.to_string(),
            );
        }
        headers.insert(POSITION, event.position.to_string());
        headers.insert(STREAM_ID, subject::header_value(&event.stream_id));
        headers.insert(STREAM_VERSION, event.stream_version.to_string());
        headers.insert(EVENT_TYPE, subject::header_value(&event.event_type));
        headers.insert(SCHEMA_VERSION, event.schema_version.to_string());
        headers.insert(RECORDED_AT, event.recorded_at.to_rfc3339());
        let has_metadata = match &event.metadata {
            serde_json::Value::Null => false,
            serde_json::Value::Object(map) => !map.is_empty(),
            _ => true,
        };
        if has_metadata {
            let metadata = serde_json::to_string(&event.metadata).unwrap_or_default();
            headers.insert(METADATA, subject::header_value(&metadata));
        }
        // `to_vec` writes straight into the buffer (`to_string` on a `Value` goes through
        // `fmt::Display`, a `write_str` per token). A `Value` always serialises.
        let payload = bytes::Bytes::from(serde_json::to_vec(&event.payload).unwrap_or_default());
        Message {
            size: payload.len() + headers.bytes + 12,
            subject,
            headers: headers.map,
            payload,
        }
    }
}

const POSITION: HeaderName = HeaderName::from_static("Tidemark-Position");
const STREAM_ID: HeaderName = HeaderName::from_static("Tidemark-Stream-Id");
const STREAM_VERSION: HeaderName = HeaderName::from_static("Tidemark-Stream-Version");
const EVENT_TYPE: HeaderName = HeaderName::from_static("Tidemark-Event-Type");
const SCHEMA_VERSION: HeaderName = HeaderName::from_static("Tidemark-Schema-Version");
const RECORDED_AT: HeaderName = HeaderName::from_static("Tidemark-Recorded-At");
const METADATA: HeaderName = HeaderName::from_static("Tidemark-Metadata");

/// An event id as text (hyphenated, lower case), without `fmt`.
fn id_text(id: &uuid::Uuid) -> String {
    let mut buffer = uuid::Uuid::encode_buffer();
    id.hyphenated().encode_lower(&mut buffer).to_string()
}

/// Subjects by event type and category, computed once per batch.
#[derive(Default)]
struct Subjects(HashMap<String, HashMap<String, Subject>>);

/// A message's headers, and the bytes they take (name, `: `, value, CRLF each).
#[derive(Default)]
struct Headers {
    map: HeaderMap,
    bytes: usize,
}

impl Headers {
    fn insert(&mut self, name: HeaderName, value: String) {
        self.bytes += AsRef::<str>::as_ref(&name).len() + value.len() + 4;
        self.map.insert(name, value);
    }
}

/// One event as published.
struct Message {
    subject: Subject,
    headers: HeaderMap,
    payload: bytes::Bytes,
    /// Bytes it takes against the server's `max_payload` (body and headers, roughly).
    size: usize,
}

#[async_trait]
impl Sink for JetStreamSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn send_batch(
        &self,
        events: &[RecordedEvent],
        previous: Option<&RecordedEvent>,
    ) -> Result<Acknowledgements, SinkError> {
        let Some(last) = events.last() else {
            return Ok(Box::pin(async { Ok(()) }));
        };
        let max_payload = self.client.server_info().max_payload;
        let mut subjects = Subjects::default();
        let mut previous_id = previous.map(|e| id_text(&e.event_id));
        let mut ack = None;
        for event in events {
            let id = id_text(&event.event_id);
            let message = self.message(event, &id, previous_id.as_deref(), &mut subjects);
            if max_payload > 0 && message.size > max_payload {
                return Err(SinkError::Unpublishable {
                    position: event.position,
                    reason: format!(
                        "{} bytes with headers, more than the server's max_payload of {max_payload} bytes",
                        message.size
                    ),
                });
            }
            let failed = |error: &dyn std::fmt::Display| {
                SinkError::unavailable(format!(
                    "publishing the event at position {}: {error}",
                    event.position
                ))
            };
            // Only the batch's last event asks for an acknowledgement: the chain makes it
            // acknowledge every event before it (see the module's documentation).
            if std::ptr::eq(event, last) {
                let publish = Publish::build()
                    .payload(message.payload)
                    .headers(message.headers);
                ack = Some(
                    self.context
                        .send_publish(message.subject, publish)
                        .await
                        .map_err(|e| failed(&e))?,
                );
            } else {
                self.client
                    .publish_with_headers(message.subject, message.headers, message.payload)
                    .await
                    .map_err(|e| failed(&e))?;
            }
            previous_id = Some(id);
        }
        let stream = self.config.stream.clone();
        let (position, events) = (last.position, events.len());
        Ok(Box::pin(async move {
            let Some(ack) = ack else {
                return Err(SinkError::unavailable("no event was published"));
            };
            match ack.await {
                Ok(ack) if ack.stream != stream => Err(SinkError::Config(format!(
                    "the event at position {position} was stored in stream '{}', not '{stream}': another stream takes the same subjects",
                    ack.stream
                ))),
                Ok(ack) => {
                    if ack.duplicate {
                        metrics::counter!("tidemark_relay_duplicates_total").increment(1);
                    }
                    Ok(())
                }
                Err(error) => {
                    let why = match error.kind() {
                        PublishErrorKind::WrongLastMessageId => {
                            " (an event before it was lost on the way or refused by the stream, e.g. over its limits, so the ones after it were refused)"
                        }
                        _ => "",
                    };
                    Err(SinkError::unavailable(format!(
                        "the batch of {events} events ending at position {position} was not acknowledged: {error}{why}"
                    )))
                }
            }
        }))
    }
}
