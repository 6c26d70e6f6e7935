//! Deny by default: the application's root fields need at least the `read` role.
//!
//! Built-in fields carry their own guards. An application field without a guard would be
//! public when authentication is on, which is never what a forgotten guard meant; so every
//! root field the application merges in (queries, mutations, subscriptions) requires a key
//! with the `read` role unless the application lists it as public
//! (`TidemarkAppBuilder::public_field`). Field guards the application adds still apply on top.

use crate::auth::{Principal, Role};
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::registry::Registry;
use async_graphql::{OutputType, ServerResult, SubscriptionType, Variables};
use std::collections::HashSet;
use std::sync::Arc;

/// The application's root fields by operation type, and those it declared public.
#[derive(Debug, Default)]
pub(crate) struct AppFields {
    query: HashSet<String>,
    mutation: HashSet<String>,
    subscription: HashSet<String>,
    public: HashSet<String>,
}

/// Root field names of the type `register` adds to a registry (none for the empty
/// objects); `register` returns the type's name.
fn root_fields(register: impl FnOnce(&mut Registry) -> String) -> HashSet<String> {
    let mut registry = Registry::default();
    let name = register(&mut registry);
    registry
        .types
        .get(&name)
        .and_then(|ty| ty.fields())
        .map(|fields| {
            fields
                .keys()
                .filter(|name| !name.starts_with("__"))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

impl AppFields {
    pub(crate) fn of<Q: OutputType, M: OutputType, S: SubscriptionType>(
        public: &[String],
    ) -> AppFields {
        AppFields {
            query: root_fields(|r| {
                Q::create_type_info(r);
                Q::type_name().into_owned()
            }),
            mutation: root_fields(|r| {
                M::create_type_info(r);
                M::type_name().into_owned()
            }),
            subscription: root_fields(|r| {
                S::create_type_info(r);
                S::type_name().into_owned()
            }),
            public: public.iter().cloned().collect(),
        }
    }

    fn guarded(&self, operation: OperationType, field: &str) -> bool {
        let fields = match operation {
            OperationType::Query => &self.query,
            OperationType::Mutation => &self.mutation,
            OperationType::Subscription => &self.subscription,
        };
        fields.contains(field) && !self.public.contains(field)
    }
}

/// Root field names a selection set asks for, looking through fragments at the root.
fn root_selections<'a>(
    document: &'a ExecutableDocument,
    set: &'a SelectionSet,
    out: &mut Vec<&'a str>,
    depth: usize,
) {
    // Fragment cycles are a validation error reported later; do not loop on them here.
    if depth > 32 {
        return;
    }
    for selection in &set.items {
        match &selection.node {
            Selection::Field(field) => out.push(field.node.name.node.as_str()),
            Selection::InlineFragment(fragment) => {
                root_selections(document, &fragment.node.selection_set.node, out, depth + 1)
            }
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = document.fragments.get(&spread.node.fragment_name.node) {
                    root_selections(document, &fragment.node.selection_set.node, out, depth + 1)
                }
            }
        }
    }
}

/// The schema extension that enforces it, checked when a request is parsed.
pub(crate) struct AppFieldGuard(pub Arc<AppFields>);

impl ExtensionFactory for AppFieldGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Guard(self.0.clone()))
    }
}

struct Guard(Arc<AppFields>);

#[async_trait::async_trait]
impl Extension for Guard {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        for (_, operation) in document.operations.iter() {
            let mut fields = Vec::new();
            root_selections(
                &document,
                &operation.node.selection_set.node,
                &mut fields,
                0,
            );
            if let Some(field) = fields
                .into_iter()
                .find(|field| self.0.guarded(operation.node.ty, field))
            {
                let principal = ctx.data_opt::<Principal>().unwrap_or(&Principal::Anonymous);
                if let Err(mut error) = principal.check(Role::Read) {
                    error.message = format!("{} (to use `{field}`)", error.message);
                    return Err(error.into_server_error());
                }
            }
        }
        Ok(document)
    }
}
