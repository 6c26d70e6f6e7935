//! The bank's write side: three aggregates and their invariants.
//!
//! - [`Customer`] (`customer-<id>`): registered once, with a plausible email.
//! - [`Account`] (`account-<id>`): no overdraft; no money moves on an unopened or closed
//!   account; closing needs a zero balance; an order is paid from an account at most once.
//! - [`Order`] (`order-<id>`): paid before shipped; paid and shipped once; a shipped order
//!   cannot be cancelled.
//!
//! Paying an order spans two aggregates and is made safe to retry: the account records the
//! order id with the withdrawal (a second `PayOrder` for the same order is a no-op), then the
//! order is marked paid (also a no-op when already paid). See [`pay_order`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use tidemark_store::aggregate::{
    Aggregate, CommandBus, CommandError, CommandOptions, CommandOutcome,
};

/// A refused command, said so a person understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BankError {
    #[error("customer {0} is already registered")]
    CustomerExists(String),
    #[error("'{0}' is not a valid email address")]
    InvalidEmail(String),
    #[error("customer {0} is not registered")]
    UnknownCustomer(String),
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("account {0} does not exist")]
    UnknownAccount(String),
    #[error("account {0} is closed")]
    AccountClosed(String),
    #[error("amounts must be positive (got {0})")]
    NonPositiveAmount(i64),
    #[error("insufficient funds: the balance is {balance}, the withdrawal {amount}")]
    InsufficientFunds { balance: i64, amount: i64 },
    #[error("an account can only be closed with a zero balance (it holds {0})")]
    BalanceNotZero(i64),
    #[error("order {0} already exists")]
    OrderExists(String),
    #[error("order {0} does not exist")]
    UnknownOrder(String),
    #[error("order {0} is not paid and cannot be shipped")]
    NotPaid(String),
    #[error("order {0} was cancelled")]
    OrderCancelled(String),
    #[error("order {0} has shipped and cannot be cancelled")]
    AlreadyShipped(String),
}

impl BankError {
    /// Names aggregate `id` in a refusal about the aggregate itself. An aggregate does not
    /// know its own id (only the first command carries it, and a stream that does not
    /// exist has no events), so `handle` leaves it empty and [`execute`] fills it in.
    pub fn naming(self, id: &str) -> BankError {
        let id = id.to_string();
        match self {
            BankError::UnknownCustomer(_) => BankError::UnknownCustomer(id),
            BankError::UnknownAccount(_) => BankError::UnknownAccount(id),
            BankError::AccountClosed(_) => BankError::AccountClosed(id),
            BankError::UnknownOrder(_) => BankError::UnknownOrder(id),
            other => other,
        }
    }
}

/// Runs `command` on the aggregate `id` through `bus`, naming `id` in its refusals (see
/// [`BankError::naming`]). Every command of the bank goes through here. With a command id
/// in `options`, sending the same command again never applies it twice (see
/// [`tidemark_store::aggregate`]); its correlation and causation ids go into the metadata
/// of the events written.
pub async fn execute<A>(
    bus: &CommandBus,
    id: &str,
    command: &A::Command,
    options: CommandOptions,
) -> Result<CommandOutcome, CommandError<BankError>>
where
    A: Aggregate<Error = BankError>,
{
    bus.execute_with::<A>(id, command, options)
        .await
        .map_err(|error| match error {
            CommandError::Rejected(reason) => CommandError::Rejected(reason.naming(id)),
            other => other,
        })
}

// ---------------------------------------------------------------- customer

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum CustomerEvent {
    CustomerRegistered {
        customer_id: String,
        name: String,
        email: String,
    },
    EmailChanged {
        email: String,
    },
}

#[derive(Debug, Clone)]
pub enum CustomerCommand {
    Register {
        customer_id: String,
        name: String,
        email: String,
    },
    ChangeEmail {
        email: String,
    },
}

#[derive(Debug, Default)]
pub struct Customer {
    pub id: Option<String>,
    pub email: String,
}

fn check_email(email: &str) -> Result<(), BankError> {
    let plausible = email
        .split_once('@')
        .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'));
    if plausible {
        Ok(())
    } else {
        Err(BankError::InvalidEmail(email.to_string()))
    }
}

