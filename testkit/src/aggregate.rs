//! Given/when/then for aggregates, without a database: the rules of an [`Aggregate`] are
//! pure (`apply` folds, `handle` decides), so they are tested on events and commands alone.
//!
//! ```ignore
//! AggregateTest::<Account>::given([AccountEvent::AccountOpened { owner: "ann".into() }])
//!     .when(AccountCommand::Deposit { amount: 5 })
//!     .then_expect_events([AccountEvent::MoneyDeposited { amount: 5 }]);
//! ```
//!
//! Events take the way they take through the store: the history is encoded and decoded as
//! [`tidemark_store::aggregate::CommandBus`] loads it, and the events a command produces
//! must encode as the bus appends them. So an event the store could not hold (a tuple
//! variant, a payload that is not an object) fails here too, not only against PostgreSQL.

use std::fmt::Debug;
use tidemark_store::aggregate::{decode, encode, Aggregate};

/// An aggregate in the state its history leaves it in, ready to be sent a command.
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> AggregateTest<A> {
    /// An aggregate whose stream does not exist yet.
    pub fn given_no_previous_events() -> Self {
        AggregateTest {
            state: A::default(),
        }
    }

    /// An aggregate whose stream holds `events`, in order.
    #[track_caller]
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for (index, event) in events.into_iter().enumerate() {
            state.apply(round_trip::<A>(index, &event));
        }
        AggregateTest { state }
    }

    /// Sends `command`: what the aggregate decides.
    #[track_caller]
    pub fn when(self, command: A::Command) -> AggregateVerdict<A> {
        let decided = self.state.handle(&command);
        if let Ok(events) = &decided {
            for (index, event) in events.iter().enumerate() {
                if let Err(error) = encode(event) {
                    panic!("event {index} produced by the command cannot be stored: {error}");
                }
            }
        }
        AggregateVerdict { decided }
    }
}

/// What the aggregate decided on a command, to check.
pub struct AggregateVerdict<A: Aggregate> {
    decided: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateVerdict<A>
where
    A::Event: Debug,
    A::Error: Debug,
{
    /// The command is accepted and produces exactly `expected`, in order.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>)
    where
        A::Event: PartialEq,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.decided {
            Ok(events) => assert_eq!(events, expected, "the command produced other events"),
            Err(error) => {
                panic!("expected events {expected:?}, but the command was refused: {error:?}")
            }
        }
    }

    /// The command is accepted and changes nothing (no events: nothing would be written).
    #[track_caller]
    pub fn then_expect_no_change(self) {
        match self.decided {
            Ok(events) => assert!(events.is_empty(), "expected no events, got {events:?}"),
            Err(error) => panic!("expected no change, but the command was refused: {error:?}"),
        }
    }

    /// The command is refused with exactly `expected`.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.decided {
            Ok(events) => {
                panic!("expected the refusal {expected:?}, but the command produced {events:?}")
            }
            Err(error) => assert_eq!(
                error, expected,
                "the command was refused for another reason"
            ),
        }
    }

    /// The command is refused, and the refusal reads `expected` (what a client is shown).
    #[track_caller]
    pub fn then_expect_error_message(self, expected: &str) {
        match self.decided {
            Ok(events) => {
                panic!("expected the refusal '{expected}', but the command produced {events:?}")
            }
            Err(error) => assert_eq!(error.to_string(), expected),
        }
    }

    /// The decision itself, for checks the methods above do not cover.
    pub fn inspect_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.decided
    }
}

/// `event` as a load from the store would give it back.
#[track_caller]
fn round_trip<A: Aggregate>(index: usize, event: &A::Event) -> A::Event {
    let (event_type, payload) = encode(event)
        .unwrap_or_else(|error| panic!("given event {index} cannot be stored: {error}"));
    decode(&event_type, payload).unwrap_or_else(|error| {
        panic!("given event {index} ({event_type}) does not read back as it was stored: {error}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    /// A lamp that can be switched on once.
    #[derive(Default)]
    struct Lamp {
        on: bool,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum LampEvent {
        SwitchedOn {},
        /// Cannot be stored: its payload is not an object.
        Flickered(u32),
    }

    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("the lamp is already on")]
    struct AlreadyOn;

    enum LampCommand {
        SwitchOn,
        Flicker,
        Touch,
    }

    impl Aggregate for Lamp {
        type Command = LampCommand;
        type Event = LampEvent;
        type Error = AlreadyOn;
        const CATEGORY: &'static str = "lamp";

        fn apply(&mut self, event: LampEvent) {
            if let LampEvent::SwitchedOn {} = event {
                self.on = true;
            }
        }

        fn handle(&self, command: &LampCommand) -> Result<Vec<LampEvent>, AlreadyOn> {
            match command {
                LampCommand::SwitchOn if self.on => Err(AlreadyOn),
                LampCommand::SwitchOn => Ok(vec![LampEvent::SwitchedOn {}]),
                LampCommand::Flicker => Ok(vec![LampEvent::Flickered(3)]),
                LampCommand::Touch => Ok(vec![]),
            }
        }
    }

    #[test]
    fn events_a_refusal_and_no_change_are_each_checked() {
        AggregateTest::<Lamp>::given_no_previous_events()
            .when(LampCommand::SwitchOn)
            .then_expect_events([LampEvent::SwitchedOn {}]);
        AggregateTest::<Lamp>::given([LampEvent::SwitchedOn {}])
            .when(LampCommand::SwitchOn)
            .then_expect_error(AlreadyOn);
        AggregateTest::<Lamp>::given([LampEvent::SwitchedOn {}])
            .when(LampCommand::SwitchOn)
            .then_expect_error_message("the lamp is already on");
        AggregateTest::<Lamp>::given([LampEvent::SwitchedOn {}])
            .when(LampCommand::Touch)
            .then_expect_no_change();
    }

    #[test]
    #[should_panic(expected = "the command was refused")]
    fn expecting_events_from_a_refused_command_fails() {
        AggregateTest::<Lamp>::given([LampEvent::SwitchedOn {}])
            .when(LampCommand::SwitchOn)
            .then_expect_events([LampEvent::SwitchedOn {}]);
    }

    #[test]
    #[should_panic(expected = "the command produced other events")]
    fn expecting_other_events_fails() {
        AggregateTest::<Lamp>::given_no_previous_events()
            .when(LampCommand::SwitchOn)
            .then_expect_events([]);
    }

    #[test]
    #[should_panic(expected = "but the command produced")]
    fn expecting_a_refusal_of_an_accepted_command_fails() {
        AggregateTest::<Lamp>::given_no_previous_events()
            .when(LampCommand::SwitchOn)
            .then_expect_error(AlreadyOn);
    }

    #[test]
    #[should_panic(expected = "cannot be stored")]
    fn an_event_the_store_cannot_hold_fails_the_command() {
        AggregateTest::<Lamp>::given_no_previous_events().when(LampCommand::Flicker);
    }

    #[test]
    #[should_panic(expected = "given event 1 cannot be stored")]
    fn a_history_the_store_cannot_hold_fails_the_given() {
        AggregateTest::<Lamp>::given([LampEvent::SwitchedOn {}, LampEvent::Flickered(1)]);
    }
}
