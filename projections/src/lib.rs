//! Projection engine (see issue 4).
