//! The GraphQL schema: the built-in queries, mutations and subscriptions (the schema
//! registry's in [`schemas`], the operator's overview — `whoami`, `logStats`, `categories`,
//! `streams` — in [`overview`], consumer groups' in [`groups`]) merged with the application's, and [`ApiSchema`], the schema behind one non-generic handle that gives
//! every error in every response a stable code (see [`crate::error::normalize`]).

pub(crate) mod app_fields;
pub mod directive;
pub(crate) mod documents;
pub mod groups;
pub mod mutation;
pub mod overview;
pub mod query;
pub mod scalars;
pub mod schemas;
pub mod subscription;
pub mod types;

use crate::config::ApiLimits;
use crate::error::{normalize, ApiError, ErrorCode};
use crate::Tidemark;
use async_graphql::{
    Data, Executor, MergedObject, MergedSubscription, ObjectType, Request, Response, Schema,
    SubscriptionType,
};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

pub use groups::{GroupMutation, GroupQuery, GroupSubscription};
pub use mutation::BuiltinMutation;
pub use overview::OverviewQuery;
pub use query::BuiltinQuery;
pub use schemas::{SchemaMutation, SchemaQuery};
pub use subscription::BuiltinSubscription;

/// The root query: built-in fields and the application's.
#[derive(MergedObject, Default, Clone)]
#[graphql(name = "Query")]
pub struct Query<Q: ObjectType + 'static>(
    pub BuiltinQuery,
    pub OverviewQuery,
    pub SchemaQuery,
    pub GroupQuery,
    pub Q,
);

/// The root mutation: built-in fields and the application's.
#[derive(MergedObject, Default, Clone)]
#[graphql(name = "Mutation")]
pub struct Mutation<M: ObjectType + 'static>(
    pub BuiltinMutation,
    pub SchemaMutation,
    pub GroupMutation,
    pub M,
);

/// The root subscription: built-in fields and the application's.
#[derive(MergedSubscription, Default, Clone)]
#[graphql(name = "Subscription")]
pub struct Subscription<S: SubscriptionType + 'static>(
    pub BuiltinSubscription,
    pub GroupSubscription,
    pub S,
);

/// What a schema is built with.
#[derive(Clone, Default)]
pub(crate) struct SchemaSettings {
    pub limits: ApiLimits,
    /// The runtime handles; `None` for a schema that is only printed (SDL).
    pub tidemark: Option<Tidemark>,
    /// Root fields of the application an anonymous caller may use.
    pub public_fields: Vec<String>,
}

/// Why an application's GraphQL types cannot be merged with the built-in schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaConflict {
    /// The application named one of its root objects like a merged root.
    #[error(
        "the application's GraphQL {root} object is named `{name}`, which is the name of the \
         merged root type Tidemark builds around it; give it another name, e.g. \
         #[graphql(name = \"App{name}\")] on the struct (clients still query the fields \
         under `{root}`)"
    )]
    RootName { root: &'static str, name: String },
    /// Two different types have one GraphQL name (the application's and a built-in one,
    /// or two of the application's).
    #[error(
        "the application's GraphQL types clash with the schema they are merged into: {0}; \
         give the application's type another name with #[graphql(name = \"...\")]"
    )]
    NameClash(String),
}

/// The names of the merged roots: an application's root object may not take them.
const ROOT_NAMES: [&str; 3] = ["Query", "Mutation", "Subscription"];

/// Builds the merged schema for an application's GraphQL objects, or says which of the
/// application's names clash (checked before anything is started with it).
pub(crate) fn build<Q, M, S>(
    query: Q,
    mutation: M,
    subscription: S,
    settings: SchemaSettings,
) -> Result<ApiSchema, SchemaConflict>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    for (root, name) in [
        ("query", Q::type_name()),
        ("mutation", M::type_name()),
        ("subscription", S::type_name()),
    ] {
        if ROOT_NAMES.contains(&name.as_ref()) {
            return Err(SchemaConflict::RootName {
                root,
                name: name.into_owned(),
            });
        }
    }
    // async-graphql refuses a clash of type names by panicking while it registers types;
    // turn that into an error that says what to rename.
    std::panic::catch_unwind(AssertUnwindSafe(move || {
        build_unchecked(query, mutation, subscription, settings)
    }))
    .map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("two types have the same name");
        SchemaConflict::NameClash(message.to_string())
    })
}

