//! Correlation and causation ids of a request. A client may send `X-Correlation-Id` (the id
//! shared by everything one user action or workflow causes) and `X-Causation-Id` (what
//! caused this request); without a correlation id the server makes a fresh one. The id is
//! echoed in the response's `X-Correlation-Id`, recorded on the request's tracing span, and
//! written into the metadata of the events the request's commands write
//! ([`crate::Tidemark::command_options`]).

use crate::error::ApiError;
use axum::http::HeaderMap;
use uuid::Uuid;

/// The request header (and response header) of the correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// The request header of the causation id.
pub const CAUSATION_HEADER: &str = "x-causation-id";

/// Longest id accepted, in bytes.
const MAX_ID_BYTES: usize = 128;

/// The ids of one request, in the GraphQL request's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIds {
    pub correlation_id: String,
    /// Whether the client sent the correlation id (else the server made it).
    pub from_client: bool,
    pub causation_id: Option<String>,
}

impl RequestIds {
    /// Fresh ids for a request that brought none.
    pub fn fresh() -> RequestIds {
        RequestIds {
            correlation_id: Uuid::now_v7().to_string(),
            from_client: false,
            causation_id: None,
        }
    }

    /// The ids the headers carry, a fresh correlation id when they carry none, or why a
    /// header cannot be used.
    pub fn from_headers(headers: &HeaderMap) -> Result<RequestIds, ApiError> {
        let correlation_id = header(headers, CORRELATION_HEADER)?;
        let causation_id = header(headers, CAUSATION_HEADER)?;
        Ok(RequestIds {
            from_client: correlation_id.is_some(),
            correlation_id: correlation_id.unwrap_or_else(|| Uuid::now_v7().to_string()),
            causation_id,
        })
    }
}

fn header(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value.to_str().ok().map(str::trim).unwrap_or_default();
    let printable = text.bytes().all(|b| b.is_ascii_graphic());
    if text.is_empty() || text.len() > MAX_ID_BYTES || !printable {
        return Err(ApiError::bad_input(
            name,
            format!(
                "the {name} header must be 1 to {MAX_ID_BYTES} printable ASCII characters \
                 without spaces (a UUID, say)"
            ),
        ));
    }
    Ok(Some(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn ids_come_from_the_headers_or_are_made_fresh() {
        let mut headers = HeaderMap::new();
        let fresh = RequestIds::from_headers(&headers).unwrap();
        assert!(Uuid::parse_str(&fresh.correlation_id).is_ok());
        assert_eq!(fresh.causation_id, None);
        headers.insert(CORRELATION_HEADER, HeaderValue::from_static("order-42"));
        headers.insert(CAUSATION_HEADER, HeaderValue::from_static("evt-1"));
        assert_eq!(
            RequestIds::from_headers(&headers).unwrap(),
            RequestIds {
                correlation_id: "order-42".into(),
                from_client: true,
                causation_id: Some("evt-1".into())
            }
        );
    }

    #[test]
    fn unusable_ids_are_refused_with_the_rule() {
        for bad in ["", "has space", &"x".repeat(129)] {
            let mut headers = HeaderMap::new();
            headers.insert(CORRELATION_HEADER, HeaderValue::from_str(bad).unwrap());
            let error = RequestIds::from_headers(&headers).unwrap_err();
            assert!(
                error.message.contains("printable ASCII"),
                "{bad:?}: {error:?}"
            );
        }
    }
}
