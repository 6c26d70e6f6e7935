//! Parsed GraphQL documents, cached by their text: clients send the same few queries over
//! and over (an `appendEvents` mutation with variables, a paging query), and parsing one
//! costs more than many a resolver. A request whose text was parsed before gets a copy of
//! that document; one never seen is parsed once here and cached. Only documents that parse
//! are cached: a text that does not parse is left to the executor, which reports the error
//! as it always did (every other check — depth, directives, validation with the request's
//! variables — still runs on the copy, so a cached document behaves as a fresh parse).
//!
//! The cache is bounded in entries and in text bytes; when full it is emptied and refills
//! with what clients send next (a server has few distinct hot queries, so this is rare).

use async_graphql::parser::types::ExecutableDocument;
use async_graphql::Request;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most documents kept.
const MAX_ENTRIES: usize = 512;
/// Most query text kept, in bytes (the parsed documents are a small multiple of it).
const MAX_TEXT_BYTES: usize = 1 << 20;
/// Longer texts are parsed every time (a client generating large queries gets no reuse).
const MAX_CACHED_QUERY_BYTES: usize = 16 << 10;

/// Parsed documents by query text.
#[derive(Default)]
pub(crate) struct DocumentCache {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    documents: HashMap<Box<str>, Arc<ExecutableDocument>>,
    text_bytes: usize,
}

impl DocumentCache {
    /// `request` with its document parsed: a copy of the cached one, or parsed now and
    /// cached. Requests whose text does not parse (or is too long to cache) are returned
    /// as they came.
    pub(crate) fn prepare(&self, mut request: Request) -> Request {
        let query = request.query.as_str();
        if query.is_empty() || query.len() > MAX_CACHED_QUERY_BYTES {
            return request;
        }
        let cached = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .documents
            .get(query)
            .cloned();
        let document = match cached {
            Some(document) => document,
            None => {
                let Ok(parsed) = async_graphql::parser::parse_query(query) else {
                    return request;
                };
                let parsed = Arc::new(parsed);
                self.insert(query, parsed.clone());
                parsed
            }
        };
        request.set_parsed_query(ExecutableDocument::clone(&document));
        request
    }

    fn insert(&self, query: &str, document: Arc<ExecutableDocument>) {
        let mut entries = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if entries.documents.len() >= MAX_ENTRIES
            || entries.text_bytes + query.len() > MAX_TEXT_BYTES
        {
            entries.documents.clear();
            entries.text_bytes = 0;
        }
        if entries.documents.insert(query.into(), document).is_none() {
            entries.text_bytes += query.len();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .documents
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_parsed_once_and_its_copies_match_a_fresh_parse() {
        let cache = DocumentCache::default();
        let text = "mutation($s:String!){appendEvents(streamId:$s,events:[]){lastPosition}}";
        let mut first = cache.prepare(Request::new(text));
        assert_eq!(cache.len(), 1);
        let mut second = cache.prepare(Request::new(text));
        assert_eq!(cache.len(), 1);
        let fresh = format!("{:?}", async_graphql::parser::parse_query(text).unwrap());
        assert_eq!(format!("{:?}", first.parsed_query().unwrap()), fresh);
        assert_eq!(format!("{:?}", second.parsed_query().unwrap()), fresh);
    }

    #[test]
    fn texts_that_do_not_parse_are_left_to_the_executor_and_not_cached() {
        let cache = DocumentCache::default();
        let mut request = cache.prepare(Request::new("mutation { appendEvents("));
        assert_eq!(cache.len(), 0);
        // Not parsed yet: the executor parses it and reports the error itself.
        assert!(request.parsed_query().is_err());
        cache.prepare(Request::new(""));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_full_cache_starts_over_and_stays_bounded() {
        let cache = DocumentCache::default();
        for i in 0..MAX_ENTRIES + 10 {
            cache.prepare(Request::new(format!("{{ f{i} }}")));
            assert!(cache.len() <= MAX_ENTRIES);
        }
        assert_eq!(cache.len(), 10);
        let long = format!("{{ {} }}", "a ".repeat(MAX_CACHED_QUERY_BYTES));
        cache.prepare(Request::new(long));
        assert_eq!(cache.len(), 10);
    }
}