fn build_unchecked<Q, M, S>(
    query: Q,
    mutation: M,
    subscription: S,
    settings: SchemaSettings,
) -> ApiSchema
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let mut builder = Schema::build(
        Query(BuiltinQuery, OverviewQuery, SchemaQuery, GroupQuery, query),
        Mutation(BuiltinMutation, SchemaMutation, GroupMutation, mutation),
        Subscription(BuiltinSubscription, GroupSubscription, subscription),
    )
    .limit_depth(settings.limits.max_query_depth)
    .limit_complexity(settings.limits.max_query_complexity)
    .directive(directive::wait_for)
    .extension(app_fields::AppFieldGuard(std::sync::Arc::new(
        app_fields::AppFields::of::<Q, M, S>(&settings.public_fields),
    )));
    if !settings.limits.introspection {
        builder = builder.disable_introspection();
    }
    if let Some(tidemark) = settings.tidemark {
        builder = builder.data(tidemark);
    }
    ApiSchema {
        inner: Arc::new(builder.finish()),
        documents: Arc::default(),
    }
}

/// A built schema, whatever the application's types. Cheap to clone. Every response it
/// produces has gone through [`finish`]: each error has a code, internals are logged.
#[derive(Clone)]
pub struct ApiSchema {
    inner: Arc<dyn DynSchema>,
    /// Parsed documents by query text (parsing costs more than a simple resolver).
    documents: Arc<documents::DocumentCache>,
}

impl ApiSchema {
    /// The schema in SDL.
    pub fn sdl(&self) -> String {
        self.inner.sdl()
    }
}

trait DynSchema: Send + Sync {
    fn execute(&self, request: Request) -> BoxFuture<'static, Response>;
    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response>;
    fn sdl(&self) -> String;
}

impl<Q, M, S> DynSchema for Schema<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    fn execute(&self, request: Request) -> BoxFuture<'static, Response> {
        let schema = self.clone();
        async move { Schema::execute(&schema, request).await }.boxed()
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        Executor::execute_stream(self, request, session_data)
    }

    fn sdl(&self) -> String {
        Schema::sdl(self)
    }
}

impl Executor for ApiSchema {
    async fn execute(&self, request: Request) -> Response {
        // A panicking resolver (application code included) must not take the connection
        // down: it becomes an INTERNAL error.
        let run = async { self.inner.execute(self.documents.prepare(request)).await };
        let response = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(response) => response,
            Err(_) => Response::from_errors(vec![
                ApiError::internal("a resolver panicked").into_server_error()
            ]),
        };
        finish(response)
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        let prepared = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.inner
                .execute_stream(self.documents.prepare(request), session_data)
        }));
        let Ok(stream) = prepared else {
            return futures::stream::once(async {
                finish(Response::from_errors(vec![ApiError::internal(
                    "a subscription panicked",
                )
                .into_server_error()]))
            })
            .boxed();
        };
        AssertUnwindSafe(stream)
            .catch_unwind()
            .map(|item| match item {
                Ok(response) => finish(response),
                Err(_) => finish(Response::from_errors(vec![ApiError::internal(
                    "a subscription panicked",
                )
                .into_server_error()])),
            })
            .boxed()
    }
}

/// Causes logged by [`finish`]: each at most once per window, with the count suppressed.
static REPEATED_CAUSES: std::sync::LazyLock<crate::log_limit::RepeatLimiter> =
    std::sync::LazyLock::new(|| {
        crate::log_limit::RepeatLimiter::new(std::time::Duration::from_secs(10))
    });