impl Aggregate for Customer {
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = BankError;
    const CATEGORY: &'static str = "customer";

    fn apply(&mut self, event: CustomerEvent) {
        match event {
            CustomerEvent::CustomerRegistered {
                customer_id, email, ..
            } => {
                self.id = Some(customer_id);
                self.email = email;
            }
            CustomerEvent::EmailChanged { email } => self.email = email,
        }
    }

    fn handle(&self, command: &CustomerCommand) -> Result<Vec<CustomerEvent>, BankError> {
        match command {
            CustomerCommand::Register {
                customer_id,
                name,
                email,
            } => {
                if self.id.is_some() {
                    return Err(BankError::CustomerExists(customer_id.clone()));
                }
                check_email(email)?;
                Ok(vec![CustomerEvent::CustomerRegistered {
                    customer_id: customer_id.clone(),
                    name: name.clone(),
                    email: email.clone(),
                }])
            }
            CustomerCommand::ChangeEmail { email } => {
                if self.id.is_none() {
                    return Err(BankError::UnknownCustomer(String::new()));
                }
                check_email(email)?;
                if *email == self.email {
                    return Ok(vec![]);
                }
                Ok(vec![CustomerEvent::EmailChanged {
                    email: email.clone(),
                }])
            }
        }
    }
}

// ---------------------------------------------------------------- account

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum AccountEvent {
    AccountOpened {
        owner: String,
    },
    /// Schema version 2 (see [`crate::schemas`]): v1 had no `currency`.
    MoneyDeposited {
        amount: i64,
        currency: String,
    },
    MoneyWithdrawn {
        amount: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<String>,
    },
    AccountClosed {},
}

#[derive(Debug, Clone)]
pub enum AccountCommand {
    Open {
        account_id: String,
        owner: String,
    },
    Deposit {
        amount: i64,
    },
    Withdraw {
        amount: i64,
    },
    /// Withdraws `amount` for `order_id`, once.
    PayOrder {
        order_id: String,
        amount: i64,
    },
    Close,
}

#[derive(Debug, Default)]
pub struct Account {
    /// Set once the account is opened.
    pub owner: Option<String>,
    pub balance: i64,
    pub closed: bool,
    pub paid_orders: BTreeSet<String>,
}

impl Account {
    /// Money moves only on an open account. (The refusal's id is filled in by [`execute`].)
    fn usable(&self) -> Result<(), BankError> {
        match (&self.owner, self.closed) {
            (None, _) => Err(BankError::UnknownAccount(String::new())),
            (Some(_), true) => Err(BankError::AccountClosed(String::new())),
            (Some(_), false) => Ok(()),
        }
    }

    fn withdrawable(&self, amount: i64) -> Result<(), BankError> {
        if amount <= 0 {
            return Err(BankError::NonPositiveAmount(amount));
        }
        if amount > self.balance {
            return Err(BankError::InsufficientFunds {
                balance: self.balance,
                amount,
            });
        }
        Ok(())
    }
}

impl Aggregate for Account {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = BankError;
    const CATEGORY: &'static str = "account";

