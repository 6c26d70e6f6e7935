//! Tidemark API.