/// Codes every error, counts them, and logs the causes of internal errors and refusals
/// (rate-limited per cause).
pub(crate) fn finish(mut response: Response) -> Response {
    for error in &mut response.errors {
        let normalized = normalize(error);
        metrics::counter!("tidemark_api_errors_total", "code" => normalized.code.clone())
            .increment(1);
        let Some(detail) = normalized.internal else {
            continue;
        };
        let cause = format!("{}: {detail}", normalized.code);
        let Some(suppressed) = REPEATED_CAUSES.admit(&cause, std::time::Instant::now()) else {
            continue;
        };
        if normalized.code == ErrorCode::Internal.as_str() {
            tracing::error!(path = ?error.path, error = %detail, suppressed, "internal error in a GraphQL request");
        } else {
            // A refusal (e.g. the database is unreachable): the client was told; the
            // operator needs the cause once, not once per request.
            tracing::warn!(code = %normalized.code, error = %detail, suppressed, "GraphQL requests refused");
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use crate::TidemarkApp;

    /// `api/schema.graphql` is the SDL of the built-in schema, committed so changes to the
    /// API show up in review. Regenerate with `TIDEMARK_UPDATE_SCHEMA=1 cargo test -p tidemark-api`.
    #[test]
    fn schema_file_matches_the_code() {
        let sdl = TidemarkApp::builder()
            .build()
            .sdl()
            .expect("the built-in schema");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
        if std::env::var_os("TIDEMARK_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &sdl).expect("write api/schema.graphql");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == sdl,
            "api/schema.graphql differs from the schema in the code; if the change is intended, \
             regenerate it with `TIDEMARK_UPDATE_SCHEMA=1 cargo test -p tidemark-api` and commit it"
        );
    }

    /// An application type with a built-in type's name (here `Event`) is an error naming
    /// the clash, not a panic; a root object named like a merged root says what to rename.
    #[test]
    fn clashing_application_names_are_errors_that_say_what_to_rename() {
        #[derive(async_graphql::SimpleObject)]
        struct Event {
            kind: String,
        }
        #[derive(Default, Clone)]
        struct ClashingQuery;
        #[async_graphql::Object]
        impl ClashingQuery {
            async fn last_event(&self) -> Event {
                Event { kind: "x".into() }
            }
        }
        let clash = TidemarkApp::builder()
            .graphql_query(ClashingQuery)
            .build()
            .check_graphql()
            .unwrap_err();
        assert!(
            matches!(clash, super::SchemaConflict::NameClash(_)),
            "{clash}"
        );
        assert!(clash.to_string().contains("Event"), "{clash}");

        #[derive(Default, Clone)]
        struct Mutation;
        #[async_graphql::Object]
        impl Mutation {
            async fn noop(&self) -> bool {
                true
            }
        }
        let root = TidemarkApp::builder()
            .graphql_mutation(Mutation)
            .build()
            .check_graphql()
            .unwrap_err();
        assert_eq!(
            root,
            super::SchemaConflict::RootName {
                root: "mutation",
                name: "Mutation".into()
            }
        );
    }

    /// GraphiQL's introspection query must pass the default depth and complexity limits.
    #[tokio::test]
    async fn introspection_fits_the_default_limits() {
        let schema = TidemarkApp::builder()
            .build()
            .schema(Default::default())
            .expect("the built-in schema");
        let response = async_graphql::Executor::execute(&schema, INTROSPECTION.into()).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
    }

    const INTROSPECTION: &str = r#"
    query IntrospectionQuery {
      __schema {
        queryType { name } mutationType { name } subscriptionType { name }
        types { ...FullType }
        directives { name description locations args { ...InputValue } }
      }
    }
    fragment FullType on __Type {
      kind name description
      fields(includeDeprecated: true) {
        name description args { ...InputValue } type { ...TypeRef } isDeprecated deprecationReason
      }
      inputFields { ...InputValue }
      interfaces { ...TypeRef }
      enumValues(includeDeprecated: true) { name description isDeprecated deprecationReason }
      possibleTypes { ...TypeRef }
    }
    fragment InputValue on __InputValue { name description type { ...TypeRef } defaultValue }
    fragment TypeRef on __Type {
      kind name
      ofType { kind name ofType { kind name ofType { kind name ofType { kind name
        ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }
    }"#;
}