    fn schema_version(event_type: &str) -> i32 {
        match event_type {
            "MoneyDeposited" => crate::schemas::MONEY_DEPOSITED_VERSION,
            _ => 1,
        }
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::AccountOpened { owner } => self.owner = Some(owner),
            AccountEvent::MoneyDeposited { amount, .. } => self.balance += amount,
            AccountEvent::MoneyWithdrawn { amount, order_id } => {
                self.balance -= amount;
                if let Some(order) = order_id {
                    self.paid_orders.insert(order);
                }
            }
            AccountEvent::AccountClosed {} => self.closed = true,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, BankError> {
        match command {
            AccountCommand::Open { account_id, owner } => {
                if self.owner.is_some() {
                    return Err(BankError::AccountExists(account_id.clone()));
                }
                Ok(vec![AccountEvent::AccountOpened {
                    owner: owner.clone(),
                }])
            }
            AccountCommand::Deposit { amount } => {
                self.usable()?;
                if *amount <= 0 {
                    return Err(BankError::NonPositiveAmount(*amount));
                }
                Ok(vec![AccountEvent::MoneyDeposited {
                    amount: *amount,
                    currency: crate::schemas::DEFAULT_CURRENCY.into(),
                }])
            }
            AccountCommand::Withdraw { amount } => {
                self.usable()?;
                self.withdrawable(*amount)?;
                Ok(vec![AccountEvent::MoneyWithdrawn {
                    amount: *amount,
                    order_id: None,
                }])
            }
            AccountCommand::PayOrder { order_id, amount } => {
                self.usable()?;
                if self.paid_orders.contains(order_id) {
                    return Ok(vec![]);
                }
                self.withdrawable(*amount)?;
                Ok(vec![AccountEvent::MoneyWithdrawn {
                    amount: *amount,
                    order_id: Some(order_id.clone()),
                }])
            }
            AccountCommand::Close => {
                self.usable()?;
                if self.balance != 0 {
                    return Err(BankError::BalanceNotZero(self.balance));
                }
                Ok(vec![AccountEvent::AccountClosed {}])
            }
        }
    }
}

// ---------------------------------------------------------------- order

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum OrderEvent {
    OrderPlaced {
        order_id: String,
        customer_id: String,
        account_id: String,
        amount: i64,
    },
    OrderPaid {
        amount: i64,
    },
    OrderShipped {},
    OrderCancelled {},
}

#[derive(Debug, Clone)]
pub enum OrderCommand {
    Place {
        order_id: String,
        customer_id: String,
        account_id: String,
        amount: i64,
    },
    MarkPaid,
    Ship,
    Cancel,
}

#[derive(Debug, Default)]
pub struct Order {
    pub id: Option<String>,
    pub account_id: String,
    pub amount: i64,
    pub paid: bool,
    pub shipped: bool,
    pub cancelled: bool,
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = BankError;
    const CATEGORY: &'static str = "order";

    fn apply(&mut self, event: OrderEvent) {
        match event {
            OrderEvent::OrderPlaced {
                order_id,
                account_id,
                amount,
                ..
            } => {
                self.id = Some(order_id);
                self.account_id = account_id;
                self.amount = amount;
            }
            OrderEvent::OrderPaid { .. } => self.paid = true,
            OrderEvent::OrderShipped {} => self.shipped = true,
            OrderEvent::OrderCancelled {} => self.cancelled = true,
        }
    }

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, BankError> {
        let id = self.id.clone().unwrap_or_default();
        if !matches!(command, OrderCommand::Place { .. }) {
            if self.id.is_none() {
                return Err(BankError::UnknownOrder(id));
            }
            if self.cancelled {
                return Err(BankError::OrderCancelled(id));
            }
        }
        match command {
            OrderCommand::Place {
                order_id,
                customer_id,
                account_id,
                amount,
            } => {
                if self.id.is_some() {
                    return Err(BankError::OrderExists(order_id.clone()));
                }
                if *amount <= 0 {
                    return Err(BankError::NonPositiveAmount(*amount));
                }
                Ok(vec![OrderEvent::OrderPlaced {
                    order_id: order_id.clone(),
                    customer_id: customer_id.clone(),
                    account_id: account_id.clone(),
                    amount: *amount,
                }])
            }
            OrderCommand::MarkPaid if self.paid => Ok(vec![]),
            OrderCommand::MarkPaid => Ok(vec![OrderEvent::OrderPaid {
                amount: self.amount,
            }]),
            OrderCommand::Ship if !self.paid => Err(BankError::NotPaid(id)),
            OrderCommand::Ship if self.shipped => Ok(vec![]),
            OrderCommand::Ship => Ok(vec![OrderEvent::OrderShipped {}]),
            OrderCommand::Cancel if self.shipped => Err(BankError::AlreadyShipped(id)),
            OrderCommand::Cancel => Ok(vec![OrderEvent::OrderCancelled {}]),
        }
    }
}

/// Pays order `order_id` from its account: withdraw once (no overdraft), then mark paid.
/// Safe to call again after a crash or timeout: both steps are idempotent. The command id
/// of `options` names both steps (their event ids differ by stream), and both carry its
/// correlation id.
pub async fn pay_order(
    bus: &CommandBus,
    order_id: &str,
    options: CommandOptions,
) -> Result<CommandOutcome, CommandError<BankError>> {
    let (order, _) = bus.load::<Order>(order_id).await?;
    if order.id.is_none() {
        return Err(CommandError::Rejected(BankError::UnknownOrder(
            order_id.to_string(),
        )));
    }
    if order.cancelled {
        return Err(CommandError::Rejected(BankError::OrderCancelled(
            order_id.to_string(),
        )));
    }
    execute::<Account>(
        bus,
        &order.account_id,
        &AccountCommand::PayOrder {
            order_id: order_id.to_string(),
            amount: order.amount,
        },
        options.clone(),
    )
    .await?;
    execute::<Order>(bus, order_id, &OrderCommand::MarkPaid, options).await
}

#[cfg(test)]
mod tests {
    //! The bank's rules, one behaviour each, as given (the stream's events) / when (a
    //! command) / then (the events it produces, or the refusal). No database: the rules
    //! are the aggregates' pure `handle`; refusals about the aggregate itself carry no id
    //! here, [`execute`] names it (see the last tests).

