//! Example bank application.
