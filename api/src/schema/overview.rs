//! Queries for an operator's overview (the dashboard at `/ui` asks them in one request):
//! who the caller is and what its key may do, the log's head and append rate, and browsing
//! the log's categories and streams.

use super::scalars::Int64;
use crate::auth::{Principal, Role, RoleGuard};
use crate::Tidemark;
use async_graphql::{Context, Enum, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

/// How far back the append rate looks.
const APPEND_RATE_WINDOW_SECONDS: f64 = 10.0;

/// Overview queries every Tidemark server has.
#[derive(Debug, Clone, Copy, Default)]
pub struct OverviewQuery;

/// What a key may do; each role includes the ones before it.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "Role", remote = "crate::auth::Role")]
pub enum ApiRole {
    /// Queries and subscriptions.
    Read,
    /// Also appends and application commands.
    Append,
    /// Also rebuilds, replays and other operations on projections.
    Admin,
}

/// The caller as the server sees it.
#[derive(SimpleObject, Debug, Clone)]
pub struct Whoami {
    /// What the caller may do; null without a valid key.
    pub role: Option<ApiRole>,
    /// The key's id (a stored key's id; `config:<hash prefix>` for a configured key).
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    /// The server runs with `--insecure-dev`: no key is needed and everything is allowed.
    pub insecure_dev: bool,
    /// Why the key sent was refused (unknown, revoked, expired, malformed); null when none
    /// was sent or it was accepted.
    pub refused: Option<String>,
}

impl From<&Principal> for Whoami {
    fn from(principal: &Principal) -> Self {
        let nobody = Whoami {
            role: None,
            key_id: None,
            key_name: None,
            insecure_dev: false,
            refused: None,
        };
        match principal {
            Principal::Key { id, name, role } => Whoami {
                role: Some((*role).into()),
                key_id: Some(id.clone()),
                key_name: Some(name.clone()),
                ..nobody
            },
            Principal::Open => Whoami {
                role: Some(Role::Admin.into()),
                insecure_dev: true,
                ..nobody
            },
            Principal::Anonymous => nobody,
            Principal::Invalid(reason) => Whoami {
                refused: Some(reason.clone()),
                ..nobody
            },
        }
    }
}

/// The log at a glance.
#[derive(SimpleObject, Debug, Clone)]
pub struct LogStats {
    /// Position of the last event (0 when empty).
    pub head: Int64,
    /// Partitions the log is split into (fixed when the store was created).
    pub partitions: i32,
    /// Events appended per second over the last `rateWindowSeconds`, by the database's
    /// clock (the same figure on every node).
    pub append_rate: f64,
    pub rate_window_seconds: f64,
}

/// A page of category names.
#[derive(SimpleObject, Debug, Clone)]
pub struct CategoryPage {
    pub categories: Vec<String>,
    /// The last category of this page: pass it as `after` for the next. Null when empty.
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
}

/// A stream, without its events.
#[derive(SimpleObject, Debug, Clone)]
pub struct StreamSummary {
    pub stream_id: String,
    /// The stream's category: its id up to the first `-`.
    pub category: String,
    /// Version of its last event.
    pub version: Int64,
    /// Events in the stream.
    pub events: Int64,
    pub partition: i32,
    /// When its last append committed.
    pub updated_at: DateTime<Utc>,
}

/// A page of streams.
#[derive(SimpleObject, Debug, Clone)]
pub struct StreamListPage {
    pub streams: Vec<StreamSummary>,
    /// The last stream id of this page: pass it as `after` for the next. Null when empty.
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
}

#[Object]
impl OverviewQuery {
    /// The caller: its key's role and name. Needs no key (it says when none, or a refused
    /// one, was sent), so a client can ask before offering what a role allows.
    async fn whoami(&self, ctx: &Context<'_>) -> Whoami {
        Whoami::from(crate::http::principal(ctx))
    }

    /// The log's head, partitions and append rate.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn log_stats(&self, ctx: &Context<'_>) -> Result<LogStats> {
        let store = Tidemark::from_ctx(ctx)?.store();
        let head = store.head_position().await?;
        let rate = store.append_rate(APPEND_RATE_WINDOW_SECONDS).await?;
        Ok(LogStats {
            head: head.into(),
            partitions: i32::from(store.partitions()),
            append_rate: rate.events_per_second,
            rate_window_seconds: rate.window_seconds,
        })
    }

    /// The stream categories of the log (stream ids up to the first `-`), in order. Page
    /// with `after: endCursor`.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn categories(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "A previous page's endCursor: continue after that category")]
        after: Option<String>,
        #[graphql(default = 100)] first: i32,
    ) -> Result<CategoryPage> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let first = tidemark.page_size(first)?;
        let mut categories = tidemark
            .store()
            .categories(after.as_deref(), first + 1)
            .await?;
        let has_next_page = categories.len() > first;
        categories.truncate(first);
        Ok(CategoryPage {
            end_cursor: categories.last().cloned(),
            categories,
            has_next_page,
        })
    }

    /// Streams (of `category` when given), by stream id, with their versions. Page with
    /// `after: endCursor`. Read a stream's events with `stream(id:)`.
    #[graphql(guard = "RoleGuard(Role::Read)")]
    async fn streams(
        &self,
        ctx: &Context<'_>,
        category: Option<String>,
        #[graphql(desc = "A previous page's endCursor: continue after that stream id")]
        after: Option<String>,
        #[graphql(default = 100)] first: i32,
    ) -> Result<StreamListPage> {
        let tidemark = Tidemark::from_ctx(ctx)?;
        let first = tidemark.page_size(first)?;
        let store = tidemark.store();
        let mut streams = store
            .streams(category.as_deref(), after.as_deref(), first + 1)
            .await?;
        let has_next_page = streams.len() > first;
        streams.truncate(first);
        let streams: Vec<StreamSummary> = streams
            .into_iter()
            .map(|s| StreamSummary {
                category: tidemark_store::model::category_of(&s.stream_id).to_string(),
                partition: i32::from(store.partition_of(&s.stream_id)),
                version: s.version.into(),
                events: (s.version + 1).into(),
                updated_at: s.updated_at,
                stream_id: s.stream_id,
            })
            .collect();
        Ok(StreamListPage {
            end_cursor: streams.last().map(|s| s.stream_id.clone()),
            streams,
            has_next_page,
        })
    }
}