    use super::*;
    use tidemark_testkit::aggregate::AggregateTest;

    fn opened() -> AccountEvent {
        AccountEvent::AccountOpened {
            owner: "ann".into(),
        }
    }

    fn deposited(amount: i64) -> AccountEvent {
        AccountEvent::MoneyDeposited {
            amount,
            currency: "EUR".into(),
        }
    }

    fn withdrawn(amount: i64) -> AccountEvent {
        AccountEvent::MoneyWithdrawn {
            amount,
            order_id: None,
        }
    }

    fn paid_for(order: &str, amount: i64) -> AccountEvent {
        AccountEvent::MoneyWithdrawn {
            amount,
            order_id: Some(order.into()),
        }
    }

    fn placed(amount: i64) -> OrderEvent {
        OrderEvent::OrderPlaced {
            order_id: "o1".into(),
            customer_id: "c".into(),
            account_id: "a".into(),
            amount,
        }
    }

    fn register(email: &str) -> CustomerCommand {
        CustomerCommand::Register {
            customer_id: "c1".into(),
            name: "Ann".into(),
            email: email.into(),
        }
    }

    fn registered() -> CustomerEvent {
        CustomerEvent::CustomerRegistered {
            customer_id: "c1".into(),
            name: "Ann".into(),
            email: "ann@example.com".into(),
        }
    }

    // ------------------------------------------------------------ customer

    #[test]
    fn a_new_customer_is_registered() {
        AggregateTest::<Customer>::given_no_previous_events()
            .when(register("ann@example.com"))
            .then_expect_events([registered()]);
    }

    #[test]
    fn customers_need_a_plausible_email() {
        for email in ["ann", "ann@localhost", "@example.com"] {
            AggregateTest::<Customer>::given_no_previous_events()
                .when(register(email))
                .then_expect_error(BankError::InvalidEmail(email.into()));
        }
        AggregateTest::<Customer>::given([registered()])
            .when(CustomerCommand::ChangeEmail {
                email: "ann".into(),
            })
            .then_expect_error(BankError::InvalidEmail("ann".into()));
    }

    #[test]
    fn a_customer_registers_once() {
        AggregateTest::<Customer>::given([registered()])
            .when(register("ann@example.org"))
            .then_expect_error(BankError::CustomerExists("c1".into()));
    }

    #[test]
    fn only_a_registered_customer_changes_email_and_the_same_email_changes_nothing() {
        AggregateTest::<Customer>::given_no_previous_events()
            .when(CustomerCommand::ChangeEmail {
                email: "ann@example.org".into(),
            })
            .then_expect_error(BankError::UnknownCustomer(String::new()));
        AggregateTest::<Customer>::given([registered()])
            .when(CustomerCommand::ChangeEmail {
                email: "ann@example.com".into(),
            })
            .then_expect_no_change();
        AggregateTest::<Customer>::given([registered()])
            .when(CustomerCommand::ChangeEmail {
                email: "ann@example.org".into(),
            })
            .then_expect_events([CustomerEvent::EmailChanged {
                email: "ann@example.org".into(),
            }]);
    }

