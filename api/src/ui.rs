//! The operator's dashboard at `/ui`: one hand-written page, script and stylesheet
//! (`api/assets/ui/`, plain JavaScript, no framework, no build step) embedded in the binary
//! and served under the same Content-Security-Policy as GraphiQL, so it works offline and
//! reaches nothing but its own origin. Assets are at `/ui/<name>?v=<hash>`, cached like
//! GraphiQL's (see `graphiql`).
//!
//! The page is a client of the GraphQL API like any other: it sends the operator's API key
//! as `Authorization: Bearer <key>` (kept in the tab's `sessionStorage`), so it sees and may
//! do exactly what the key's role allows; the admin buttons are only disabled for other
//! roles, the server refusing them regardless. Every refresh (about every 2 s) is one
//! GraphQL request; the log's live tail is an `events` subscription over WebSocket.

use crate::graphiql::{html_page, serve_asset, tag_of, Asset, CSS, JAVASCRIPT};
use axum::http::HeaderMap;
use axum::response::Response;
use std::sync::LazyLock;

const ASSETS: [Asset; 2] = [
    Asset {
        name: "dashboard.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../assets/ui/dashboard.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: CSS,
        bytes: include_bytes!("../assets/ui/dashboard.css"),
    },
];

/// Each asset's version tag, in the order of [`ASSETS`].
static TAGS: LazyLock<Vec<String>> =
    LazyLock::new(|| ASSETS.iter().map(|asset| tag_of(asset.bytes)).collect());

/// The page: the static body with its assets' versioned URLs filled in.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    let mut page = include_str!("../assets/ui/dashboard.html").to_string();
    for (asset, tag) in ASSETS.iter().zip(TAGS.iter()) {
        // Relative to `/ui`: behind a proxy that serves the API under a prefix, the page
        // still finds its assets (and `graphql`, which the script resolves the same way).
        page = page.replace(
            &format!("{{{{{}}}}}", asset.name),
            &format!("ui/{}?v={tag}", asset.name),
        );
    }
    page
});

/// `GET /ui`: the page, with its policy.
pub(crate) fn page() -> Response {
    html_page(PAGE.as_str())
}

/// `GET /ui/<name>`, or `None` when no asset has that name.
pub(crate) fn asset(name: &str, query: Option<&str>, headers: &HeaderMap) -> Option<Response> {
    let index = ASSETS.iter().position(|asset| asset.name == name)?;
    Some(serve_asset(&ASSETS[index], &TAGS[index], query, headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, StatusCode};

    #[test]
    fn the_page_names_each_asset_by_its_versioned_url_and_nothing_else() {
        assert!(
            !PAGE.contains("{{"),
            "every placeholder is filled: {}",
            *PAGE
        );
        for (asset, tag) in ASSETS.iter().zip(TAGS.iter()) {
            assert!(PAGE.contains(&format!("\"ui/{}?v={tag}\"", asset.name)));
        }
        for attribute in ["src=\"", "href=\""] {
            for value in PAGE.split(attribute).skip(1) {
                let url = &value[..value.find('"').expect("a closed attribute")];
                assert!(
                    url.starts_with("ui/") || url == "data:," || url.starts_with('#'),
                    "the page names {url}, which is not one of its own assets"
                );
            }
        }
        assert!(!PAGE.contains("//"), "no absolute or protocol-relative URL");
        // The policy refuses inline code: the page carries none.
        assert!(!PAGE.contains("<script>"), "no inline script");
        assert!(!PAGE.contains("style="), "no inline style");
        for handler in ["onclick=", "onload=", "onsubmit=", "onchange=", "oninput="] {
            assert!(
                !PAGE.contains(handler),
                "no inline event handler ({handler})"
            );
        }
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_an_unknown_one_is_not() {
        let headers = HeaderMap::new();
        for (asset, tag) in ASSETS.iter().zip(TAGS.iter()) {
            let query = format!("v={tag}");
            let response = super::asset(asset.name, Some(&query), &headers).expect("served");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[header::CONTENT_TYPE], asset.content_type);
            assert_eq!(
                response.headers()[header::CACHE_CONTROL],
                "public, max-age=31536000, immutable"
            );
        }
        assert!(super::asset("../graphiql.rs", None, &headers).is_none());
        assert!(super::asset("graphiql.min.js", None, &headers).is_none());
    }
}
