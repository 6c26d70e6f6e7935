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
use uuid::Uuid;

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
/// [`BankError::naming`]). Every command of the bank goes through here. With a
/// `command_id`, sending the same command again never applies it twice (see
/// [`tidemark_store::aggregate`]).
pub async fn execute<A>(
    bus: &CommandBus,
    id: &str,
    command: &A::Command,
    command_id: Option<Uuid>,
) -> Result<CommandOutcome, CommandError<BankError>>
where
    A: Aggregate<Error = BankError>,
{
    bus.execute_with::<A>(id, command, CommandOptions::new().command_id(command_id))
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
    MoneyDeposited {
        amount: i64,
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

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::AccountOpened { owner } => self.owner = Some(owner),
            AccountEvent::MoneyDeposited { amount } => self.balance += amount,
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
                Ok(vec![AccountEvent::MoneyDeposited { amount: *amount }])
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
/// Safe to call again after a crash or timeout: both steps are idempotent. A `command_id`
/// names both steps (their event ids differ by stream).
pub async fn pay_order(
    bus: &CommandBus,
    order_id: &str,
    command_id: Option<Uuid>,
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
        command_id,
    )
    .await?;
    execute::<Order>(bus, order_id, &OrderCommand::MarkPaid, command_id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given<A: Aggregate>(events: Vec<A::Event>) -> A {
        let mut state = A::default();
        for e in events {
            state.apply(e);
        }
        state
    }

    #[test]
    fn an_account_cannot_be_overdrawn() {
        let account: Account = given(vec![
            AccountEvent::AccountOpened {
                owner: "ann".into(),
            },
            AccountEvent::MoneyDeposited { amount: 100 },
        ]);
        assert_eq!(
            account.handle(&AccountCommand::Withdraw { amount: 101 }),
            Err(BankError::InsufficientFunds {
                balance: 100,
                amount: 101
            })
        );
        assert!(account
            .handle(&AccountCommand::Withdraw { amount: 100 })
            .is_ok());
    }

    #[test]
    fn an_order_is_paid_from_an_account_once() {
        let account: Account = given(vec![
            AccountEvent::AccountOpened {
                owner: "ann".into(),
            },
            AccountEvent::MoneyDeposited { amount: 100 },
            AccountEvent::MoneyWithdrawn {
                amount: 10,
                order_id: Some("o1".into()),
            },
        ]);
        assert_eq!(
            account.handle(&AccountCommand::PayOrder {
                order_id: "o1".into(),
                amount: 10
            }),
            Ok(vec![])
        );
    }

    #[test]
    fn an_unpaid_order_cannot_ship() {
        let order: Order = given(vec![OrderEvent::OrderPlaced {
            order_id: "o1".into(),
            customer_id: "c".into(),
            account_id: "a".into(),
            amount: 5,
        }]);
        assert_eq!(
            order.handle(&OrderCommand::Ship),
            Err(BankError::NotPaid("o1".into()))
        );
    }

    #[test]
    fn a_closed_account_takes_no_deposits_and_needs_zero_balance_to_close() {
        let open: Account = given(vec![
            AccountEvent::AccountOpened {
                owner: "ann".into(),
            },
            AccountEvent::MoneyDeposited { amount: 1 },
        ]);
        assert_eq!(
            open.handle(&AccountCommand::Close),
            Err(BankError::BalanceNotZero(1))
        );
        let closed: Account = given(vec![
            AccountEvent::AccountOpened {
                owner: "ann".into(),
            },
            AccountEvent::AccountClosed {},
        ]);
        assert!(matches!(
            closed.handle(&AccountCommand::Deposit { amount: 1 }),
            Err(BankError::AccountClosed(_))
        ));
    }

    #[test]
    fn refusals_about_the_aggregate_itself_name_it() {
        let nothing = Account::default();
        let refused = nothing
            .handle(&AccountCommand::Deposit { amount: 1 })
            .unwrap_err();
        assert_eq!(
            refused.naming("a-1").to_string(),
            "account a-1 does not exist"
        );
        let closed: Account = given(vec![
            AccountEvent::AccountOpened {
                owner: "ann".into(),
            },
            AccountEvent::AccountClosed {},
        ]);
        let refused = closed.handle(&AccountCommand::Close).unwrap_err();
        assert_eq!(refused.naming("a-1").to_string(), "account a-1 is closed");
    }

    #[test]
    fn customers_need_a_plausible_email() {
        let nobody = Customer::default();
        let register = |email: &str| CustomerCommand::Register {
            customer_id: "c1".into(),
            name: "Ann".into(),
            email: email.into(),
        };
        assert!(nobody.handle(&register("ann@example.com")).is_ok());
        assert_eq!(
            nobody.handle(&register("ann")),
            Err(BankError::InvalidEmail("ann".into()))
        );
    }
}