    // ------------------------------------------------------------ account

    #[test]
    fn an_account_opens_once() {
        let open = || AccountCommand::Open {
            account_id: "a1".into(),
            owner: "ann".into(),
        };
        AggregateTest::<Account>::given_no_previous_events()
            .when(open())
            .then_expect_events([opened()]);
        AggregateTest::<Account>::given([opened()])
            .when(open())
            .then_expect_error(BankError::AccountExists("a1".into()));
    }

    #[test]
    fn a_deposit_adds_a_positive_amount() {
        AggregateTest::<Account>::given([opened()])
            .when(AccountCommand::Deposit { amount: 5 })
            .then_expect_events([deposited(5)]);
        for amount in [0, -5] {
            AggregateTest::<Account>::given([opened()])
                .when(AccountCommand::Deposit { amount })
                .then_expect_error(BankError::NonPositiveAmount(amount));
        }
    }

    #[test]
    fn an_account_cannot_be_overdrawn() {
        let funded = || [opened(), deposited(100), withdrawn(30)];
        AggregateTest::<Account>::given(funded())
            .when(AccountCommand::Withdraw { amount: 71 })
            .then_expect_error(BankError::InsufficientFunds {
                balance: 70,
                amount: 71,
            });
        AggregateTest::<Account>::given(funded())
            .when(AccountCommand::Withdraw { amount: 70 })
            .then_expect_events([withdrawn(70)]);
    }

    #[test]
    fn a_withdrawal_takes_a_positive_amount() {
        for amount in [0, -5] {
            AggregateTest::<Account>::given([opened(), deposited(100)])
                .when(AccountCommand::Withdraw { amount })
                .then_expect_error(BankError::NonPositiveAmount(amount));
        }
    }

    #[test]
    fn no_money_moves_on_an_account_that_was_never_opened() {
        for command in [
            AccountCommand::Deposit { amount: 1 },
            AccountCommand::Withdraw { amount: 1 },
            AccountCommand::PayOrder {
                order_id: "o1".into(),
                amount: 1,
            },
            AccountCommand::Close,
        ] {
            AggregateTest::<Account>::given_no_previous_events()
                .when(command)
                .then_expect_error(BankError::UnknownAccount(String::new()));
        }
    }

    #[test]
    fn a_closed_account_takes_no_deposits_and_needs_zero_balance_to_close() {
        AggregateTest::<Account>::given([opened(), deposited(1)])
            .when(AccountCommand::Close)
            .then_expect_error(BankError::BalanceNotZero(1));
        AggregateTest::<Account>::given([opened(), deposited(1), withdrawn(1)])
            .when(AccountCommand::Close)
            .then_expect_events([AccountEvent::AccountClosed {}]);
        for command in [
            AccountCommand::Deposit { amount: 1 },
            AccountCommand::Withdraw { amount: 1 },
            AccountCommand::Close,
        ] {
            AggregateTest::<Account>::given([opened(), AccountEvent::AccountClosed {}])
                .when(command)
                .then_expect_error(BankError::AccountClosed(String::new()));
        }
    }

    #[test]
    fn an_order_is_paid_from_an_account_once() {
        let pay = || AccountCommand::PayOrder {
            order_id: "o1".into(),
            amount: 10,
        };
        AggregateTest::<Account>::given([opened(), deposited(100)])
            .when(pay())
            .then_expect_events([paid_for("o1", 10)]);
        AggregateTest::<Account>::given([opened(), deposited(100), paid_for("o1", 10)])
            .when(pay())
            .then_expect_no_change();
    }

    #[test]
    fn an_order_the_balance_cannot_cover_is_not_paid() {
        AggregateTest::<Account>::given([opened(), deposited(9)])
            .when(AccountCommand::PayOrder {
                order_id: "o1".into(),
                amount: 10,
            })
            .then_expect_error(BankError::InsufficientFunds {
                balance: 9,
                amount: 10,
            });
    }

    // ------------------------------------------------------------ order

