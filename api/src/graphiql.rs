//! GraphiQL at `/`, served entirely from the binary: a pinned build of GraphiQL, React and
//! ReactDOM (`api/assets/graphiql/`, see its README for versions and updating) embedded at
//! compile time, our own page and start script, and a Content-Security-Policy that lets the
//! page reach nothing but its own origin. So it works without internet access, behind a
//! proxy, in an air-gapped deployment and under strict browser policies.
//!
//! Assets are at `/assets/<name>`. The page names each with `?v=<hash of its bytes>`: such a
//! URL always means the same bytes, so it is cached for a year; the page itself is revalidated.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;

/// The vendored GraphiQL (also in `api/assets/graphiql/README.md`).
pub const GRAPHIQL_VERSION: &str = "3.9.0";
/// The vendored React and ReactDOM.
pub const REACT_VERSION: &str = "18.3.1";

/// The page's policy: scripts, styles and connections (HTTP and, by CSP level 3's `'self'`,
/// WebSocket to the same host and port) only from this origin; fonts and images also as
/// `data:` URLs (GraphiQL's fonts and icons are inlined in its CSS); nothing may frame it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; font-src 'self' data:; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
pub(crate) const CSS: &str = "text/css; charset=utf-8";

/// A file embedded in the binary and served under a page's asset path (GraphiQL's at
/// `/assets/<name>`, the dashboard's at `/ui/<name>`).
pub(crate) struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// An asset's version tag: a short hash of its bytes.
pub(crate) fn tag_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_string()
}

const ASSETS: [Asset; 6] = [
    Asset {
        name: "react.production.min.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../assets/graphiql/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../assets/graphiql/react-dom.production.min.js"),
    },
    Asset {
        name: "graphiql.min.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../assets/graphiql/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        content_type: CSS,
        bytes: include_bytes!("../assets/graphiql/graphiql.min.css"),
    },
    Asset {
        name: "tidemark-graphiql.js",
        content_type: JAVASCRIPT,
        bytes: include_bytes!("../assets/tidemark-graphiql.js"),
    },
    Asset {
        name: "tidemark-graphiql.css",
        content_type: CSS,
        bytes: include_bytes!("../assets/tidemark-graphiql.css"),
    },
];

/// Each asset's version tag (a short hash of its bytes), in the order of [`ASSETS`].
static TAGS: LazyLock<Vec<String>> =
    LazyLock::new(|| ASSETS.iter().map(|asset| tag_of(asset.bytes)).collect());

/// The page, built once: it depends only on the embedded assets.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    let url = |name: &str| {
        let index = ASSETS
            .iter()
            .position(|asset| asset.name == name)
            .expect("the page names only embedded assets");
        format!("assets/{name}?v={}", TAGS[index])
    };
    // Relative URLs throughout: behind a reverse proxy that serves the API under a path
    // prefix, the page still finds its assets and endpoints.
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<meta name="generator" content="GraphiQL {GRAPHIQL_VERSION}, React {REACT_VERSION}">
<title>Tidemark GraphiQL</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{graphiql_css}">
<link rel="stylesheet" href="{page_css}">
</head>
<body>
<div id="graphiql" data-endpoint="graphql" data-subscription-endpoint="graphql">Loading GraphiQL…</div>
<noscript>GraphiQL needs JavaScript; the GraphQL endpoint itself is POST /graphql.</noscript>
<script src="{react}"></script>
<script src="{react_dom}"></script>
<script src="{graphiql}"></script>
<script src="{start}"></script>
</body>
</html>
"#,
        graphiql_css = url("graphiql.min.css"),
        page_css = url("tidemark-graphiql.css"),
        react = url("react.production.min.js"),
        react_dom = url("react-dom.production.min.js"),
        graphiql = url("graphiql.min.js"),
        start = url("tidemark-graphiql.js"),
    )
});

/// `GET /`: the page, with its policy.
pub(crate) fn page() -> Response {
    html_page(PAGE.as_str())
}

/// An HTML page of ours under [`CONTENT_SECURITY_POLICY`], revalidated on every load (its
/// assets are the versioned, cached part).
pub(crate) fn html_page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

/// `GET /assets/<name>`, or `None` when no asset has that name. `query` is the request's
/// query string: with the current `v=` tag the answer may be cached for good; without it
/// (or with an old tag) it must be revalidated. `If-None-Match` with the tag answers 304.
pub(crate) fn asset(name: &str, query: Option<&str>, headers: &HeaderMap) -> Option<Response> {
    let index = ASSETS.iter().position(|asset| asset.name == name)?;
    Some(serve_asset(&ASSETS[index], &TAGS[index], query, headers))
}

/// Serves `asset`, whose current tag is `tag`: see [`asset`] for the caching rules.
pub(crate) fn serve_asset(
    asset: &Asset,
    tag: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let etag = format!("\"{tag}\"");
    let versioned = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .any(|pair| pair.strip_prefix("v=") == Some(tag));
    let cache_control = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let etag_value = HeaderValue::from_str(&etag).expect("a hex tag is a valid header value");
    let common = [
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        ),
        (header::ETAG, etag_value),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|candidate| candidate.trim() == etag));
    if matches {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_same_origin_urls() {
        for attribute in ["src=\"", "href=\""] {
            for value in PAGE.split(attribute).skip(1) {
                let url = &value[..value.find('"').expect("a closed attribute")];
                assert!(
                    url.starts_with("assets/") || url == "data:,",
                    "the page names {url}, which is not one of its own assets"
                );
            }
        }
        assert!(!PAGE.contains("//"), "no absolute or protocol-relative URL");
    }

    #[test]
    fn every_asset_the_page_names_is_served_with_its_type() {
        let headers = HeaderMap::new();
        for asset in &ASSETS {
            assert!(PAGE.contains(&format!("assets/{}?v=", asset.name)));
            let response = asset_response(asset.name, &headers);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[header::CONTENT_TYPE], asset.content_type);
        }
        assert!(asset("../Cargo.toml", None, &headers).is_none());
    }

    #[test]
    fn a_versioned_url_is_cached_for_good_and_an_unversioned_one_is_revalidated() {
        let headers = HeaderMap::new();
        let versioned = asset_response("graphiql.min.js", &headers);
        assert_eq!(
            versioned.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        let plain = asset("graphiql.min.js", None, &headers).expect("an asset");
        assert_eq!(plain.headers()[header::CACHE_CONTROL], "no-cache");
        let stale = asset("graphiql.min.js", Some("v=0123"), &headers).expect("an asset");
        assert_eq!(stale.headers()[header::CACHE_CONTROL], "no-cache");

        let mut revalidate = HeaderMap::new();
        revalidate.insert(
            header::IF_NONE_MATCH,
            versioned.headers()[header::ETAG].clone(),
        );
        let again = asset("graphiql.min.js", None, &revalidate).expect("an asset");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn the_policy_allows_no_other_origin() {
        for directive in CONTENT_SECURITY_POLICY.split(';') {
            for source in directive.split_whitespace().skip(1) {
                assert!(
                    ["'self'", "'none'", "data:"].contains(&source),
                    "{directive} allows {source}"
                );
            }
        }
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none'"));
    }

    fn asset_response(name: &str, headers: &HeaderMap) -> Response {
        let index = ASSETS
            .iter()
            .position(|a| a.name == name)
            .expect("an asset");
        let query = format!("v={}", TAGS[index]);
        asset(name, Some(&query), headers).expect("an asset")
    }
}
