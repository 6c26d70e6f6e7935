//! The engine's kinds and states that the database stores as text: a lane's [`Target`], a
//! build's [`BuildKind`] and [`BuildStatus`], a projection's [`ProjectionState`]. Each has its
//! spelling in one place (`as_sql` / `parse_sql`), and binds and reads as a SQL parameter
//! (`ToSql`/`FromSql` on `text`), so no other code spells them.

use bytes::BytesMut;
use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

/// The read model a lane writes to (`projection_checkpoints.target`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The serving read model, in the projection's schema.
    Live,
    /// A rebuild's copy, swapped in when done (`<schema>__shadow`).
    Shadow,
    /// An as-of build's copy, left for inspection (`<schema>__asof_<label>`).
    AsOf(String),
}

impl Target {
    const AS_OF_PREFIX: &'static str = "as_of:";

    /// The spelling in `projection_checkpoints.target` and `projection_rebuilds.target`.
    pub fn as_sql(&self) -> Cow<'static, str> {
        match self {
            Target::Live => Cow::Borrowed("live"),
            Target::Shadow => Cow::Borrowed("shadow"),
            Target::AsOf(label) => Cow::Owned(format!("{}{label}", Self::AS_OF_PREFIX)),
        }
    }

    pub fn parse_sql(text: &str) -> Option<Target> {
        match text {
            "live" => Some(Target::Live),
            "shadow" => Some(Target::Shadow),
            _ => text
                .strip_prefix(Self::AS_OF_PREFIX)
                .map(|label| Target::AsOf(label.to_string())),
        }
    }

    /// The schema this target's read model lives in, given the live one.
    pub fn schema(&self, live_schema: &str) -> String {
        match self {
            Target::Live => live_schema.to_string(),
            Target::Shadow => format!("{live_schema}__shadow"),
            Target::AsOf(label) => format!("{live_schema}__asof_{label}"),
        }
    }
}

/// What a build does (`projection_rebuilds.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildKind {
    /// From position 0 into the shadow, then swapped in.
    Rebuild,
    /// From the events after a position only into the shadow, then swapped in.
    Replay,
    /// Up to a position into its own schema, left for inspection.
    AsOf,
}

impl BuildKind {
    pub fn as_sql(self) -> &'static str {
        match self {
            BuildKind::Rebuild => "rebuild",
            BuildKind::Replay => "replay",
            BuildKind::AsOf => "as_of",
        }
    }

    pub fn parse_sql(text: &str) -> Option<BuildKind> {
        [BuildKind::Rebuild, BuildKind::Replay, BuildKind::AsOf]
            .into_iter()
            .find(|kind| kind.as_sql() == text)
    }
}

/// Where a build is (`projection_rebuilds.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    Running,
    Done,
    /// Failed, or interrupted (its process died; found by the next build of its target).
    Failed,
}

impl BuildStatus {
    pub fn as_sql(self) -> &'static str {
        match self {
            BuildStatus::Running => "running",
            BuildStatus::Done => "done",
            BuildStatus::Failed => "failed",
        }
    }

    pub fn parse_sql(text: &str) -> Option<BuildStatus> {
        [BuildStatus::Running, BuildStatus::Done, BuildStatus::Failed]
            .into_iter()
            .find(|status| status.as_sql() == text)
    }
}

/// How a projection runs. `projections.status` stores `Running` or `Stopped`; status
/// reports derive the other two (a shadow build running, no row yet) with the same
/// spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectionState {
    Running,
    /// A partition stopped on a poison event under `ParkAndStop`, until its replay.
    Stopped,
    /// A rebuild into the shadow is running; the live read model keeps serving.
    Rebuilding,
    /// Never registered by an engine.
    NotStarted,
}

impl ProjectionState {
    pub fn as_sql(self) -> &'static str {
        match self {
            ProjectionState::Running => "running",
            ProjectionState::Stopped => "stopped",
            ProjectionState::Rebuilding => "rebuilding",
            ProjectionState::NotStarted => "not started",
        }
    }

    pub fn parse_sql(text: &str) -> Option<ProjectionState> {
        [
            ProjectionState::Running,
            ProjectionState::Stopped,
            ProjectionState::Rebuilding,
            ProjectionState::NotStarted,
        ]
        .into_iter()
        .find(|state| state.as_sql() == text)
    }
}

/// `Display`, `ToSql` and `FromSql` through `as_sql` / `parse_sql`, on `text` columns.
macro_rules! text_in_sql {
    ($type:ty, $what:literal) => {
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.as_sql())
            }
        }

        impl ToSql for $type {
            fn to_sql(
                &self,
                ty: &Type,
                out: &mut BytesMut,
            ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
                (&*self.as_sql()).to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <&str as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $type {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
                let text = <&str as FromSql>::from_sql(ty, raw)?;
                <$type>::parse_sql(text)
                    .ok_or_else(|| format!("'{text}' is not a {}", $what).into())
            }

            fn accepts(ty: &Type) -> bool {
                <&str as FromSql>::accepts(ty)
            }
        }
    };
}

text_in_sql!(Target, "lane target");
text_in_sql!(BuildKind, "build kind");
text_in_sql!(BuildStatus, "build status");
text_in_sql!(ProjectionState, "projection state");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_reads_back_as_itself() {
        for target in [Target::Live, Target::Shadow, Target::AsOf("q3".into())] {
            assert_eq!(Target::parse_sql(&target.as_sql()), Some(target));
        }
        for kind in [BuildKind::Rebuild, BuildKind::Replay, BuildKind::AsOf] {
            assert_eq!(BuildKind::parse_sql(kind.as_sql()), Some(kind));
        }
        for status in [BuildStatus::Running, BuildStatus::Done, BuildStatus::Failed] {
            assert_eq!(BuildStatus::parse_sql(status.as_sql()), Some(status));
        }
        for state in [
            ProjectionState::Running,
            ProjectionState::Stopped,
            ProjectionState::Rebuilding,
            ProjectionState::NotStarted,
        ] {
            assert_eq!(ProjectionState::parse_sql(state.as_sql()), Some(state));
        }
        assert_eq!(Target::parse_sql("elsewhere"), None);
    }

    #[test]
    fn each_target_names_its_schema() {
        assert_eq!(Target::Live.schema("rm_x"), "rm_x");
        assert_eq!(Target::Shadow.schema("rm_x"), "rm_x__shadow");
        assert_eq!(Target::AsOf("q3".into()).schema("rm_x"), "rm_x__asof_q3");
    }
}

/// What a projection's read model is, for status: a fold of the application's own tables, or
/// the windows of a [`crate::WindowedProjection`] (whose watermark and lateness status reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProjectionKind {
    #[default]
    Fold,
    Windowed,
}