    #[test]
    fn an_order_is_placed_once_for_a_positive_amount() {
        let place = |amount| OrderCommand::Place {
            order_id: "o1".into(),
            customer_id: "c".into(),
            account_id: "a".into(),
            amount,
        };
        AggregateTest::<Order>::given_no_previous_events()
            .when(place(5))
            .then_expect_events([placed(5)]);
        AggregateTest::<Order>::given_no_previous_events()
            .when(place(0))
            .then_expect_error(BankError::NonPositiveAmount(0));
        AggregateTest::<Order>::given([placed(5)])
            .when(place(5))
            .then_expect_error(BankError::OrderExists("o1".into()));
    }

    #[test]
    fn nothing_happens_to_an_order_that_was_never_placed() {
        for command in [
            OrderCommand::MarkPaid,
            OrderCommand::Ship,
            OrderCommand::Cancel,
        ] {
            AggregateTest::<Order>::given_no_previous_events()
                .when(command)
                .then_expect_error(BankError::UnknownOrder(String::new()));
        }
    }

    #[test]
    fn an_order_is_marked_paid_once_with_its_amount() {
        AggregateTest::<Order>::given([placed(5)])
            .when(OrderCommand::MarkPaid)
            .then_expect_events([OrderEvent::OrderPaid { amount: 5 }]);
        AggregateTest::<Order>::given([placed(5), OrderEvent::OrderPaid { amount: 5 }])
            .when(OrderCommand::MarkPaid)
            .then_expect_no_change();
    }

    #[test]
    fn an_unpaid_order_cannot_ship() {
        AggregateTest::<Order>::given([placed(5)])
            .when(OrderCommand::Ship)
            .then_expect_error(BankError::NotPaid("o1".into()));
    }

    #[test]
    fn a_paid_order_ships_once() {
        let paid = || [placed(5), OrderEvent::OrderPaid { amount: 5 }];
        AggregateTest::<Order>::given(paid())
            .when(OrderCommand::Ship)
            .then_expect_events([OrderEvent::OrderShipped {}]);
        AggregateTest::<Order>::given(paid().into_iter().chain([OrderEvent::OrderShipped {}]))
            .when(OrderCommand::Ship)
            .then_expect_no_change();
    }

    #[test]
    fn a_shipped_order_cannot_be_cancelled() {
        AggregateTest::<Order>::given([
            placed(5),
            OrderEvent::OrderPaid { amount: 5 },
            OrderEvent::OrderShipped {},
        ])
        .when(OrderCommand::Cancel)
        .then_expect_error(BankError::AlreadyShipped("o1".into()));
    }

    #[test]
    fn a_cancelled_order_is_not_paid_shipped_or_cancelled_again() {
        AggregateTest::<Order>::given([placed(5)])
            .when(OrderCommand::Cancel)
            .then_expect_events([OrderEvent::OrderCancelled {}]);
        for command in [
            OrderCommand::MarkPaid,
            OrderCommand::Ship,
            OrderCommand::Cancel,
        ] {
            AggregateTest::<Order>::given([placed(5), OrderEvent::OrderCancelled {}])
                .when(command)
                .then_expect_error(BankError::OrderCancelled("o1".into()));
        }
    }

    // ------------------------------------------------------------ refusals

    #[test]
    fn refusals_about_the_aggregate_itself_name_it() {
        let refused = AggregateTest::<Account>::given_no_previous_events()
            .when(AccountCommand::Deposit { amount: 1 })
            .inspect_result()
            .unwrap_err();
        assert_eq!(
            refused.naming("a-1").to_string(),
            "account a-1 does not exist"
        );
        let refused = AggregateTest::<Account>::given([opened(), AccountEvent::AccountClosed {}])
            .when(AccountCommand::Close)
            .inspect_result()
            .unwrap_err();
        assert_eq!(refused.naming("a-1").to_string(), "account a-1 is closed");
    }

    #[test]
    fn refusals_read_as_a_client_is_shown_them() {
        AggregateTest::<Account>::given([opened(), deposited(100)])
            .when(AccountCommand::Withdraw { amount: 150 })
            .then_expect_error_message(
                "insufficient funds: the balance is 100, the withdrawal 150",
            );
        AggregateTest::<Account>::given([opened(), deposited(40)])
            .when(AccountCommand::Close)
            .then_expect_error_message(
                "an account can only be closed with a zero balance (it holds 40)",
            );
    }
}
